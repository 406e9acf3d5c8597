using System.Text.Json;
using MoCE.Actors;
using MoCE.Actors.Messages;
using MoCE.Runs.Configuration;
using MoCE.Core.Config;

namespace MoCE.Cli.Commands;

/// <summary>The operators' view of a cluster run's experts, through a cluster client (this process does not join):
/// <c>moce experts list --seeds HOST:PORT,... [--format table|json]</c>: where each expert runs, on which device, how
/// many tokens it got in the last step, and its state; <c>moce experts add --count N [--node ADDR] [--at-step S]</c>:
/// split the busiest experts into N more at a step boundary (the add commits; it survives a restart).</summary>
public static class ExpertsCommand
{
    public static int Run(CliArgs cli, CancellationToken ct)
    {
        Serilog.Log.Logger = Logging.StandardError();                      // stdout is the answer
        return cli.Positionals switch
        {
            ["list"] => List(cli),
            ["add"] => Add(cli, ct),
            _ => throw new ConfigException("experts", $"expected a subcommand, list or add: moce experts list|add --seeds HOST:PORT (got '{string.Join(" ", cli.Positionals)}')"),
        };
    }

    private static int Add(CliArgs cli, CancellationToken ct)
    {
        cli.RejectFlagsExcept("seeds", "count", "node", "at-step", "tls-certificate", "tls-ca", "insecure", "host");
        int count = cli.FlagInt("count", 1);
        long atStep = cli.Flags.TryGetValue("at-step", out var a)
            ? long.TryParse(a, out var s) && s >= 0 ? s : throw new ConfigException("--at-step", $"expected a step ≥ 0, got '{a}'")
            : -1;
        var config = ClientConfig(cli);
        var node = cli.Flags.GetValueOrDefault("node", "");
        if (node.Length > 0 && !node.Contains("://", StringComparison.Ordinal))                  // HOST:PORT, as for drain
            node = NodeOptions.SeedAddress(node, !string.IsNullOrEmpty(config.Node.TlsCertificate)).ToString();
        // the answer comes once the experts train: after the commit, the split, their placement and the restore
        var reply = Ask<ExpertsAddedReply>(config, new AddExperts(-1, count, node, atStep), TimeSpan.FromMinutes(10), ct);
        if (reply.Error.Length > 0) throw new ConfigException("experts add", reply.Error);
        Console.WriteLine($"added experts [{string.Join(", ", reply.Added)}] at step {reply.Step}, split from [{string.Join(", ", reply.Sources)}]");
        return 0;
    }

    /// <summary>One question to the run's supervisor through the seeds; no answer in time is an error naming the seeds.</summary>
    internal static T Ask<T>(MoceConfig config, object query, TimeSpan timeout, CancellationToken ct = default)
    {
        try { return ClusterNode.Ask<T>(config.Node, ActorEngine.AkkaConfig(config.Hocon), query, timeout, ct); }
        catch (Akka.Actor.AskTimeoutException)
        {
            throw new ConfigException("--seeds", $"no run's supervisor answered through [{string.Join(", ", config.Node.Seeds)}] within {timeout.TotalSeconds:F0} s: is a coordinator running there?");
        }
    }

    private static int List(CliArgs cli)
    {
        cli.RejectFlagsExcept("seeds", "format", "tls-certificate", "tls-ca", "insecure", "host");
        var format = cli.Flags.GetValueOrDefault("format", "table");
        if (format is not ("table" or "json")) throw new ConfigException("--format", $"expected table or json, got '{format}'");
        var status = Ask<ExpertsStatus>(ClientConfig(cli), new GetExperts(-1), TimeSpan.FromSeconds(20));
        if (format == "json")
        {
            Console.WriteLine(JsonSerializer.Serialize(status, new JsonSerializerOptions { WriteIndented = true }));
            return 0;
        }
        Console.WriteLine($"step {status.Step}, committed step {status.CommittedStep}");
        Console.WriteLine($"{"expert",-9} {"state",-8} {"device",-8} {"tokens/step",11}  node");
        foreach (var e in status.Experts)
            Console.WriteLine($"{$"expert-{e.Expert}",-9} {e.State,-8} {e.Device,-8} {e.TokensLastStep,11}  {e.Node}");
        return 0;
    }

    /// <summary>The configuration of a tool that talks to a cluster as a client: --seeds, --tls-certificate, --tls-ca, --insecure, --host over moce.node.*.</summary>
    public static MoceConfig ClientConfig(CliArgs cli)
    {
        var overrides = cli.Overrides.ToList();
        if (cli.Flags.TryGetValue("seeds", out var seeds))
            overrides.Add($"moce.node.seed-nodes=[{string.Join(", ", seeds.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(x => JsonSerializer.Serialize(x)))}]");
        if (cli.Flags.TryGetValue("tls-certificate", out var cert)) overrides.Add($"moce.node.tls-certificate={Path.GetFullPath(cert)}");
        if (cli.Flags.TryGetValue("tls-ca", out var ca)) overrides.Add($"moce.node.tls-ca={Path.GetFullPath(ca)}");
        if (cli.Flags.ContainsKey("insecure")) overrides.Add("moce.node.insecure=true");
        if (cli.Flags.TryGetValue("host", out var host)) overrides.Add($"moce.node.host={host}");
        var merged = ConfigLoader.Merge(new ConfigLoader.Sources(cli.Preset, cli.Files, overrides));
        return ConfigLoader.Resolve(merged).config;
    }
}
