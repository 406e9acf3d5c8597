using System.Diagnostics;
using MoCE.Runs.Configuration;
using MoCE.Core.Checkpoints;
using MoCE.Core.Clustering;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Evaluation;
using MoCE.Core.Runtime;
using MoCE.Core.Training;
using Serilog;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Cli.Commands;

/// <summary><c>moce bench</c>: in one process, times the dense reference trainer's step and the reference MoCE
/// trainer's step (from that dense model and a real k-means clustering of its features), interleaved in rounds; the
/// actor engine's step against the reference MoCE trainer's, in alternating rounds; the actor engine's wall time with
/// commits every 50 steps against without; and a 1024×1024 fp32 matmul. It prints the ratios, which survive noisy machines better than absolute
/// times.</summary>
public static class BenchCommand
{
    public const int BenchImages = 8192;

    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept("warmup", "steps", "rounds");
        int warmup = cli.FlagInt("warmup", 40), steps = cli.FlagInt("steps", 160), rounds = cli.FlagInt("rounds", 8);
        if (warmup < 1 || steps < 1 || rounds < 1 || steps < rounds)
            throw new ConfigException("--steps", $"--warmup, --steps and --rounds must be positive, and --steps at least --rounds (got {warmup}, {steps}, {rounds})");
        var merged = ConfigLoader.Merge(new ConfigLoader.Sources(cli.Preset ?? "bench", cli.Files, cli.Overrides));
        var (cfg, _) = ConfigLoader.Resolve(merged);
        var device = new Device(cfg.Device);
        using var full = new DataSources(cfg.Data, cfg.Model, cfg.Seed).PretrainSet();
        // every phase computes on a thread of its own that exits afterwards (see ComputeThread): this thread, which
        // hosts the actor engine, never holds an OpenMP pool, as in `moce train`
        using var data = ComputeThread.Run("bench-data", cfg.Threads, () => full.Take(Math.Min(BenchImages, full.Count)));
        var m = cfg.Model;
        int threads = cfg.Threads;
        Log.Information("bench: image {Img}, patch {P}, dim {D}, depth {Depth}, heads {H}; decoder {Dd}/{Ddepth}/{Dh}; mask {R}; batch {B}; fp32; {T} threads; {N} images of {Src}",
            m.ImageSize, m.PatchSize, m.Dim, m.Depth, m.Heads, m.DecoderDim, m.DecoderDepth, m.DecoderHeads, m.MaskRatio, cfg.Pretrain.BatchSize, threads, data.Count, full.Source);

        double matmulBefore = ComputeThread.Run("bench-matmul", threads, MatmulMs);
        var dense = cfg.Pretrain with { Steps = warmup + steps, CheckpointEvery = long.MaxValue };
        using var denseTrainer = ComputeThread.Run("bench-dense", threads, () =>
        {
            var t = new DenseTrainer(m, dense, data, device);
            for (int i = 0; i < warmup; i++) t.TrainStep();
            return t;
        });

        // MoCE from that dense model: its checkpoint, and k-means over its features of the bench images
        var store = new CheckpointStore(Path.Combine(Path.GetTempPath(), $"moce-bench-{Guid.NewGuid():N}"));
        try
        {
            var denseRef = denseTrainer.SaveCheckpoint(store)[0];
            using var clustering = ComputeThread.Run("bench-cluster", threads, () =>
            {
                using var feats = Features.Extract(denseTrainer.Model, data, Enumerable.Range(0, data.Count).ToList(), device: device);
                var km = KMeans.Fit(feats, cfg.Cluster.K, cfg.Pretrain.Seed, cfg.Cluster.MaxIter, cfg.Cluster.Tol);
                return new ClusteringResult { Centroids = km.Centroids, TrainIds = km.Assignments, DenseSha256 = denseRef.Sha256, DataSource = data.Source };
            });
            using var ckpt = store.Load(denseRef);
            var train = cfg.Train with { Steps = long.MaxValue, CheckpointEvery = long.MaxValue };
            MoceTrainer? moceTrainer = null;
            var (denseMs, moceMs) = ComputeThread.Run("bench-reference", threads, () =>
            {
                moceTrainer = new MoceTrainer(m, cfg.Moe, train, data, clustering, ckpt, denseRef.Sha256, device);
                for (int i = 0; i < warmup; i++) moceTrainer.TrainStep();
                return Interleaved(denseTrainer, moceTrainer, steps);
            });

            moceTrainer?.Dispose();
            // the actor engine on the same MoCE configuration, from the same seed, threads and batch, in rounds
            // alternating with a reference MoCE trainer
            var (actorRounds, refRounds, actorCpu, refCpu, actorGc, refGc) = ActorVersusReference(cfg, data, clustering, ckpt, device, warmup, steps, rounds);
            // the teacher's prefetch overlaps the trainer: with distillation off nothing hides the runtime's own overhead
            var noDistill = cfg with { Moe = cfg.Moe with { LambdaDistill = 0 } };
            var (actorNd, refNd, _, _, _, _) = cfg.Moe.LambdaDistill > 0 ? ActorVersusReference(noDistill, data, clustering, ckpt, device, warmup, steps, rounds) : (actorRounds, refRounds, 0, 0, 0, 0);
            var (withCommits, withoutCommits, stepMs, cuts, blocking, backgroundCpu) = CommitCost(cfg, data, clustering, ckpt, device, every: 50, cuts: 5);
            double matmul = (matmulBefore + ComputeThread.Run("bench-matmul", threads, MatmulMs)) / 2;
            double actorMs = actorRounds.Average(), refMs = refRounds.Average();

            int b = cfg.Pretrain.BatchSize;
            Console.WriteLine($"dense reference step: {denseMs:F2} ms ({b * 1000 / denseMs:F0} images/s)");
            Console.WriteLine($"MoCE reference step:  {moceMs:F2} ms ({b * 1000 / moceMs:F0} images/s); E={cfg.Moe.Experts}, top-{cfg.Moe.TopK}, C={cfg.Cluster.K}, blocks [{string.Join(", ", cfg.Moe.Layers)}], distillation {(cfg.Moe.LambdaDistill > 0 ? "on" : "off")}");
            Console.WriteLine($"1024x1024 fp32 matmul: {matmul:F2} ms ({2.0 * 1024 * 1024 * 1024 / (matmul * 1e6):F1} GFLOP/s)");
            Console.WriteLine($"ratio MoCE-step / dense-step: {moceMs / denseMs:F3}");
            Console.WriteLine($"actor engine MoCE step: {actorMs:F2} ms ({b * 1000 / actorMs:F0} images/s); trainer {threads} threads, router, experts and teacher {cfg.OwnerThreads} each; GOMP_SPINCOUNT={Environment.GetEnvironmentVariable("GOMP_SPINCOUNT") ?? "libgomp's default"}");
            Console.WriteLine($"reference MoCE step in the same rounds: {refMs:F2} ms ({b * 1000 / refMs:F0} images/s)");
            Console.WriteLine($"per round, actor / reference: {string.Join(", ", actorRounds.Zip(refRounds, (a, r) => $"{a:F1}/{r:F1}"))} ms");
            var perRound = actorRounds.Zip(refRounds, (a, r) => a / r).Order().ToArray();
            Console.WriteLine($"process CPU per step (all threads, spinning included): actor {actorCpu:F1} ms, reference {refCpu:F1} ms");
            Console.WriteLine($"GC pause per step (collect-every = {cfg.Train.CollectEvery}): actor {actorGc:F2} ms, reference {refGc:F2} ms");
            Console.WriteLine($"median of the per-round ratios: {(perRound[(perRound.Length - 1) / 2] + perRound[perRound.Length / 2]) / 2:F3}");
            Console.WriteLine($"ratio actor-step / reference-step: {actorMs / refMs:F3}");
            Console.WriteLine($"ratio actor-step / reference-step with distillation off: {actorNd.Average() / refNd.Average():F3} ({actorNd.Average():F2} / {refNd.Average():F2} ms)");
            Console.WriteLine($"actor run with a commit every 50 steps: {withCommits.Average() / 1000:F2} s against {withoutCommits.Average() / 1000:F2} s without " +
                              $"({cuts} commits in the window, steps of {stepMs:F1} ms; ABBA: with {withCommits[0] / 1000:F2}, without {withoutCommits[0] / 1000:F2}, " +
                              $"without {withoutCommits[1] / 1000:F2}, with {withCommits[1] / 1000:F2} s)");
            Console.WriteLine($"ratio wall time with commits / without: {withCommits.Average() / withoutCommits.Average():F4}");
            Console.WriteLine($"a cut's blocking part (every owner copies its part; the write is in the background): {blocking.Average():F1} ms on average over {blocking.Count} cuts " +
                              $"(max {blocking.Max():F1} ms), {blocking.Average() / (50 * stepMs) * 100:F3}% of the wall time at one cut per 50 steps of {stepMs:F1} ms");
            Console.WriteLine($"a cut's background work (writing every part, then reading each back against its hash): {backgroundCpu:F1} ms of CPU per cut; " +
                              $"with the blocking part, at most {(blocking.Average() + backgroundCpu) / (50 * stepMs) * 100:F3}% of the wall time if every background CPU millisecond delayed the steps by one");
            Console.WriteLine($"ratio dense-step / matmul: {denseMs / matmul:F2}");
            Console.WriteLine($"({steps} timed steps each after {warmup} warm-up steps; dense and MoCE reference interleaved in rounds of {Round}, actor engine and reference in {rounds} rounds in ABBA order)");
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

    /// <summary>Steps at the start of each round that are not timed: a fresh thread's first kernels, and for the
    /// engine the JIT work its restart brings (a real run starts once).</summary>
    private const int Untimed = 3;

    /// <summary>The actor engine against the reference MoCE trainer, same seed, threads, batch and steps, in
    /// <paramref name="rounds"/> alternating rounds: the reference on a fresh compute thread, then the engine in a
    /// fresh actor system resumed from its last commit. So both see the same machine, and neither has the other's
    /// threads (and OpenMP pools, see ComputeThread) alive next to it. Both first train <paramref name="warmup"/>
    /// steps: .NET compiles a method again, optimized, after some 30 calls, and the engine's code is not warm from
    /// the earlier phases. The first <see cref="Untimed"/> steps of each side's round are not timed; nor are the
    /// engine's start, restore and final commit. Also returns each side's process CPU time per timed step.</summary>
    private static (double[] actorMs, double[] referenceMs, double actorCpu, double referenceCpu, double actorGc, double referenceGc) ActorVersusReference(MoCE.Runs.Configuration.MoceConfig cfg,
        ImageDataset data, ClusteringResult clustering, CheckpointContent dense, Device device, int warmup, int steps, int rounds)
    {
        int perRound = Math.Max(1, steps / rounds);
        var train = cfg.Train with { Steps = warmup + rounds * (Untimed + perRound), CheckpointEvery = long.MaxValue };
        using var reference = ComputeThread.Run("bench-reference", cfg.Threads, () =>
            new MoceTrainer(cfg.Model, cfg.Moe, train, data, clustering, dense, clustering.DenseSha256, device));
        var dir = Path.Combine(Path.GetTempPath(), $"moce-bench-actors-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        var setup = ComputeThread.Run("bench-setup", cfg.Threads, () => Actors.ActorContextSetup.FromDense("bench", cfg.Model, cfg.Moe,
            train, data, clustering.TrainIds, clustering.K, TrainerCheckpoint.ModelWeights(dense),
            new CheckpointStore(Path.Combine(dir, "checkpoints")), device, cfg.Threads, cfg.OwnerThreads));
        var actor = new double[rounds];
        var refMs = new double[rounds];
        TimeSpan actorCpu = default, refCpu = default, actorGc = default, refGc = default;
        long done = warmup;
        void ActorRound(int r)
        {
            var sw = new Stopwatch();
            TimeSpan cpu = default, gc = default;
            long first = done + Untimed - 1, last = first + perRound;
            Actors.ActorEngine.Run(setup, dir, last + 1, long.MaxValue, 2, new Actors.SupervisorHooks(OnStep: m =>
            {
                if (m.Step == first) { sw.Start(); (cpu, gc) = (ProcessCpu(), GC.GetTotalPauseDuration()); }   // after the round's untimed steps
                if (m.Step == last) { sw.Stop(); actorCpu += ProcessCpu() - cpu; actorGc += GC.GetTotalPauseDuration() - gc; }
            }));
            actor[r] = sw.Elapsed.TotalMilliseconds / perRound;
            done = last + 1;
        }
        try
        {
            ComputeThread.Run("bench-reference", cfg.Threads, () => { for (int i = 0; i < warmup; i++) reference.TrainStep(); });
            Actors.ActorEngine.Run(setup, dir, warmup, long.MaxValue, 2, new Actors.SupervisorHooks());
            for (int r = 0; r < rounds; r++)
            {
                // ABBA: the reference first in rounds 0 and 3 of every four, the actor engine first in rounds 1 and 2, so
                // that neither side always runs on the machine the other has just warmed (or heated)
                bool actorFirst = r % 4 is 1 or 2;
                if (actorFirst) ActorRound(r);
                refMs[r] = ComputeThread.Run("bench-reference", cfg.Threads, () =>
                {
                    for (int i = 0; i < Untimed; i++) reference.TrainStep();
                    var t = Stopwatch.StartNew();
                    var (cpu, gc) = (ProcessCpu(), GC.GetTotalPauseDuration());
                    for (int i = 0; i < perRound; i++) reference.TrainStep();
                    refCpu += ProcessCpu() - cpu;
                    refGc += GC.GetTotalPauseDuration() - gc;
                    return t.Elapsed.TotalMilliseconds / perRound;
                });
                if (!actorFirst) ActorRound(r);
            }
        }
        finally { Directory.Delete(dir, recursive: true); }
        int timed = rounds * perRound;
        return (actor, refMs, actorCpu.TotalMilliseconds / timed, refCpu.TotalMilliseconds / timed, actorGc.TotalMilliseconds / timed, refGc.TotalMilliseconds / timed);
    }

    private static TimeSpan ProcessCpu()
    {
        using var self = Process.GetCurrentProcess();
        return self.TotalProcessorTime;
    }

    /// <summary>What commits cost a run: the actor engine's wall time with a commit every <paramref name="every"/> steps
    /// against the same run without them, over <paramref name="cuts"/> cuts, in ABBA order (with, without, without, with)
    /// so that neither side always runs on a warmer machine. Each run is fresh from the same dense start; the window is
    /// from its first completed step to its last, so the start, the initial commit and the final one are outside it in
    /// both. Returns the mean window of each side, the commits counted inside the windows of the runs with them, each
    /// cut's blocking part, and the CPU time a cut's background work took on average (every cut of those runs).</summary>
    private static (List<double> withMs, List<double> withoutMs, double stepMs, int cuts, List<double> blockingMs, double backgroundCpuMs) CommitCost(MoCE.Runs.Configuration.MoceConfig cfg, ImageDataset data,
        ClusteringResult clustering, CheckpointContent dense, Device device, long every, int cuts)
    {
        long total = every * cuts + every / 2;                                   // the last cut is followed by steps: inside the window
        var blocking = new List<double>();
        double cpuMs = 0;                                                        // background CPU of every cut of these runs (the initial and final ones too)
        int all = 0;
        (double ms, int commits) Once(long commitEvery)
        {
            var train = cfg.Train with { Steps = total };
            var dir = Path.Combine(Path.GetTempPath(), $"moce-bench-ckpt-{Guid.NewGuid():N}");
            Directory.CreateDirectory(dir);
            var setup = ComputeThread.Run("bench-setup", cfg.Threads, () => Actors.ActorContextSetup.FromDense("bench-ckpt", cfg.Model, cfg.Moe, train,
                data, clustering.TrainIds, clustering.K, TrainerCheckpoint.ModelWeights(dense), new CheckpointStore(Path.Combine(dir, "checkpoints")),
                device, cfg.Threads, cfg.OwnerThreads));
            var sw = new Stopwatch();
            int inside = 0;
            double stepEnd = 0;
            double cpuBefore = Actors.NodeMetrics.CutBackgroundCpuSeconds.Value;
            try
            {
                Actors.ActorEngine.Run(setup, dir, total, commitEvery, 2, new Actors.SupervisorHooks(
                    OnStep: m =>
                    {
                        if (!sw.IsRunning && m.Step == 0) sw.Start();
                        else if (m.Step == total - 1) sw.Stop();
                        stepEnd = sw.Elapsed.TotalMilliseconds;
                    },
                    OnCutTaken: s => { if (sw.IsRunning) blocking.Add(sw.Elapsed.TotalMilliseconds - stepEnd); },   // from the step's end to the next step's start
                    OnCommit: _ => { all++; if (sw.IsRunning) inside++; }));
            }
            finally { Directory.Delete(dir, recursive: true); }
            cpuMs += (Actors.NodeMetrics.CutBackgroundCpuSeconds.Value - cpuBefore) * 1000;
            return (sw.Elapsed.TotalMilliseconds, inside);
        }
        var with = new List<double>();
        var without = new List<double>();
        int counted = 0;
        foreach (bool commits in new[] { true, false, false, true })
        {
            var (ms, n) = Once(commits ? every : long.MaxValue);
            if (commits) { with.Add(ms); counted += n; } else without.Add(ms);
        }
        return (with, without, without.Average() / (total - 1), counted / with.Count, blocking, cpuMs / all);
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
