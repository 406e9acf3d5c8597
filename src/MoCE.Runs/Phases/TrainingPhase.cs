using System.Text.Json;
using MoCE.Runs.Configuration;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Training;
using Serilog;

namespace MoCE.Runs;

/// <summary><c>moce train [--method moce|token-moe|dense] [--engine actors|local]</c>: trains from the run's dense MAE
/// and its clustering, on the actor engine (default) or the single-process reference. Resumable either way. With
/// <c>--seeds HOST:PORT,...</c> it runs against a cluster: the process joins it as a coordinator (moce node's flags
/// apply) and the run's experts go to the cluster's expert nodes.</summary>
public static class TrainingPhase
{
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
        var summary = PretrainPhase.Summarize(Path.Combine(dir, "metrics.csv"), data.Source);
        File.WriteAllText(Path.Combine(dir, "summary.json"), JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true }));
        Log.Information("{Method} done: loss {First:F4} → {Last:F4}; {Ips:F0} img/s; {Wall:F0} s",
            MoceConfig.MethodName(method), summary.FirstLossMean, summary.LastLossMean, summary.ImagesPerSecond, summary.WallSeconds);
    }
}
