using System.Globalization;
using System.Text.Json;
using MoCE.Core.Data;
using MoCE.Core.Training;
using Serilog;

namespace MoCE.Runs;

/// <summary><c>moce pretrain</c>: dense MAE pre-training with the reference trainer, resumable.</summary>
public static class PretrainPhase
{
    public static void Execute(Session s, CancellationToken ct)
    {
        var dir = s.Run.Phase("pretrain");
        using var data = s.Data.PretrainSet();
        Log.Information("Pre-training a dense MAE on {Count} images: {Steps} steps of {Batch}, peak lr {Lr:G3}",
            data.Count, s.Config.Pretrain.Steps, s.Config.Pretrain.BatchSize, s.Config.Pretrain.PeakLr);
        using var trainer = new DenseTrainer(s.Config.Model, s.Config.Pretrain, data, s.Device);
        using var metrics = s.ServeMetrics();
        var loop = new TrainingLoop(trainer, s.Config.Pretrain, dir, Log.Logger) { Observer = MoCE.Actors.NodeMetrics.Progress };
        loop.Run(p => Log.Information("step {Step}/{Total} loss {Loss:F4} {Ips:F0} img/s ETA {Eta:hh\\:mm\\:ss}",
            p.Step, p.TotalSteps, p.Loss, p.ImagesPerSecond, p.Eta), ct);

        var summary = Summarize(Path.Combine(dir, "metrics.csv"), data.Source);
        File.WriteAllText(Path.Combine(dir, "summary.json"), JsonSerializer.Serialize(summary, new JsonSerializerOptions { WriteIndented = true }));
        Log.Information("Pre-training done: loss {First:F4} (mean of first 50 steps) → {Last:F4} (last 50), ratio {Ratio:F3}; {Ips:F0} img/s; {Wall:F0} s of training",
            summary.FirstLossMean, summary.LastLossMean, summary.LossRatio, summary.ImagesPerSecond, summary.WallSeconds);
    }

    public sealed record Summary(long Steps, double FirstLossMean, double LastLossMean, double LossRatio,
                                 double ImagesPerSecond, double WallSeconds, string Data);

    /// <summary>Reads metrics.csv: loss means over the first and last 50 steps, mean throughput, and the training
    /// wall time summed over every process that worked on the run (wall_s restarts at each resume).</summary>
    public static Summary Summarize(string metricsCsv, string data)
    {
        var rows = File.ReadLines(metricsCsv).Skip(1).Select(l => l.Split(','))
            .Select(c => (step: long.Parse(c[0], CultureInfo.InvariantCulture), loss: double.Parse(c[1], CultureInfo.InvariantCulture),
                          images: int.Parse(c[4], CultureInfo.InvariantCulture), wall: double.Parse(c[6], CultureInfo.InvariantCulture)))
            .OrderBy(r => r.step).ToList();
        if (rows.Count == 0) throw new InvalidDataException($"{metricsCsv}: no steps recorded");
        double wall = 0, prev = 0;
        foreach (var r in rows) { if (r.wall < prev) wall += prev; prev = r.wall; }
        wall += prev;
        int k = Math.Min(50, rows.Count);
        double first = rows.Take(k).Average(r => r.loss), last = rows.TakeLast(k).Average(r => r.loss);
        return new Summary(rows.Count, first, last, last / first, rows.Sum(r => r.images) / Math.Max(wall, 1e-9), wall, data);
    }
}
