using System.Diagnostics;
using MoCE.Cli.Configuration;
using MoCE.Core.Checkpoints;
using MoCE.Core.Clustering;
using MoCE.Core.Data;
using MoCE.Core.Evaluation;
using MoCE.Core.Training;
using Serilog;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Cli.Commands;

/// <summary><c>moce bench</c>: in one process, times the dense reference trainer's step and the reference MoCE
/// trainer's step (from that dense model and a real k-means clustering of its features), interleaved in rounds,
/// plus a 1024×1024 fp32 matmul, and prints the ratios, which survive noisy machines better than absolute times.</summary>
public static class BenchCommand
{
    public const int BenchImages = 8192;

    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept("warmup", "steps");
        int warmup = cli.FlagInt("warmup", 10), steps = cli.FlagInt("steps", 50);
        var merged = ConfigLoader.Merge(new ConfigLoader.Sources(cli.Preset ?? "bench", cli.Files, cli.Overrides));
        var (cfg, _) = ConfigLoader.Resolve(merged);
        if (cfg.Threads > 0) torch.set_num_threads(cfg.Threads);
        var device = new Device(cfg.Device);
        var loc = FashionMnist.Locate(cfg.Data.Path, cfg.Data.FallbackToSample);
        using var full = FashionMnist.Load(loc.Directory, Split.Train);
        using var data = full.Take(Math.Min(BenchImages, full.Count));
        var m = cfg.Model;
        Log.Information("bench: image {Img}, patch {P}, dim {D}, depth {Depth}, heads {H}; decoder {Dd}/{Ddepth}/{Dh}; mask {R}; batch {B}; fp32; {T} threads; {N} images of {Src}",
            m.ImageSize, m.PatchSize, m.Dim, m.Depth, m.Heads, m.DecoderDim, m.DecoderDepth, m.DecoderHeads, m.MaskRatio, cfg.Pretrain.BatchSize, torch.get_num_threads(), data.Count, full.Source);

        double matmulBefore = MatmulMs();
        var dense = cfg.Pretrain with { Steps = warmup + steps, CheckpointEvery = long.MaxValue };
        using var denseTrainer = new DenseTrainer(m, dense, cfg.Data, data, device);
        for (int i = 0; i < warmup; i++) denseTrainer.TrainStep();

        // MoCE from that dense model: its checkpoint, and k-means over its features of the bench images
        var store = new CheckpointStore(Path.Combine(Path.GetTempPath(), $"moce-bench-{Guid.NewGuid():N}"));
        try
        {
            var denseRef = denseTrainer.SaveCheckpoint(store)[0];
            using var feats = Features.Extract(denseTrainer.Model, data, Enumerable.Range(0, data.Count).ToList(), cfg.Data.Mean, cfg.Data.Std, device: device);
            var km = KMeans.Fit(feats, cfg.Cluster.K, cfg.Pretrain.Seed, cfg.Cluster.MaxIter, cfg.Cluster.Tol);
            using var clustering = new ClusteringResult { Centroids = km.Centroids, TrainIds = km.Assignments, DenseSha256 = denseRef.Sha256, DataSource = data.Source };
            using var ckpt = store.Load(denseRef);
            var train = cfg.Train with { Steps = warmup + steps, CheckpointEvery = long.MaxValue };
            using var moceTrainer = new MoceTrainer(m, cfg.Moe, train, cfg.Data, data, clustering, ckpt, denseRef.Sha256, device);
            for (int i = 0; i < warmup; i++) moceTrainer.TrainStep();
            var (denseMs, moceMs) = Interleaved(denseTrainer, moceTrainer, steps);
            double matmul = (matmulBefore + MatmulMs()) / 2;

            int b = cfg.Pretrain.BatchSize;
            Console.WriteLine($"dense reference step: {denseMs:F2} ms ({b * 1000 / denseMs:F0} images/s)");
            Console.WriteLine($"MoCE reference step:  {moceMs:F2} ms ({b * 1000 / moceMs:F0} images/s); E={cfg.Moe.Experts}, top-{cfg.Moe.TopK}, C={cfg.Cluster.K}, blocks [{string.Join(", ", cfg.Moe.Layers)}], distillation {(cfg.Moe.LambdaDistill > 0 ? "on" : "off")}");
            Console.WriteLine($"1024x1024 fp32 matmul: {matmul:F2} ms ({2.0 * 1024 * 1024 * 1024 / (matmul * 1e6):F1} GFLOP/s)");
            Console.WriteLine($"ratio MoCE-step / dense-step: {moceMs / denseMs:F3}");
            Console.WriteLine($"ratio dense-step / matmul: {denseMs / matmul:F2}");
            Console.WriteLine($"({steps} timed steps each, interleaved in rounds of {Round}, after {warmup} warm-up steps)");
        }
        finally { Directory.Delete(store.Directory, recursive: true); }
        return 0;
    }

    private const int Round = 5;

    /// <summary>Mean step times of two trainers, timed in alternating rounds so that both see the same machine
    /// conditions (a noisy neighbour slows both, not one).</summary>
    private static (double a, double b) Interleaved(ITrainer a, ITrainer b, int steps)
    {
        double ta = 0, tb = 0;
        for (int done = 0; done < steps; done += Round)
        {
            int n = Math.Min(Round, steps - done);
            var sw = Stopwatch.StartNew();
            for (int i = 0; i < n; i++) a.TrainStep();
            ta += sw.Elapsed.TotalMilliseconds;
            sw.Restart();
            for (int i = 0; i < n; i++) b.TrainStep();
            tb += sw.Elapsed.TotalMilliseconds;
        }
        return (ta / steps, tb / steps);
    }

    private static double MatmulMs()
    {
        using var scope = NewDisposeScope();
        var a = randn(1024, 1024);
        var b = randn(1024, 1024);
        for (int i = 0; i < 3; i++) a.matmul(b).Dispose();
        var sw = Stopwatch.StartNew();
        const int n = 20;
        for (int i = 0; i < n; i++) a.matmul(b).Dispose();
        return sw.Elapsed.TotalMilliseconds / n;
    }
}
