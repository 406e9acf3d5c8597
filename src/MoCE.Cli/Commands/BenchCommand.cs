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

            // the actor engine on the same MoCE configuration, interleaved with the reference MoCE trainer: every
            // Round actor steps, the supervisor's step hook (which pauses the engine) runs Round reference steps
            var (actorMs, refMs) = ActorVersusReference(cfg, data, clustering, ckpt, denseRef.Sha256, device, warmup, steps);
            var (cutMs, stepMs, cuts) = CheckpointOverhead(cfg, data, clustering, ckpt, device, every: 50, totalSteps: 100);
            double matmul = (matmulBefore + MatmulMs()) / 2;

            int b = cfg.Pretrain.BatchSize;
            Console.WriteLine($"dense reference step: {denseMs:F2} ms ({b * 1000 / denseMs:F0} images/s)");
            Console.WriteLine($"MoCE reference step:  {moceMs:F2} ms ({b * 1000 / moceMs:F0} images/s); E={cfg.Moe.Experts}, top-{cfg.Moe.TopK}, C={cfg.Cluster.K}, blocks [{string.Join(", ", cfg.Moe.Layers)}], distillation {(cfg.Moe.LambdaDistill > 0 ? "on" : "off")}");
            Console.WriteLine($"1024x1024 fp32 matmul: {matmul:F2} ms ({2.0 * 1024 * 1024 * 1024 / (matmul * 1e6):F1} GFLOP/s)");
            Console.WriteLine($"ratio MoCE-step / dense-step: {moceMs / denseMs:F3}");
            Console.WriteLine($"actor engine MoCE step: {actorMs:F2} ms; reference MoCE step in the same interleaved run: {refMs:F2} ms");
            Console.WriteLine($"ratio actor-step / reference-step (interleaved): {actorMs / refMs:F3}");
            Console.WriteLine($"ratio actor-step / MoCE reference step timed alone above: {actorMs / moceMs:F3}");
            Console.WriteLine($"actor checkpoint (consistent cut + journal commit): {cutMs:F1} ms over {cuts} commits; one per 50 steps of {stepMs:F1} ms = {cutMs / (cutMs + 50 * stepMs):P2} of wall time");
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

    private static (double actorMs, double referenceMs) ActorVersusReference(Configuration.MoceConfig cfg, ImageDataset data, ClusteringResult clustering,
        CheckpointContent dense, string denseSha, Device device, int warmup, int steps)
    {
        var train = cfg.Train with { Steps = warmup + steps, CheckpointEvery = long.MaxValue };
        using var reference = new MoceTrainer(cfg.Model, cfg.Moe, train, cfg.Data, data, clustering, dense, denseSha, device);
        var dir = Path.Combine(Path.GetTempPath(), $"moce-bench-actors-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        var setup = Actors.ActorContextSetup.FromDense("bench", cfg.Model, cfg.Moe, train, cfg.Data, data, clustering.TrainIds, clustering.K,
            TrainerCheckpoint.ModelWeights(dense), new CheckpointStore(Path.Combine(dir, "checkpoints")), device, cfg.Threads, cfg.OwnerThreads);
        // the reference gets one long-lived thread of its own, like each actor: torch's thread-local state (OpenMP
        // team, oneDNN caches) stays warm, as it does on the actors' pinned threads
        using var request = new SemaphoreSlim(0);
        using var done = new SemaphoreSlim(0);
        double refTime = 0;
        bool stop = false;
        var refThread = new Thread(() =>
        {
            if (cfg.Threads > 0) torch.set_num_threads(cfg.Threads);
            for (int i = 0; i < warmup; i++) reference.TrainStep();
            while (true)
            {
                request.Wait();
                if (stop) return;
                var t = Stopwatch.StartNew();
                for (int i = 0; i < Round; i++) reference.TrainStep();
                refTime += t.Elapsed.TotalMilliseconds;
                done.Release();
            }
        }) { IsBackground = true, Name = "bench-reference" };
        refThread.Start();
        var sw = Stopwatch.StartNew();
        double actor = 0, lastReturn = 0;
        try
        {
            Actors.ActorEngine.Run(setup, dir, warmup + steps, long.MaxValue, 2, new Actors.SupervisorHooks(OnStep: m =>
            {
                double now = sw.Elapsed.TotalMilliseconds;
                if (m.Step >= warmup) actor += now - lastReturn;           // the engine's time for this step
                if (m.Step >= warmup && (m.Step - warmup) % Round == Round - 1)
                {
                    request.Release();
                    done.Wait();
                }
                lastReturn = sw.Elapsed.TotalMilliseconds;
            }));
        }
        finally
        {
            stop = true;
            request.Release();
            refThread.Join();
            Directory.Delete(dir, recursive: true);
        }
        int timedRef = steps / Round * Round;
        return (actor / steps, refTime / Math.Max(1, timedRef));
    }

    /// <summary>Runs the actor engine with a commit every <paramref name="every"/> steps and times each cut, from the
    /// last completed step to the persisted commit (every owner writes its file, then the journal event).</summary>
    private static (double cutMs, double stepMs, int cuts) CheckpointOverhead(Configuration.MoceConfig cfg, ImageDataset data, ClusteringResult clustering,
        CheckpointContent dense, Device device, long every, long totalSteps)
    {
        var train = cfg.Train with { Steps = totalSteps };
        var dir = Path.Combine(Path.GetTempPath(), $"moce-bench-ckpt-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        var setup = Actors.ActorContextSetup.FromDense("bench-ckpt", cfg.Model, cfg.Moe, train, cfg.Data, data, clustering.TrainIds, clustering.K,
            TrainerCheckpoint.ModelWeights(dense), new CheckpointStore(Path.Combine(dir, "checkpoints")), device, cfg.Threads, cfg.OwnerThreads);
        var sw = Stopwatch.StartNew();
        double last = 0, cut = 0, steps = 0;
        int cuts = 0;
        try
        {
            Actors.ActorEngine.Run(setup, dir, totalSteps, every, 2, new Actors.SupervisorHooks(
                OnStep: _ => { double now = sw.Elapsed.TotalMilliseconds; steps += now - last; last = now; },
                OnCommit: c =>
                {
                    double now = sw.Elapsed.TotalMilliseconds;
                    if (c.Step > 0) { cut += now - last; cuts++; }           // commit 0 is the run's initial state
                    last = now;
                }));
        }
        finally { Directory.Delete(dir, recursive: true); }
        return (cut / Math.Max(1, cuts), steps / totalSteps, cuts);
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
