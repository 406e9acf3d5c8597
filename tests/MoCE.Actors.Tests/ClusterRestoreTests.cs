using Akka.Actor;
using Akka.Cluster;
using Akka.Configuration;
using MoCE.Actors.Messages;
using MoCE.Actors.Placement;
using MoCE.Core.Tests;
using MoCE.Tests;
using Xunit.Abstractions;

namespace MoCE.Actors.Tests;

/// <summary>The seeded restore schedules of <see cref="SparseRestoreTests"/> on a cluster: each node an actor system of
/// its own on 127.0.0.1 (real remoting, the wire format, Akka.Cluster, the PostgreSQL journal), in this test process.
/// Expert nodes 1 and 2 host the experts; a coordinator node runs the supervisor, trainer, router and teacher, and a stop
/// replaces it with a fresh coordinator node (a new actor system, as a new process would be) that finds the experts where
/// they run. On top of a stop, a fault in a phase of a step and the add at step 17, every schedule has expert node 3 join
/// (spread placement moves experts onto it at a commit) and then drains expert node 1 or 2 (its experts move to the
/// others at a commit, and it leaves the cluster). Every step's loss, replays included, and the final weights must equal
/// the single process's uninterrupted run bit for bit. CI runs 4 schedules; <c>MOCE_CLUSTER_SCHEDULES=N</c> runs N
/// (docs/BENCHMARKS.md records 20).</summary>
public class ClusterRestoreTests(SparseBaseline fx, ITestOutputHelper output) : IClassFixture<SparseBaseline>
{
    public static IEnumerable<int> Seeds() =>
        Enumerable.Range(1, int.TryParse(Environment.GetEnvironmentVariable("MOCE_CLUSTER_SCHEDULES"), out var n) && n > 0 ? n : 4);

    public static TheoryData<int> Schedules() => new(Seeds());

    /// <summary>A schedule: an optional stop (before the join: a stop forgets a planned rebalance, and the next supervisor
    /// keeps a node that joined as a host without moving experts to it), the step from which node 3 joins, the step from
    /// which node <c>Drained</c> (1 or 2) is drained, and the fault: the first fault of the single-process schedule of the
    /// same seed, so that the kinds go round with the seed.
    /// The drain is asked for from its step on, once the rebalance onto node 3 is done, and again after a refusal.</summary>
    public sealed record Schedule(long? Stop, long JoinAt, long DrainAt, int Drained, SparseRestoreTests.Fault Fault);

    public static Schedule Draw(int seed, IReadOnlyDictionary<long, IReadOnlyList<Core.Training.ExpertStat>> routing)
    {
        var rng = new Random(1_000_003 * seed);
        long join = SparseBaseline.AddAt + 1 + rng.Next(3);            // after the add: an add under way refuses moves
        long drain = join + 1 + rng.Next(3);                            // refused while the rebalance is under way: asked again
        long? stop = rng.Next(4) == 0 ? null : 1 + rng.Next((int)join - 2);
        return new Schedule(stop, join, drain, 1 + rng.Next(2), SparseRestoreTests.Draw(seed, routing).faults[0]);
    }

    private static readonly TimeSpan Bound = TimeSpan.FromMinutes(4);

    /// <summary>An expert node: ClusterNode.Run on a thread of its own until cancelled or drained.</summary>
    private sealed class ExpertNode
    {
        public readonly int Port = ClusterNode.FreeLoopbackPort();
        public readonly CancellationTokenSource Stop = new();
        public ActorSystem? System;
        public Task<RunFinished?> Run = null!;
        public string Address => $"akka.tcp://{ClusterNode.SystemName}@127.0.0.1:{Port}";
        public string HostPort => $"127.0.0.1:{Port}";
    }

    private static Config Journal()
    {
        _ = TestPostgres.ConnectionString;                               // sets $MOCE_POSTGRES, which the engine reads
        return ActorEngine.Config("", ConfigurationFactory.ParseString(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "hocon", "persistence-postgres.conf"))));
    }

    private static ExpertNode StartExperts(Config journal, ChaosPlan chaos, IReadOnlyList<string> seeds, ExpertNode? node = null)
    {
        node ??= new ExpertNode();
        var o = new NodeOptions([NodeRoles.Experts], "127.0.0.1", node.Port, seeds.Count == 0 ? [node.HostPort] : seeds, ["cpu"], 1, 1, Insecure: true);
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        node.Run = Task.Factory.StartNew(() =>
        {
            try { return ClusterNode.Run(o, ClusterNode.Config(o, journal), null, Serilog.Log.Logger, node.Stop.Token, chaos, s => { node.System = s.System; ready.TrySetResult(); }); }
            finally { ready.TrySetResult(); }
        }, TaskCreationOptions.LongRunning);
        Assert.True(ready.Task.Wait(Bound), $"expert node {node.HostPort} did not start within {Bound.TotalSeconds:F0} s");
        return node;
    }

    /// <summary>The task's result within <see cref="Bound"/>, or a failure that says what did not happen.</summary>
    private static async Task<T> Within<T>(Task<T> task, Func<string> what)
    {
        try { return await task.WaitAsync(Bound); }
        catch (TimeoutException) { throw new TimeoutException($"{what()} within {Bound.TotalSeconds:F0} s"); }
    }

    private static bool Up(ActorSystem system, ExpertNode node) =>
        Cluster.Get(system).State.Members.Any(m => m.Address.ToString() == node.Address && m.Status == MemberStatus.Up);

    [Theory]
    [MemberData(nameof(Schedules))]
    public async Task A_schedule_with_a_join_and_a_drain_on_a_cluster_ends_bit_equal_to_the_run_that_never_stopped(int seed)
    {
        var baseline = fx.Run;
        var schedule = Draw(seed, baseline.Routing);
        output.WriteLine($"seed {seed}: {schedule}");
        var journal = Journal();
        var chaos = new ChaosPlan().FailAt(schedule.Fault.Owner, schedule.Fault.Step, phase: schedule.Fault.Phase);
        var dir = Tiny.TempDir();
        var id = "cluster-" + Guid.NewGuid().ToString("N")[..12];
        var x1 = StartExperts(journal, chaos, []);
        var x2 = StartExperts(journal, chaos, [x1.HostPort]);
        ExpertNode? x3 = null;
        var drained = schedule.Drained == 1 ? x1 : x2;
        var log = new List<string>();
        string Story() => string.Join("; ", log);
        var restorePoints = new List<(long step, string why)>();
        var moves = new List<(string what, IReadOnlyList<int> experts, long step)>();
        var adds = new List<ExpertsAddedReply>();
        var processes = new List<ActorRun>();
        Task<NodeDrained>? drain = null;                                   // the newest ask; asked again after a refusal
        NodeDrained? Drained() => drain is { IsCompletedSuccessfully: true, Result: { Error: "" } done } ? done : null;
        try
        {
            long at = 0;
            for (int process = 0; at < SparseBaseline.Steps; process++)
            {
                Assert.True(process <= 3, $"seed {seed}: more coordinators than a stop and a fault need: {Story()}");
                long? stopAt = schedule.Stop >= at ? schedule.Stop : null;
                using var cts = new CancellationTokenSource();
                var run = new ActorRun(fx, SparseBaseline.Sparse, SparseBaseline.Train) { RunDir = dir, RunId = id };
                ActorSystem? system = null;
                IActorRef? supervisor = null;
                Task<ExpertsAddedReply>? add = null;
                var live = new[] { x1, x2, x3 }.Where(x => x is not null && !x.Run.IsCompleted).Select(x => x!.HostPort).ToList();
                var o = new NodeOptions([NodeRoles.Coordinator], "127.0.0.1", ClusterNode.FreeLoopbackPort(), live, ["cpu"], MinExpertNodes: 2, OwnerThreads: 1, Insecure: true);
                void AfterStep(long s)
                {
                    if (s == stopAt) cts.Cancel();
                    if (s >= schedule.JoinAt && x3 is null)
                    {
                        // node 3 joins; the step boundary is held (bounded) until this coordinator sees it Up, so that the
                        // short run cannot end before the supervisor hears of it
                        x3 = StartExperts(journal, chaos, live);
                        var until = DateTime.UtcNow + Bound;
                        while (!Up(system!, x3) && DateTime.UtcNow < until) Thread.Sleep(20);
                        lock (log) log.Add(Up(system!, x3) ? $"node 3 up after step {s}" : $"node 3 not up within {Bound.TotalSeconds:F0} s after step {s}");
                    }
                    // the drain follows the rebalance (a drain planned first would leave node 3 nothing to rebalance)
                    bool rebalanced;
                    lock (moves) rebalanced = moves.Any(m => m.what.StartsWith("rebalance", StringComparison.Ordinal));
                    if (s >= schedule.DrainAt && rebalanced && Drained() is null && (drain is null || drain.IsCompleted))
                    {
                        if (drain is { IsCompletedSuccessfully: true, Result: { Error: not "" } refused }) lock (log) log.Add($"drain refused after step {s}: {refused.Error}");
                        drain = supervisor!.Ask<NodeDrained>(new DrainNode(s, drained.Address), Bound);
                    }
                }
                void Started(NodeStarted n)
                {
                    (system, supervisor) = (n.System, n.Supervisor);
                    if (at < SparseBaseline.AddAt) add = n.Supervisor!.Ask<ExpertsAddedReply>(SparseBaseline.Add, Bound);   // every coordinator that starts before the add asks for it
                }
                void Moved(PlannedMove m, long step) { lock (moves) moves.Add((m.What, m.Experts, step)); }
                var coordinator = Task.Factory.StartNew(() => run.RunCoordinator(o, ClusterNode.Config(o, journal), SparseBaseline.Steps, SparseBaseline.Every,
                                                                              chaos, AfterStep, cts.Token, Started, Moved), TaskCreationOptions.LongRunning);
                var done = await Within(coordinator, () => $"seed {seed}: coordinator {process} did not finish ({Story()})");
                if (add is not null && await Within(add, () => $"seed {seed}: the add was not answered") is var reply)
                {
                    if (reply.Error == "") adds.Add(reply);
                    else Assert.Contains("before the add", reply.Error);
                }
                foreach (var r in run.Resumes) restorePoints.Add((r, "resume"));
                foreach (var r in done.Recoveries.Where(r => r.Policy == "global-rollback" && r.Step >= at)) restorePoints.Add((r.RestoredStep, $"rollback after {r.Owner}"));
                lock (moves) foreach (var m in moves.Where(m => m.step >= at)) restorePoints.Add((m.step, m.what));
                processes.Add(run);
                lock (log) log.Add($"coordinator {process} from {at}: stop at {stopAt?.ToString() ?? "-"}, fired [{string.Join(",", chaos.Fired)}], moves [{string.Join(", ", moves.Select(m => $"{m.what} [{string.Join(",", m.experts)}] at {m.step}"))}], " +
                                  $"recoveries [{string.Join("; ", done.Recoveries.Where(r => r.Step >= at).Select(r => $"{r.Owner} at {r.Step}: {r.Error}"))}], ended at {done.Step}");
                foreach (var (step, loss) in run.AllLosses)
                    Assert.True(loss == baseline.Losses[step],
                        $"seed {seed}: step {step}'s loss {loss:R} differs from the uninterrupted run's {baseline.Losses[step]:R} ({Story()})");
                Assert.True(done.Step > at || chaos.Fired.Count > 0, $"seed {seed}: no progress ({Story()})");
                at = done.Step;
            }
            output.WriteLine(Story());

            // the add happened once, at its step, splitting what the single process split
            var added = Assert.Single(adds);
            Assert.Equal(SparseBaseline.AddAt, added.Step);
            Assert.Equal([6, 7], added.Added);
            Assert.Equal(fx.AddedFrom, added.Sources);
            // node 3 received experts at a commit (a rebalance), then the drained node's experts moved and it left
            Assert.Contains(moves, m => m.what.StartsWith("rebalance onto " + x3!.Address, StringComparison.Ordinal) && m.experts.Count > 0);
            var drainDone = Drained();
            Assert.True(drainDone is { Moved.Count: > 0 }, $"seed {seed}: node {schedule.Drained} was never drained ({Story()})");
            Assert.Contains(moves, m => m.what == $"drain of {drained.Address}" && m.experts.SequenceEqual(drainDone.Moved));
            Assert.Null(await Within(drained.Run, () => $"seed {seed}: the drained node did not leave the cluster"));
            Assert.Equal(0.0, ActorRun.MaxAbsDiff(fx.Final, new ActorRun(fx, SparseBaseline.Sparse, SparseBaseline.Train) { RunDir = dir, RunId = id }.CommittedWeights(SparseBaseline.Steps)));

            // the mechanism: every restore point (a resume, a rollback, a move) was followed by steps where some expert
            // had no rows, before the next commit
            Assert.True(chaos.Fired.Count == 0 || restorePoints.Any(p => p.why.StartsWith("rollback")), $"seed {seed}: a fault fired but nothing rolled back ({Story()})");
            var trained = processes.SelectMany(p => p.Routing).GroupBy(kv => kv.Key).ToDictionary(g => g.Key, g => g.First().Value);
            foreach (var (step, why) in restorePoints.Where(p => p.step < SparseBaseline.Steps))
                Assert.True(trained.Where(kv => kv.Key >= step && kv.Key < step + SparseBaseline.Every).Any(kv => SparseBaseline.Idle(kv.Value).Any()),
                    $"seed {seed}: after the {why} at {step}, every expert had rows in every step before the next commit ({Story()})");
        }
        finally
        {
            foreach (var x in new[] { x1, x2, x3 }.OfType<ExpertNode>()) x.Stop.Cancel();
            foreach (var x in new[] { x1, x2, x3 }.OfType<ExpertNode>())
            {
                try { await Within(x.Run, () => $"expert node {x.HostPort} did not stop"); }
                catch (Exception e) { output.WriteLine($"expert node {x.HostPort}: {e.Message}"); }
            }
        }
    }
}
