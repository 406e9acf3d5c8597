using System.Text.RegularExpressions;
using MoCE.Actors;
using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Runs.Configuration;
using Serilog;
using static MoCE.Cli.Commands.ClusterBenchCommand;

namespace MoCE.Cli.Commands;

/// <summary><c>moce bench-recovery --node-loss</c>: the loss of an expert node in a cluster of three real processes (a
/// coordinator and two expert nodes on 127.0.0.1, journal in PostgreSQL, the failure detector and downing of
/// hocon/fast-failover.conf), on the bench configuration. A chaos schedule has the coordinator kill expert node 1 at a
/// step boundary (the process dies as under SIGKILL); the cost is the wall time from the end of the step before the kill
/// to the end of the step retried (expert-exact) and to the end of a later step (both policies; the steps after the loss
/// run on one expert node fewer), detection included, against the same intervals without the kill. The final commit of each run with a kill is compared with the run without it, tensor by tensor
/// (weights and optimizer state). Clean runs of both policies, in ABBA order around the runs with a kill, also give the
/// steady-state cost of expert-exact's copies (each expert's state sent to its peer node after every update).</summary>
public static class NodeLossBench
{
    public static int Run(CliArgs cli, int steps)
    {
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable(ActorEngine.PostgresVariable)))
            throw new ConfigException("$" + ActorEngine.PostgresVariable, "is not set: the nodes share the journal in PostgreSQL (bash build/postgres.sh prints a connection string)");
        var preset = cli.Preset ?? "bench";
        var (cfg, _) = ConfigLoader.Resolve(ConfigLoader.Merge(new ConfigLoader.Sources(preset, cli.Files, cli.Overrides)));
        long kill = steps / 2, until = kill + 10;                                  // the kill at a step boundary; timed to the end of step `until`
        string[] common = ChildArgs(cli, preset, "-o", $"train.steps={steps}", "-o", $"train.checkpoint-every={steps / 4}", "-o", "train.log-every=10");
        var root = Path.Combine(Path.GetTempPath(), $"moce-bench-node-loss-{Guid.NewGuid():N}");
        var hocon = Path.Combine(AppContext.BaseDirectory, "hocon");
        Directory.CreateDirectory(root);
        try
        {
            var baseRun = BaseRun(root, common, "bench-recovery --node-loss");
            Console.WriteLine($"bench-recovery --node-loss: bench configuration, {steps} steps of {cfg.Train.BatchSize}, commit every {steps / 4}, E={cfg.Moe.Experts}; " +
                              "3 processes on 127.0.0.1 (a coordinator, 2 expert nodes), PostgreSQL journal, hocon/fast-failover.conf on every node");
            Console.WriteLine($"  the kill: at the boundary before step {kill}; timed from the end of step {kill - 1} to the end of step {until}");

            Outcome ClusterRun(string name, RecoveryPolicy policy, bool withKill)
            {
                var run = NewRun(baseRun, Path.Combine(root, name));
                int seed = ClusterNode.FreeLoopbackPort(), victim = ClusterNode.FreeLoopbackPort(), other = ClusterNode.FreeLoopbackPort();
                string[] node = ["node", "--seeds", $"127.0.0.1:{seed}", "--min-expert-nodes", "2", "--insecure", "--config", Path.Combine(hocon, "persistence-postgres.conf"),
                                 "--config", Path.Combine(hocon, "fast-failover.conf"), .. common, "-o", $"actors.policy={HoconTree.Kebab(policy.ToString())}", "-o", "node.chaos-kill=true"];
                string[] chaos = [];
                if (withKill)
                {
                    var file = Path.Combine(root, name + "-chaos.conf");
                    File.WriteAllText(file, $"chaos {{ events = [ {{ kind = kill-node, node = \"127.0.0.1:{victim}\", step = {kill} }} ] }}\n");
                    chaos = ["--chaos", file];
                }
                using (var x1 = new Child(root, $"{name}-x1", [.. node, "--roles", "experts", "--port", victim.ToString()]))
                using (var x2 = new Child(root, $"{name}-x2", [.. node, "--roles", "experts", "--port", other.ToString()]))
                {
                    Moce(root, $"{name}-coordinator", [.. node, "--roles", "coordinator", "--port", seed.ToString(), "--run", run, .. chaos]);
                    if (!x1.Process.HasExited) x1.Terminate();
                    x2.Terminate();
                }
                var wall = Wall(run);
                var log = File.ReadAllText(Path.Combine(root, $"{name}-coordinator.log"));
                var store = new CheckpointStore(Path.Combine(run, "train-moce", "checkpoints"));
                var last = new CommitLog(store).Commits[^1];
                if (last.Step != steps) throw new InvalidOperationException($"{name}: the last commit is of step {last.Step}, not {steps}; see {root}");
                var outcome = new Outcome(1000 * (wall[until] - wall[kill - 1]), 1000 * (wall[kill] - wall[kill - 1]), 1000 * (wall[steps - 1] - wall[steps / 4]) / (steps - 1 - steps / 4),
                                          RecoveryBenchCommand.State.Of(store, last.Parts), log);
                Log.Information("{Run}: steps {From}..{Until} in {Ms:F0} ms, {StepMs:F1} ms/step", name, kill, until, outcome.IntervalMs, outcome.StepMs);
                return outcome;
            }

            var outcomes = new List<Outcome>();
            try
            {
                Outcome Timed(string name, RecoveryPolicy policy, bool withKill) { var o = ClusterRun(name, policy, withKill); outcomes.Add(o); return o; }
                var exactA = Timed("exact-clean-1", RecoveryPolicy.ExpertExact, withKill: false);
                var rollbackA = Timed("rollback-clean-1", RecoveryPolicy.GlobalRollback, withKill: false);
                var exactKill = Timed("exact-kill", RecoveryPolicy.ExpertExact, withKill: true);
                var rollbackKill = Timed("rollback-kill", RecoveryPolicy.GlobalRollback, withKill: true);
                var rollbackB = Timed("rollback-clean-2", RecoveryPolicy.GlobalRollback, withKill: false);
                var exactB = Timed("exact-clean-2", RecoveryPolicy.ExpertExact, withKill: false);

                double cleanMs = (exactA.IntervalMs + exactB.IntervalMs + rollbackA.IntervalMs + rollbackB.IntervalMs) / 4;
                Console.WriteLine($"  no failure: {cleanMs:F0} ms (expert-exact {exactA.IntervalMs:F0}, {exactB.IntervalMs:F0}; global-rollback {rollbackA.IntervalMs:F0}, {rollbackB.IntervalMs:F0})");
                double cleanStep = (exactA.KilledStepMs + exactB.KilledStepMs + rollbackA.KilledStepMs + rollbackB.KilledStepMs) / 4;
                Console.WriteLine($"  expert-exact     expert node 1 killed: from the end of step {kill - 1} to the end of the retried step {kill}: {exactKill.KilledStepMs:F0} ms " +
                                  $"({exactKill.KilledStepMs - cleanStep:+0;-0} ms against that step without the kill, {cleanStep:F0} ms): the recovery's cost, detection included");
                foreach (var (policy, o) in new[] { ("expert-exact", exactKill), ("global-rollback", rollbackKill) })
                    Console.WriteLine($"  {policy,-16} expert node 1 killed: {o.IntervalMs:F0} ms to step {until} ({o.IntervalMs - cleanMs:+0;-0} ms against no failure; the steps after it run on one expert node); " +
                                      $"final state {(o.State.Equal(exactA.State) ? "bit-equal to" : "differs from")} the run without the kill; {o.Recovery()}");
                Console.WriteLine($"  peer copies (expert-exact, no failure): {exactA.StepMs:F1} and {exactB.StepMs:F1} ms/step, without copies (global-rollback) {rollbackA.StepMs:F1} and " +
                                  $"{rollbackB.StepMs:F1} ms/step (ABBA, steps {steps / 4}..{steps - 1}): {(exactA.StepMs + exactB.StepMs) / (rollbackA.StepMs + rollbackB.StepMs):F4}×");
            }
            finally { foreach (var o in outcomes) o.Dispose(); }
            Directory.Delete(root, recursive: true);
            return 0;
        }
        catch
        {
            Log.Error("bench-recovery --node-loss failed; the runs' logs stay in {Dir}", root);
            throw;
        }
    }

    /// <summary>One cluster run: the timed interval, the step the kill came before (from the end of the step before it: under
    /// expert-exact that is the step retried, the kill included; a rollback rewrites the earlier step's row, so not there),
    /// the mean step after the first commit, its final commit's state, and its coordinator's log.</summary>
    private sealed record Outcome(double IntervalMs, double KilledStepMs, double StepMs, RecoveryBenchCommand.State State, string Log) : IDisposable
    {
        /// <summary>What the coordinator logged about the recovery: exact (with its own interval), a fallback, a rollback.</summary>
        public string Recovery()
        {
            var exact = Regex.Matches(Log, @"(expert-\d+) recovered exactly from its failure in step (\d+): its in-memory copy of the step's start, (\d+) ms");
            var fallback = Regex.Match(Log, @"Falling back to global-rollback: (.*)");
            var rollback = Regex.Match(Log, @"restored commit (\d+), replaying (\d+) steps \((\d+) ms\)");
            return string.Join("; ", new[]
            {
                exact.Count > 0 ? $"expert-exact recovered {string.Join(", ", exact.Select(m => m.Groups[1].Value))} in step {exact[0].Groups[2].Value} " +
                                  $"({exact[0].Groups[3].Value} ms from detection to the retried step's end)" : null,
                fallback.Success ? $"fell back: {fallback.Groups[1].Value.Trim()}" : null,
                rollback.Success ? $"rolled back to commit {rollback.Groups[1].Value}, replaying {rollback.Groups[2].Value} steps ({rollback.Groups[3].Value} ms from detection to the restore)" : null,
            }.OfType<string>().DefaultIfEmpty("no recovery logged"));
        }

        public void Dispose() => State.Dispose();
    }
}
