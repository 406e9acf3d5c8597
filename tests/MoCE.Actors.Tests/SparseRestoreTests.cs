using Akka.Actor;
using MoCE.Core.Config;
using MoCE.Core.Tests;
using MoCE.Core.Training;
using static TorchSharp.torch;

namespace MoCE.Actors.Tests;

/// <summary>Six experts over four clusters, top-1: in most steps some expert gets no rows in some block. This is where
/// an update that depends on a process's history (a zeroed gradient kept by a long-lived owner, none in a fresh one)
/// shows: a restored run then drifts away from the run that never stopped.</summary>
public sealed class SparseBaseline : MoceFixture
{
    public static readonly MoeConfig Sparse = MoceFixture.Moe with { Experts = 6, Layers = [0, 1] };
    public const long Steps = 30, Every = 5;
    /// <summary>Every run adds two experts at step 17 (not a commit step), split from the busiest by the tokens of steps
    /// 12..16. The second source depends on the whole window (steps 15 and 16 alone pick another), so a process resumed
    /// or rolled back inside it must count it as the uninterrupted run did: the commits journal the window.</summary>
    public const long AddAt = 17;
    public static Messages.AddExperts Add => new(-1, 2, "", AtStep: AddAt);
    public static TrainConfig Train => Tiny.Train(steps: Steps);

    private readonly Lazy<ActorRun> run;
    /// <summary>The uninterrupted actor run: every step's loss, its routing, its final commit.</summary>
    public ActorRun Run => run.Value;
    /// <summary>The experts the uninterrupted run split at its add.</summary>
    public IReadOnlyList<int> AddedFrom { get; private set; } = [];
    public Dictionary<string, Tensor> Final => final.Value;
    private readonly Lazy<Dictionary<string, Tensor>> final;

    public SparseBaseline()
    {
        run = new(() =>
        {
            var r = new ActorRun(this, Sparse, Train);
            Task<Messages.ExpertsAddedReply>? reply = null;
            Assert.Equal(Steps, r.Run(until: Steps, checkpointEvery: Every, started: s => reply = s.Ask<Messages.ExpertsAddedReply>(Add, r.Timeout)).Step);
            var answer = Answer(reply!, r.Timeout, "the baseline");
            Assert.True(answer is { Error: "", Step: AddAt, Added: [6, 7] }, $"the baseline's add: {answer}");
            AddedFrom = answer.Sources;
            return r;
        });
        final = new(() => Run.CommittedWeights(Steps));
    }

    /// <summary>The answer to an add, within the bound.</summary>
    public static Messages.ExpertsAddedReply Answer(Task<Messages.ExpertsAddedReply> reply, TimeSpan bound, string who) =>
        reply.Wait(bound) ? reply.Result : throw new TimeoutException($"{who}: the add was not answered within {bound.TotalSeconds:F0} s");

    /// <summary>(block, expert) pairs with no rows in a step's routing.</summary>
    public static IEnumerable<(int block, int expert)> Idle(IReadOnlyList<ExpertStat> routing) =>
        routing.Where(r => r.Tokens == 0).Select(r => (r.Block, r.Expert));
}

/// <summary>The promise of every restore, checked where it is hardest: under sparse routing. Each schedule, drawn
/// from its seed, stops the run (a commit at the stop, then a fresh actor system resumes it, as a new process would)
/// and injects failures in each phase of a step (an expert failing on entry, after its backward, after its update, or
/// after writing its part of a cut; the trainer, the router or the teacher failing on entry), each recovered by a
/// global rollback; and every process that starts before step 17 asks for two experts to be added there. Every step's
/// loss, replays included, and the final weights must equal the uninterrupted run's bit for bit; and after every restore point some expert had no rows before the next commit (else the schedule would
/// not test what it is for). CI runs 20 schedules; <c>MOCE_RESTORE_SCHEDULES=200</c> runs more (docs/BENCHMARKS.md).</summary>
public class SparseRestoreTests(SparseBaseline fx) : IClassFixture<SparseBaseline>
{
    /// <summary>The schedules' seeds: 1..20, or 1..$MOCE_RESTORE_SCHEDULES.</summary>
    public static IEnumerable<int> Seeds() =>
        Enumerable.Range(1, int.TryParse(Environment.GetEnvironmentVariable("MOCE_RESTORE_SCHEDULES"), out var n) && n > 0 ? n : 20);

    public static TheoryData<int> Schedules() => new(Seeds());

    /// <summary>One fault of a schedule: which owner fails in which phase of which step.</summary>
    public sealed record Fault(string Owner, long Step, ChaosPhase Phase);

    private static readonly string[] Coordinator = ["trainer", "router", "teacher"];

    /// <summary>The schedule of a seed: one or two stops (before the last steps, where a stop can come too late to
    /// act), and one or two faults. An expert fails only in a step where
    /// it has rows (else its forward and backward never run); a checkpoint-phase fault falls on a cut.</summary>
    public static (List<long> stops, List<Fault> faults) Draw(int seed, IReadOnlyDictionary<long, IReadOnlyList<ExpertStat>> routing)
    {
        var rng = new Random(seed);
        const long steps = SparseBaseline.Steps, every = SparseBaseline.Every;
        var stops = Enumerable.Range(0, 1 + rng.Next(2)).Select(_ => 1 + (long)rng.Next((int)steps - 3)).Distinct().Order().ToList();
        var faults = new List<Fault>();
        for (int i = 0, count = 1 + rng.Next(2); i < count; i++)
        {
            // the first fault's kind goes round with the seed (so that any 7 schedules cover them all), the second's is drawn
            int kind = i == 0 ? seed % 7 : rng.Next(7);
            if (kind >= 4) { faults.Add(new Fault(Coordinator[kind - 4], 1 + rng.Next((int)steps - 1), ChaosPhase.Entry)); continue; }
            var phase = (ChaosPhase)kind;
            long step = phase == ChaosPhase.Checkpoint ? every * (1 + rng.Next((int)(steps / every) - 1)) : 1 + rng.Next((int)steps - 1);
            var busy = routing[phase == ChaosPhase.Checkpoint ? step - 1 : step].Where(r => r.Tokens > 0).Select(r => r.Expert).Distinct().Order().ToList();
            int expert = phase is ChaosPhase.Entry or ChaosPhase.Backward ? busy[rng.Next(busy.Count)] : rng.Next(SparseBaseline.Sparse.Experts);
            faults.Add(new Fault($"expert-{expert}", step, phase));
        }
        return (stops, faults);
    }

    [Theory]
    [MemberData(nameof(Schedules))]
    public void A_schedule_of_stops_and_failures_ends_bit_equal_to_the_run_that_never_stopped(int seed)
    {
        var baseline = fx.Run;
        var (stops, faults) = Draw(seed, baseline.Routing);
        var dir = Tiny.TempDir();
        var id = "sparse-" + Guid.NewGuid().ToString("N")[..12];
        var pending = new List<Fault>(faults);
        var restorePoints = new List<(long step, string why)>();
        var adds = new List<Messages.ExpertsAddedReply>();
        var processes = new List<ActorRun>();
        var log = new List<string>();
        long at = 0;
        for (int process = 0; at < SparseBaseline.Steps; process++)
        {
            Assert.True(process <= stops.Count + faults.Count + 1, $"seed {seed}: more processes than stops and faults: {string.Join("; ", log)}");
            long? stopAt = stops.Where(s => s >= at).Select(s => (long?)s).FirstOrDefault();
            var chaos = new ChaosPlan();
            foreach (var f in pending.Where(f => f.Step >= at)) chaos.FailAt(f.Owner, f.Step, phase: f.Phase);
            using var cts = new CancellationTokenSource();
            var run = new ActorRun(fx, SparseBaseline.Sparse, SparseBaseline.Train) { RunDir = dir, RunId = id };
            Task<Messages.ExpertsAddedReply>? add = null;                          // every process that starts before the add asks for it
            var done = run.Run(until: SparseBaseline.Steps, checkpointEvery: SparseBaseline.Every, chaos, ct: cts.Token,
                               afterStep: s => { if (s == stopAt) cts.Cancel(); },
                               started: at < SparseBaseline.AddAt ? s => add = s.Ask<Messages.ExpertsAddedReply>(SparseBaseline.Add, run.Timeout) : (Action<IActorRef>?)null);
            if (add is not null && SparseBaseline.Answer(add, run.Timeout, $"seed {seed}") is var reply)
            {
                if (reply.Error == "") adds.Add(reply);
                else Assert.Contains("before the add", reply.Error);                // this process stopped first
            }
            foreach (var (owner, step) in chaos.Fired) pending.RemoveAll(f => f.Owner == owner && f.Step == step);
            foreach (var r in run.Resumes) restorePoints.Add((r, "resume"));
            foreach (var r in done.Recoveries.Where(r => r.Policy == "global-rollback" && r.Step >= at)) restorePoints.Add((r.RestoredStep, $"rollback after {r.Owner}"));
            processes.Add(run);
            log.Add($"process {process} from {at}: stop at {stopAt?.ToString() ?? "-"}, fired [{string.Join(",", chaos.Fired)}], ended at {done.Step}");
            foreach (var (step, loss) in run.AllLosses)
                Assert.True(loss == baseline.Losses[step],
                    $"seed {seed}: step {step}'s loss {loss:R} differs from the uninterrupted run's {baseline.Losses[step]:R} ({string.Join("; ", log)})");
            // a stop honoured after a rollback commits where the rollback went, which can be where the process started
            Assert.True(done.Step > at || chaos.Fired.Count > 0, $"seed {seed}: no progress ({string.Join("; ", log)})");
            at = done.Step;
            if (process > 0) Assert.Contains(run.Resumes, r => r < SparseBaseline.Steps);
        }
        // the add happened once, at its step, splitting the experts the uninterrupted run split
        var added = Assert.Single(adds);
        Assert.Equal(SparseBaseline.AddAt, added.Step);
        Assert.Equal([6, 7], added.Added);
        Assert.Equal(fx.AddedFrom, added.Sources);
        Assert.Equal(0.0, ActorRun.MaxAbsDiff(fx.Final, new ActorRun(fx, SparseBaseline.Sparse, SparseBaseline.Train) { RunDir = dir, RunId = id }.CommittedWeights(SparseBaseline.Steps)));

        // the mechanism: the schedule restored (a resume after each stop, a rollback after each fault that fired), and
        // in the steps trained from each restore point to the next commit (by that process or, if it stopped, the next)
        // some expert had no rows
        int fired = faults.Count - pending.Count;
        // (faults that fire in one attempt are recovered by one rollback)
        Assert.True((fired == 0 || restorePoints.Any(p => p.why.StartsWith("rollback"))) && restorePoints.Count >= 1,
            $"seed {seed}: {fired} fault(s) fired, but the restore points are [{string.Join(", ", restorePoints)}] ({string.Join("; ", log)})");
        var trained = processes.SelectMany(p => p.Routing).GroupBy(kv => kv.Key).ToDictionary(g => g.Key, g => g.First().Value);
        foreach (var (step, why) in restorePoints)
        {
            var window = trained.Where(kv => kv.Key >= step && kv.Key < step + SparseBaseline.Every).ToList();
            Assert.True(window.Any(kv => SparseBaseline.Idle(kv.Value).Any()),
                $"seed {seed}: after the {why} at {step}, every expert had rows in every step before the next commit ({string.Join("; ", log)})");
        }
    }

    /// <summary>The schedules together cover every phase of an expert's step and every coordinator owner.</summary>
    [Fact]
    public void The_schedules_cover_every_phase_and_owner()
    {
        var faults = Seeds().SelectMany(seed => Draw(seed, fx.Run.Routing).faults).ToList();
        foreach (var phase in Enum.GetValues<ChaosPhase>()) Assert.Contains(faults, f => f.Phase == phase && f.Owner.StartsWith("expert-"));
        foreach (var owner in new[] { "trainer", "router", "teacher" }) Assert.Contains(faults, f => f.Owner == owner);
        // and the configuration is sparse: in most steps of the uninterrupted run some expert had no rows
        Assert.True(fx.Run.Routing.Count(kv => SparseBaseline.Idle(kv.Value).Any()) > SparseBaseline.Steps / 2);
    }
}
