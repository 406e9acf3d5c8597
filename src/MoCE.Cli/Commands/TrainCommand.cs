using System.Text.Json;
using MoCE.Cli.Configuration;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Training;
using Serilog;

namespace MoCE.Cli.Commands;

/// <summary><c>moce train [--method moce|token-moe|dense] [--engine actors|local]</c>: trains from the run's dense MAE
/// and its clustering, on the actor engine (default) or the single-process reference. Resumable either way. With
/// <c>--seeds HOST:PORT,...</c> it runs against a cluster: the process joins it as a coordinator (moce node's flags
/// apply) and the run's experts go to the cluster's expert nodes.</summary>
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
        var s = Session.Open(cli);
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
        Execute(s, method, engine, ct, chaos: chaos);
        return 0;
    }

    /// <summary><paramref name="node"/>: run as one coordinator of a cluster (moce node), on the actor engine.</summary>
    public static void Execute(Session s, MoeMethod method, string engine, CancellationToken ct, MoCE.Actors.NodeOptions? node = null, MoCE.Actors.ChaosPlan? chaos = null)
    {
        var dir = s.Run.Phase(Artifacts.TrainPhase(method));
        var (dense, sha) = Artifacts.Dense(s);
        using var _ = dense;
        using var data = s.Data.PretrainSet();
        using var clustering = Artifacts.Clustering(s, sha, data.Count);
        var moe = s.Config.Moe with { Method = method };
        var train = s.Config.Train;
        Log.Information("Training {Method} from dense checkpoint {Sha}…: {Steps} steps of {Batch}; {Experts} experts in blocks [{Layers}], top-{K}, {C} clusters",
            MoceConfig.MethodName(method), sha[..16], train.Steps, train.BatchSize, moe.Experts, string.Join(",", moe.Layers), moe.TopK, clustering.K);
        if (engine == "actors" && method != MoeMethod.Dense)
            ActorTrain.Execute(s, moe, dir, dense, sha, data, clustering, ct, node, chaos);
        else
        {
            if (engine == "actors") Log.Information("dense has no experts to distribute; the reference engine trains it");
            using var trainer = new MoceTrainer(s.Config.Model, moe, train, data, clustering, dense, sha, s.Device);
            using var metrics = s.ServeMetrics();
            var loop = new TrainingLoop(trainer, train, dir, Log.Logger) { Observer = MoCE.Actors.NodeMetrics.Progress };
            loop.Run(p => Log.Information("{Method} step {Step}/{Total} loss {Loss:F4} {Ips:F0} img/s ETA {Eta:hh\\:mm\\:ss}{Routing}",
                MoceConfig.MethodName(method), p.Step, p.TotalSteps, p.Loss, p.ImagesPerSecond, p.Eta, ExpertStat.Summary(trainer.LastRouting)), ct);
        }
        var summary = PretrainCommand.Summarize(Path.Combine(dir, "metrics.csv"), data.Source);
        File.WriteAllText(Path.Combine(dir, "summary.json"), JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true }));
        Log.Information("{Method} done: loss {First:F4} → {Last:F4}; {Ips:F0} img/s; {Wall:F0} s",
            MoceConfig.MethodName(method), summary.FirstLossMean, summary.LastLossMean, summary.ImagesPerSecond, summary.WallSeconds);
    }
}
