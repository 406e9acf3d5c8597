using MoCE.Core.Config;
using MoCE.Runs;
using MoCE.Runs.Configuration;
using Serilog;

namespace MoCE.Cli.Commands;

/// <summary><c>moce train</c>: parses its flags and runs <see cref="TrainingPhase"/>.</summary>
public static class TrainCommand
{
    public static int Run(CliArgs cli, CancellationToken ct)
    {
        if (cli.Flags.ContainsKey("seeds"))
        {
            // against a cluster: this process joins it as a coordinator and the run runs there (moce node)
            if (cli.Flags.TryGetValue("engine", out var e) && e != "actors") throw new ConfigException("--engine", "a cluster runs the actor engine; drop --engine or use --engine actors");
            var flags = cli.Flags.Where(kv => kv.Key != "engine").ToDictionary();
            flags.TryAdd("roles", "coordinator");
            return NodeCommand.Run(cli with { Command = "node", Flags = flags }, ct);
        }
        cli.RejectFlagsExcept("method", "engine", "chaos");
        var chaos = cli.Flags.TryGetValue("chaos", out var file) ? MoCE.Actors.ChaosSchedule.Load(file) : null;   // checked before any work
        var s = Session.Open(cli.Request);
        var engine = cli.Flags.GetValueOrDefault("engine", s.Config.Engine);
        if (engine is not ("actors" or "local")) throw new ConfigException("--engine", $"expected actors or local, got '{engine}'");
        if (chaos is not null && engine != "actors") throw new ConfigException("--chaos", "injects faults into the actor engine; drop --engine local");
        var method = cli.Flags.TryGetValue("method", out var m) ? MoceConfig.ParseMethod("--method", m) : s.Config.Moe.Method;
        if (chaos is not null)
        {
            var dir = s.Run.Phase(Artifacts.TrainPhase(method));
            File.Copy(file!, Path.Combine(dir, "chaos.conf"), overwrite: true);                 // the schedule, next to what it did
            Log.Warning("Chaos schedule {File}: faults will be injected", file);
        }
        TrainingPhase.Execute(s, method, engine, ct, chaos: chaos);
        return 0;
    }
}
