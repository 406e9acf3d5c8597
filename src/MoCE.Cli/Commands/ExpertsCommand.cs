using System.Text.Json;
using MoCE.Actors;
using MoCE.Actors.Messages;
using MoCE.Cli.Configuration;
using MoCE.Core.Config;

namespace MoCE.Cli.Commands;

/// <summary><c>moce experts list --seeds HOST:PORT,... [--format table|json]</c>: asks the cluster's supervisor, as a
/// cluster client (this process does not join), where each expert runs, on which device, how many tokens it got in the
/// last step, and its state.</summary>
public static class ExpertsCommand
{
    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept("seeds", "format", "tls-certificate", "host");
        Serilog.Log.Logger = Logging.StandardError();                      // stdout is the answer
        if (cli.Positionals is not ["list"])
            throw new ConfigException("experts", $"expected the subcommand list: moce experts list --seeds HOST:PORT (got '{string.Join(" ", cli.Positionals)}')");
        var format = cli.Flags.GetValueOrDefault("format", "table");
        if (format is not ("table" or "json")) throw new ConfigException("--format", $"expected table or json, got '{format}'");
        var config = ClientConfig(cli);
        ExpertsStatus status;
        try { status = ClusterNode.Ask<ExpertsStatus>(config.Node, ActorEngine.AkkaConfig(config.Hocon), new GetExperts(-1), TimeSpan.FromSeconds(20)); }
        catch (Akka.Actor.AskTimeoutException)
        {
            throw new ConfigException("--seeds", $"no run's supervisor answered through [{string.Join(", ", config.Node.Seeds)}] within 20 s: is a coordinator running there?");
        }
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

    /// <summary>The configuration of a tool that talks to a cluster as a client: --seeds, --tls-certificate, --host over moce.node.*.</summary>
    public static MoceConfig ClientConfig(CliArgs cli)
    {
        var overrides = cli.Overrides.ToList();
        if (cli.Flags.TryGetValue("seeds", out var seeds))
            overrides.Add($"moce.node.seed-nodes=[{string.Join(", ", seeds.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(x => JsonSerializer.Serialize(x)))}]");
        if (cli.Flags.TryGetValue("tls-certificate", out var cert)) overrides.Add($"moce.node.tls-certificate={JsonSerializer.Serialize(Path.GetFullPath(cert))}");
        if (cli.Flags.TryGetValue("host", out var host)) overrides.Add($"moce.node.host={JsonSerializer.Serialize(host)}");
        var merged = ConfigLoader.Merge(new ConfigLoader.Sources(cli.Preset, cli.Files, overrides));
        return ConfigLoader.Resolve(merged).config;
    }
}
