using System.Diagnostics;
using MoCE.Actors;
using MoCE.Actors.Messages;
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

namespace MoCE.Cli.Commands;

/// <summary><c>moce bench-recovery</c>: on the bench configuration and the embedded journal, in one process: the time
/// from an expert's failure to the next committed step under global-rollback, expert-local and expert-exact (a failure
/// in the expert's forward, backward and update), against the same interval without a failure, and whether the final
/// weights equal the run without the failure bit for bit; the steady-state cost of expert-exact's in-memory copies
/// (clean runs, ABBA); and the throughput while one expert is a 5× straggler, with and without the straggler timeout
/// (set to the measured step time), against no straggler. Faults come from a <see cref="ChaosPlan"/> through the real
/// paths. With --node-loss, instead: the loss of an expert node in a cluster of three processes (<see cref="NodeLossBench"/>).</summary>
public static class RecoveryBenchCommand
{
    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept("steps", "node-loss");
        int steps = cli.FlagInt("steps", 80);
        if (steps < 40) throw new ConfigException("--steps", $"must be at least 40 (the failure is at step steps/2 − 5), got {steps}");
        if (cli.Flags.ContainsKey("node-loss")) return NodeLossBench.Run(cli, steps);
        var merged = ConfigLoader.Merge(new ConfigLoader.Sources(cli.Preset ?? "bench", cli.Files, cli.Overrides));
        var (cfg, _) = ConfigLoader.Resolve(merged);
        var device = new torch.Device(cfg.Device);
        using var full = new DataSources(cfg.Data, cfg.Model, cfg.Seed).PretrainSet();
        using var data = ComputeThread.Run("bench-data", cfg.Threads, () => full.Take(Math.Min(BenchCommand.BenchImages, full.Count)));
        var root = Path.Combine(Path.GetTempPath(), $"moce-bench-recovery-{Guid.NewGuid():N}");
        var store = new CheckpointStore(Path.Combine(root, "dense"));
        try
        {
            // a dense model (40 steps) and a k-means clustering of its features: what MoCE starts from
            var (denseRef, clustering) = ComputeThread.Run("bench-prepare", cfg.Threads, () =>
            {
                using var t = new DenseTrainer(cfg.Model, cfg.Pretrain with { Steps = 40, CheckpointEvery = long.MaxValue }, data, device);
                for (int i = 0; i < 40; i++) t.TrainStep();
                var r = t.SaveCheckpoint(store)[0];
                using var feats = Features.Extract(t.Model, data, Enumerable.Range(0, data.Count).ToList(), device: device);
                var km = KMeans.Fit(feats, cfg.Cluster.K, cfg.Pretrain.Seed, cfg.Cluster.MaxIter, cfg.Cluster.Tol);
                return (r, new ClusteringResult { Centroids = km.Centroids, TrainIds = km.Assignments, DenseSha256 = r.Sha256, DataSource = data.Source });
            });
            using var _ = clustering;
            using var dense = store.Load(denseRef);
            long every = steps / 4, fail = steps / 2 - 5;                     // commits at ¼, ½, ¾; the failure 5 steps before ½
            string victim = $"expert-{cfg.Moe.Experts - 1}";
            Console.WriteLine($"bench-recovery: bench configuration, {steps} steps of {cfg.Train.BatchSize}, commit every {every}, E={cfg.Moe.Experts}, {cfg.Threads} threads, embedded SQLite journal");

            Timeline Run(string name, ChaosPlan chaos, RecoveryPolicy policy, TimeSpan stragglerTimeout = default)
            {
                var dir = Path.Combine(root, name);
                var setup = ComputeThread.Run("bench-setup", cfg.Threads, () => ActorContextSetup.FromDense(name, cfg.Model, cfg.Moe, cfg.Train with { Steps = steps },
                    data, clustering.TrainIds, clustering.K, TrainerCheckpoint.ModelWeights(dense), new CheckpointStore(Path.Combine(dir, "checkpoints")),
                    device, cfg.Threads, cfg.OwnerThreads)) with { Chaos = chaos, Policy = policy, StragglerTimeout = stragglerTimeout, StragglerSitOut = cfg.StragglerSitOut, Backoff = cfg.Backoff, AskTimeout = cfg.AskTimeout };
                var t = new Timeline(setup.Store);
                ActorEngine.Run(setup, dir, steps, every, 2, new SupervisorHooks(
                    OnStep: m => t.Steps[m.Step] = t.Clock.Elapsed.TotalMilliseconds,
                    OnCommit: c => { t.Commits.Add((c.Step, t.Clock.Elapsed.TotalMilliseconds)); t.Last = c; },
                    OnChaos: c => t.Faults.Add((c, t.Clock.Elapsed.TotalMilliseconds)),
                    OnRecovery: r => t.Recoveries.Add(r)), timeout: TimeSpan.FromMinutes(20));
                return t;
            }

            // recovery time: from the failure to the next commit (and, without a failure, from that step's start to it)
            var clean = Run("clean", ChaosPlan.None, RecoveryPolicy.GlobalRollback);
            double cleanMs = clean.Commits.First(c => c.step > fail).ms - clean.Steps[fail - 1];
            Console.WriteLine($"  no failure:      step {fail} → commit {clean.Commits.First(c => c.step > fail).step}: {cleanMs:F0} ms");
            using var cleanWeights = clean.Weights();
            var runs = new (RecoveryPolicy policy, ChaosPhase phase)[]
            {
                (RecoveryPolicy.GlobalRollback, ChaosPhase.Entry), (RecoveryPolicy.ExpertLocal, ChaosPhase.Entry),
                (RecoveryPolicy.ExpertExact, ChaosPhase.Entry), (RecoveryPolicy.ExpertExact, ChaosPhase.Backward), (RecoveryPolicy.ExpertExact, ChaosPhase.Apply),
            };
            foreach (var (policy, phase) in runs)
            {
                var t = Run($"{policy}-{phase}", new ChaosPlan().FailAt(victim, fail, phase: phase), policy);
                var (fault, at) = t.Faults.Single();
                var next = t.Commits.First(c => c.ms > at && c.step > fail);
                var r = t.Recoveries.FirstOrDefault();
                using var weights = t.Weights();
                string where = phase == ChaosPhase.Entry ? "forward" : phase.ToString().ToLowerInvariant();
                Console.WriteLine($"  {MoCE.Runs.Configuration.HoconTree.Kebab(policy.ToString()),-16} {victim} fails in its {where,-8} at step {fault.Step} → commit {next.step}: {next.ms - at:F0} ms " +
                                  $"({next.ms - at - cleanMs:+0;-0} ms against no failure); final weights {(weights.Equal(cleanWeights) ? "bit-equal to" : "differ from")} the run without it" +
                                  (r is null ? "" : $"; {r.Policy}: {r.StepsReplayed} steps replayed, {r.StepsMissed} missed, {r.ReroutedImages} images rerouted{(r.Fallback.Length > 0 ? $", fallback: {r.Fallback}" : "")}"));
            }

            // expert-exact's steady-state cost: each expert copies its state after every update. Clean runs in ABBA order,
            // all after the runs above (the process's first run is also its coldest, so it is not one of them)
            double copySeconds = CopySeconds();
            var exact1 = Run("exact-clean-1", ChaosPlan.None, RecoveryPolicy.ExpertExact);
            double copyMs = (CopySeconds() - copySeconds) * 1000 / cfg.Moe.Experts / steps;   // per expert and step: each on its own thread
            var clean2 = Run("clean-2", ChaosPlan.None, RecoveryPolicy.GlobalRollback);
            var clean3 = Run("clean-3", ChaosPlan.None, RecoveryPolicy.GlobalRollback);
            var exact2 = Run("exact-clean-2", ChaosPlan.None, RecoveryPolicy.ExpertExact);
            double Window(Timeline t) => t.Steps[steps - 1] - t.Steps[0];
            Console.WriteLine($"  in-memory copies (expert-exact, no failure): steps 1..{steps - 1} took {Window(exact1):F0} and {Window(exact2):F0} ms, " +
                              $"without copies {Window(clean2):F0} and {Window(clean3):F0} ms (BAAB): {(Window(exact1) + Window(exact2)) / (Window(clean2) + Window(clean3)):F4}×");
            double stepMsClean = (Window(clean2) + Window(clean3)) / 2 / (steps - 1);
            Console.WriteLine($"  the copy itself: {copyMs:F2} ms per expert and step (timed around each copy), {copyMs / stepMsClean * 100:F2}% of a {stepMsClean:F0} ms step " +
                              "(each expert copies on its own thread before it answers its update, so that is what the step waits for)");

            // throughput under a 5× straggler for the second half, with and without the timeout
            double stepMs = Enumerable.Range((int)every, (int)every).Average(s => clean.Steps[s] - clean.Steps[s - 1]);
            double Ips(Timeline t) => (steps / 2 - 1) * (double)cfg.Train.BatchSize / ((t.Steps[steps - 1] - t.Steps[steps / 2]) / 1000);
            var slow = Run("straggler", new ChaosPlan().Straggle(victim, steps / 2, steps, factor: 5), RecoveryPolicy.GlobalRollback);
            // the timeout: a tenth of a step, above an expert's normal answer to a block, below a 5× straggler's
            var timeout = TimeSpan.FromMilliseconds(stepMs / 10);
            var timed = Run("straggler-timeout", new ChaosPlan().Straggle(victim, steps / 2, steps, factor: 5), RecoveryPolicy.GlobalRollback, timeout);
            Console.WriteLine($"  throughput over steps {steps / 2}..{steps - 1}: no straggler {Ips(clean):F0} img/s; {victim} 5× slower: {Ips(slow):F0} img/s ({Ips(slow) / Ips(clean):F2}×), " +
                              $"with straggler-timeout = {timeout.TotalMilliseconds:F0} ms (a tenth of a step): {Ips(timed):F0} img/s ({Ips(timed) / Ips(clean):F2}×; {timed.Recoveries.Count} sit-outs of {cfg.StragglerSitOut} steps)");
            return 0;
        }
        finally
        {
            try { Directory.Delete(root, recursive: true); } catch (IOException e) { Log.Warning("could not remove {Dir}: {Error}", root, e.Message); }
        }
    }

    private static double CopySeconds() => NodeMetrics.ExpertCopySeconds.GetAllLabelValues().Sum(l => NodeMetrics.ExpertCopySeconds.WithLabels(l).Value);

    private sealed class Timeline(ICheckpointStore store)
    {
        public CheckpointCommitted? Last;

        /// <summary>The last commit's weights and optimizer state, every tensor by owner and name.</summary>
        public State Weights() => State.Of(store, Last!.Manifest);

        public readonly Stopwatch Clock = Stopwatch.StartNew();
        public readonly Dictionary<long, double> Steps = [];
        public readonly List<(long step, double ms)> Commits = [];
        public readonly List<(ChaosFired fault, double ms)> Faults = [];
        public readonly List<RecoveryRecord> Recoveries = [];
    }

    internal sealed class State : IDisposable
    {
        public readonly Dictionary<string, torch.Tensor> Tensors = [];

        /// <summary>Every tensor of these parts (weights and optimizer state), by owner and name.</summary>
        public static State Of(ICheckpointStore store, IEnumerable<CheckpointRef> parts)
        {
            var all = new State();
            foreach (var part in parts)
            {
                using var c = store.Load(part);
                foreach (var (name, t) in c.Tensors) all.Tensors[$"{part.Owner}/{name}"] = t.clone();
            }
            return all;
        }

        public bool Equal(State other) => Tensors.Count == other.Tensors.Count &&
            Tensors.All(kv => other.Tensors.TryGetValue(kv.Key, out var o) && kv.Value.dtype == o.dtype && kv.Value.shape.SequenceEqual(o.shape) && kv.Value.bytes.SequenceEqual(o.bytes));

        public void Dispose()
        {
            foreach (var t in Tensors.Values) t.Dispose();
        }
    }
}
