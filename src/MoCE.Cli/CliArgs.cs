using MoCE.Core.Config;

namespace MoCE.Cli;

/// <summary>Parsed command line: <c>moce COMMAND [--preset NAME] [--config FILE]... [--run DIR] [-o key=value]...</c>
/// plus a few command-specific flags.</summary>
public sealed record CliArgs(string Command, string? Preset, IReadOnlyList<string> Files, IReadOnlyList<string> Overrides,
                             string? Run, IReadOnlyDictionary<string, string> Flags)
{
    /// <summary>Words after the command that are not options: `moce experts list`, `moce node drain ADDR`.</summary>
    public IReadOnlyList<string> Positionals { get; init; } = [];

    public static readonly string Usage = """
        moce: Mixture of Cluster-conditional Experts (MAE pre-training) on TorchSharp.

        Usage: moce COMMAND [options]

        Commands:
          pipeline     the whole method: pretrain, cluster, train (moce, token-moe, dense), customize, eval
          pretrain     dense MAE pre-training
          cluster      k-means over the dense MAE's features; writes each image's cluster and a report
          train        MoE training from the dense MAE: --method moce|token-moe|dense, --engine actors|local
          node         one process of a cluster run: --roles coordinator,experts --seeds HOST:PORT,... (needs PostgreSQL);
                       node drain HOST:PORT --seeds ...: move that node's experts away (commit, restore elsewhere), then it leaves
          experts list where each expert of a cluster run is, its device, tokens and state: --seeds H:P,... [--format json]
          experts add  add experts while the run trains, each split from the busiest one: --seeds H:P,... --count N
                       [--node HOST:PORT] [--at-step S] (default: the next step boundary; waits until they train)
          customize    extract a dense model with the experts a task prefers: --task NAME
          eval         linear probe and k-NN on frozen features for the configured tasks
          status RUN   committed steps, owners and their checkpoint files, recent recoveries and injected faults
          report RUN   report.md and plots of a run's faults and recoveries: [--baseline RUN] [--method moce]
          chaos compare  one chaos schedule under each recovery policy against the run without faults:
                       --chaos FILE [--straggler-timeout MS] (after pretrain and cluster on --run)
          bench        time the reference trainers and the actor engine on the bench configuration (hocon/bench.conf)
          bench-cluster  the actor engine in one process against three (coordinator + 2 expert nodes), and the bytes
                       on the wire per step (needs $MOCE_POSTGRES)
          bench-recovery  time from an expert's failure to the next commit under each policy, and the throughput
                       under a 5× straggler with and without the straggler timeout (bench configuration)
          config       print the resolved configuration and exit
        Every command works on one run directory; running it again resumes or skips finished work.

        Options:
          --preset NAME     layer hocon/NAME.conf over hocon/moce.conf (e.g. quickstart, bench)
          --config FILE     layer a HOCON file (repeatable, applied in order, after the preset)
          -o key=value      override one key, e.g. -o pretrain.steps=500 (repeatable, applied last)
          --run DIR         run directory (default: runs/PRESET, or runs/default)
          train: --method moce|token-moe|dense (default moce.moe.method)  --engine actors|local (default moce.actors.engine)
                 --chaos FILE: inject the faults of a chaos schedule (hocon/chaos/*.conf) into the actor engine
                 --seeds H:P,... runs it against a cluster: this process joins as a coordinator (node's flags apply)
          node: --roles coordinator|experts|coordinator,experts  --host H  --port P  --seeds H:P,...  --devices cpu,cuda:0
                --min-expert-nodes N  --tls-certificate FILE.pfx  --metrics-port P  --method moce|token-moe
                (each overrides moce.node.*; a coordinator needs --run; the certificate's password is in $MOCE_TLS_PASSWORD)
          customize: --task NAME (a task under moce.tasks)
          bench: --warmup N (default 40)  --steps N (default 160)  --rounds N (default 8)
          bench-cluster: --warmup N (default 20)  --steps N (default 80)  --rounds N (default 2)
          bench-recovery: --steps N (default 80)
          -h, --help        this text
        """;

    public string RunDir => Run ?? Path.Combine("runs", Preset ?? "default");

    public static CliArgs Parse(string[] args)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help" or "help") return new CliArgs("help", null, [], [], null, new Dictionary<string, string>());
        string command = args[0];
        string? preset = null, run = null;
        var files = new List<string>();
        var overrides = new List<string>();
        var flags = new Dictionary<string, string>();
        var positionals = new List<string>();
        for (int i = 1; i < args.Length; i++)
        {
            string a = args[i];
            string Next() => i + 1 < args.Length ? args[++i] : throw new ConfigException(a, "needs a value");
            switch (a)
            {
                case "--preset": preset = Next(); break;
                case "--config": files.Add(Next()); break;
                case "-o": overrides.Add(Next()); break;
                case "--run": run = Next(); break;
                case "-h" or "--help": return new CliArgs("help", null, [], [], null, flags);
                default:
                    if (a.StartsWith("--", StringComparison.Ordinal) && a.Length > 2) { flags[a[2..]] = Next(); break; }
                    if (command is "status" or "report" && run is null && !a.StartsWith('-')) { run = a; break; }   // moce status RUN
                    if (command is "experts" or "node" or "chaos" && !a.StartsWith('-')) { positionals.Add(a); break; }   // moce experts list, moce node drain ADDR
                    throw new ConfigException(a, "unknown argument; see moce --help");
            }
        }
        return new CliArgs(command, preset, files, overrides, run, flags) { Positionals = positionals };
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
