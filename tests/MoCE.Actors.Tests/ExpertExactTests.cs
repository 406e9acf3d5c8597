using MoCE.Actors;
using MoCE.Core.Tests;

namespace MoCE.Actors.Tests;

/// <summary>expert-exact under sparse routing (six experts, top-1: some expert gets no rows in the failing step): an
/// expert failing in its forward, its backward or its update goes back to its node's in-memory copy of the step's start,
/// only that step is retried (or its part replayed from its log), and the run ends bit for bit equal to the run without
/// the failure, with no other owner going back. A lost copy falls back to global-rollback and says so.</summary>
public class ExpertExactTests(ExpertExactTests.CleanRun fx) : IClassFixture<ExpertExactTests.CleanRun>
{
    private const long Steps = 30, Every = 10;
    private static readonly Core.Config.TrainConfig Train = Tiny.Train(steps: Steps);

    /// <summary>The sparse run without a failure, under global-rollback (no copies kept): what every run here must equal.</summary>
    public sealed class CleanRun : MoceFixture
    {
        public readonly Lazy<ActorRun> Run;

        public CleanRun() => Run = new(() =>
        {
            var r = new ActorRun(this, SparseBaseline.Sparse, Train);
            Assert.Equal(Steps, r.Run(until: Steps, checkpointEvery: Every).Step);
            return r;
        });
    }

    private Lazy<ActorRun> clean => fx.Run;

    /// <summary>The first step after commit 10 (so a rollback would replay steps) where some expert has no rows in
    /// some block, and an expert that has rows there in exactly one of the two blocks (so its log is partial).</summary>
    private (string victim, long step) Victim()
    {
        foreach (var (step, routing) in clean.Value.Routing.Where(kv => kv.Key > Every && kv.Key < 2 * Every))
        {
            if (!SparseBaseline.Idle(routing).Any()) continue;
            var once = routing.Where(r => r.Tokens > 0).GroupBy(r => r.Expert).Where(g => g.Count() == 1).Select(g => g.Key).ToList();
            if (once.Count > 0) return ($"expert-{once[0]}", step);
        }
        throw new Xunit.Sdk.XunitException("no step in 11..19 of the clean run has an idle expert and an expert with rows in one block only");
    }

    [Theory]
    [InlineData(ChaosPhase.Entry)]
    [InlineData(ChaosPhase.Backward)]
    [InlineData(ChaosPhase.Apply)]
    public void An_expert_failing_in_a_phase_of_a_step_recovers_from_its_copy_alone_and_the_run_is_bit_equal(ChaosPhase phase)
    {
        var (victim, FailAt) = Victim();
        var run = new ActorRun(fx, SparseBaseline.Sparse, Train);
        var chaos = new ChaosPlan().FailAt(victim, FailAt, phase: phase);
        var done = run.Run(until: Steps, checkpointEvery: Every, chaos, RecoveryPolicy.ExpertExact);

        Assert.Equal(Steps, done.Step);
        Assert.Equal([(victim, FailAt)], chaos.Fired);
        var r = Assert.Single(done.Recoveries);
        Assert.Equal((victim, "expert-exact", FailAt, FailAt, 0L, ""), (r.Owner, r.Policy, r.Step, r.RestoredStep, r.StepsReplayed, r.Fallback));
        // nothing went back: every step completed exactly once (a rollback would have run steps 10..12 again), and no
        // owner resumed from a commit
        Assert.Equal(Enumerable.Range(0, (int)Steps).Select(s => (long)s), run.AllLosses.Select(l => l.step));
        Assert.Empty(run.Resumes);
        Assert.Equal(clean.Value.Losses, run.Losses);
        Assert.Equal(clean.Value.GradNorms, run.GradNorms);
        Assert.Equal(0.0, ActorRun.MaxAbsDiff(clean.Value.CommittedWeights(Steps), run.CommittedWeights(Steps)));
        Assert.Equal(Steps, run.OptimizerSteps(victim, Steps));
    }

    /// <summary>With the copy lost, the restarted expert holds no state it could retry or replay from: in a backward the
    /// supervisor hears it has no copy and rolls back; in an update the expert also refuses the trainer's second ask
    /// rather than apply it to a state it does not have. Either way global-rollback takes over, the record says why, and
    /// the run is still exact.</summary>
    [Theory]
    [InlineData(ChaosPhase.Backward)]
    [InlineData(ChaosPhase.Apply)]
    public void A_failure_whose_copy_is_lost_falls_back_to_global_rollback_says_so_and_is_still_exact(ChaosPhase phase)
    {
        var (victim, FailAt) = Victim();
        var run = new ActorRun(fx, SparseBaseline.Sparse, Train);
        var chaos = new ChaosPlan().FailAt(victim, FailAt, phase: phase).LoseCopy(victim);
        var done = run.Run(until: Steps, checkpointEvery: Every, chaos, RecoveryPolicy.ExpertExact);

        Assert.Equal(Steps, done.Step);
        var r = Assert.Single(done.Recoveries);
        Assert.Equal(("global-rollback", FailAt, Every, FailAt - Every), (r.Policy, r.Step, r.RestoredStep, r.StepsReplayed));
        Assert.Contains(victim, r.Fallback);
        if (phase == ChaosPhase.Backward) Assert.Equal($"expert-exact: {victim} had no in-memory copy, not one of step {FailAt}", r.Fallback);
        Assert.Contains(chaos.Events, e => e.Kind == "lose-copy" && e.Owner == victim);
        Assert.Equal(0.0, ActorRun.MaxAbsDiff(clean.Value.CommittedWeights(Steps), run.CommittedWeights(Steps)));
    }
}
