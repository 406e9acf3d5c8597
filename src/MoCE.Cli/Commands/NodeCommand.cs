using MoCE.Actors;
using MoCE.Runs.Configuration;
using MoCE.Core.Config;
using Serilog;

namespace MoCE.Cli.Commands;

/// <summary><c>moce node</c>: one process of a cluster run. A <c>coordinator</c> node opens the run directory (shared by
/// all coordinators) like `moce train --engine actors` and runs the training phase when the cluster's supervisor
/// singleton lands on it; an <c>experts</c>-only node needs no run directory: it hosts the experts placed on it, on its
/// devices, until it is stopped (Ctrl-C or SIGTERM: it leaves the cluster, and its experts move). Every node needs the
/// shared journal (--config hocon/persistence-postgres.conf and $MOCE_POSTGRES).</summary>
public static class NodeCommand
{
    /// <summary>The options `moce node` takes (besides --preset, --config, -o and --run).</summary>
    public static readonly string[] Flags = ["roles", "host", "port", "seeds", "devices", "min-expert-nodes", "tls-certificate", "tls-ca", "insecure", "metrics-port", "method", "chaos"];

    public static int Run(CliArgs cli, CancellationToken ct)
    {
        if (cli.Positionals is ["drain", var address]) return Drain(cli, address, ct);
        if (cli.Positionals.Count > 0) throw new ConfigException("node", $"unexpected '{string.Join(" ", cli.Positionals)}'; the only subcommand is drain HOST:PORT");
        cli.RejectFlagsExcept(Flags);
        var chaos = cli.Flags.TryGetValue("chaos", out var file) ? ChaosSchedule.Load(file) : null;   // a coordinator's faults (README)
        var config = Resolve(cli);
        cli = cli with { Overrides = [.. cli.Overrides, .. FlagOverrides(cli)] };          // the coordinator's Session reads them too
        var node = config.Node.Validated();
        using var metrics = NodeMetrics.Serve(config.MetricsHost, config.MetricsPort);
        if (metrics is not null) Log.Information("Prometheus metrics on http://{Host}:{Port}/metrics", config.MetricsHost, config.MetricsPort);
        if (!node.Coordinator)
        {
            if (chaos is not null) throw new ConfigException("--chaos", "a chaos schedule runs on the coordinators; this node has only the experts role");
            // an experts-only node: no run directory, no data; the experts' spec comes from the supervisor
            ClusterNode.Run(node, ClusterNode.Config(node, ActorEngine.Config("", config.Hocon)), null, Log.Logger, ct);
            Log.Information("Node stopped");
            return 0;
        }
        var s = Session.Open(cli.Request, logName: $"node-{node.Host}-{(node.Port > 0 ? node.Port.ToString() : Environment.ProcessId.ToString())}.log");
        var method = cli.Flags.TryGetValue("method", out var m) ? MoceConfig.ParseMethod("--method", m) : s.Config.Moe.Method;
        if (method == MoeMethod.Dense) throw new ConfigException("--method", "dense has no experts to place; train it with moce train");
        TrainingPhase.Execute(s, method, "actors", ct, node, chaos);
        return 0;
    }

    /// <summary>moce node drain HOST:PORT: asks the supervisor, as a cluster client, to move that node's experts away.</summary>
    private static int Drain(CliArgs cli, string address, CancellationToken ct)
    {
        cli.RejectFlagsExcept("seeds", "tls-certificate", "tls-ca", "insecure", "host");
        Serilog.Log.Logger = Logging.StandardError();
        var config = ExpertsCommand.ClientConfig(cli);
        var node = address.Contains("://", StringComparison.Ordinal) ? address
            : NodeOptions.SeedAddress(address, !string.IsNullOrEmpty(config.Node.TlsCertificate)).ToString();
        var done = ExpertsCommand.Ask<MoCE.Actors.Messages.NodeDrained>(config, new MoCE.Actors.Messages.DrainNode(-1, node), TimeSpan.FromMinutes(5), ct);
        if (done.Error.Length > 0) throw new ConfigException("node drain", done.Error);
        Console.WriteLine($"drained {done.Node}: experts [{string.Join(", ", done.Moved.Select(e => $"expert-{e}"))}] moved, restored from commit {done.Step}; the node is leaving the cluster");
        return 0;
    }

    /// <summary>The node's configuration: the flags over moce.node.* over the files and overrides.</summary>
    public static MoceConfig Resolve(CliArgs cli)
    {
        var withFlags = cli with { Overrides = [.. cli.Overrides, .. FlagOverrides(cli)] };
        return ConfigLoader.Resolve(ConfigLoader.Merge(new ConfigLoader.Sources(withFlags.Preset, withFlags.Files, withFlags.Overrides))).config;
    }

    /// <summary>The node flags as overrides of moce.node.*: a flag wins over every configuration file.</summary>
    private static IEnumerable<string> FlagOverrides(CliArgs cli)
    {
        static string List(string csv) => "[" + string.Join(", ", csv.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)
            .Select(x => System.Text.Json.JsonSerializer.Serialize(x))) + "]";
        foreach (var (flag, value) in cli.Flags)
        {
            switch (flag)
            {
                case "roles": yield return $"moce.node.roles={List(value)}"; break;
                case "seeds": yield return $"moce.node.seed-nodes={List(value)}"; break;
                case "devices": yield return $"moce.node.devices={List(value)}"; break;
                case "tls-certificate": yield return $"moce.node.tls-certificate={Path.GetFullPath(value)}"; break;
                case "tls-ca": yield return $"moce.node.tls-ca={Path.GetFullPath(value)}"; break;
                case "insecure": yield return "moce.node.insecure=true"; break;
                case "metrics-port": yield return $"moce.metrics.port={cli.FlagInt("metrics-port", 0)}"; break;
                case "host": yield return $"moce.node.host={value}"; break;
                case "port": yield return $"moce.node.port={cli.FlagInt("port", 0)}"; break;
                case "min-expert-nodes": yield return $"moce.node.min-expert-nodes={cli.FlagInt("min-expert-nodes", 1)}"; break;
            }
        }
    }
}
