using MoCE.Actors;
using MoCE.Core.Tests;

namespace MoCE.Actors.Tests;

/// <summary>Commits are asynchronous: a cut blocks only while every owner copies its part, the parts are written in the
/// background while training goes on, and the commit is journaled once every part is durable. At most one is in flight,
/// and what needs a commit (the end of the run) waits for it.</summary>
public class AsyncCommitTests(MoceFixture fx) : IClassFixture<MoceFixture>
{
    private static readonly Core.Config.MoeConfig Moe = MoceFixture.Moe with { Layers = [0, 1] };
    private static readonly Core.Config.TrainConfig Train = Tiny.Train(steps: 30);

    /// <summary>A run of the test configuration with a commit every 10 steps, under <paramref name="chaos"/>.</summary>
    private ActorRun Run(ChaosPlan? chaos = null)
    {
        var run = new ActorRun(fx, Moe, Train);
        Assert.Equal(30, run.Run(until: 30, checkpointEvery: 10, chaos).Step);
        return run;
    }

    [Fact]
    public void Training_goes_on_while_a_commit_is_written_and_the_run_ends_bit_equal_to_one_whose_writes_were_quick()
    {
        var quick = Run();
        // the router's part of the cut after step 10 takes 3 s longer to write (a slow disk)
        var chaos = new ChaosPlan().SlowPersist("router", 10, TimeSpan.FromSeconds(3));
        var slow = Run(chaos);

        Assert.Contains(chaos.Events, e => e.Kind == "slow-persist" && e.Owner == "router" && e.Step == 10);
        var ten = slow.Commits.Single(c => c.step == 10);
        // steps after 10 completed before commit 10 was journaled: the write did not hold the steps up. Three seconds
        // is many tiny steps even on a loaded machine; a synchronous commit would have journaled it after 10 steps
        Assert.True(ten.completedSteps > 12, $"commit 10 was journaled after {ten.completedSteps} steps had completed");
        Assert.Equal([0L, 10, 20, 30], slow.Commits.Select(c => c.step));      // each commit once, in order: at most one in flight
        Assert.Equal(30, slow.Commits[^1].completedSteps);                      // the last one waited for: the run ended with it
        Assert.Equal(quick.Losses, slow.Losses);
        Assert.Equal(0.0, ActorRun.MaxAbsDiff(quick.CommittedWeights(30), slow.CommittedWeights(30)));
    }

    /// <summary>A failure while a commit is still being written: every part was copied at the step boundary, so the cut is
    /// a consistent state whatever fails after it, and its writes go on. The rollback waits for it to be journaled and
    /// restores it, replaying nothing, instead of abandoning it and replaying the ten steps since the commit before.</summary>
    [Fact]
    public void A_failure_while_a_commit_is_written_restores_that_commit_once_it_is_durable_and_the_run_is_exact()
    {
        var quick = Run();
        // the router's part of the cut after step 10 takes 3 s to write; expert-1 fails in the forward of the step right
        // after the cut, which starts as soon as every part is copied: long before that write ends, on any machine
        var run = new ActorRun(fx, Moe, Train);
        var chaos = new ChaosPlan().SlowPersist("router", 10, TimeSpan.FromSeconds(3)).FailAt("expert-1", 10);
        var done = run.Run(until: 30, checkpointEvery: 10, chaos);
        Assert.Equal(30, done.Step);
        Assert.Contains(chaos.Events, e => e.Kind == "slow-persist" && e.Owner == "router" && e.Step == 10);
        Assert.Equal([("expert-1", 10L)], chaos.Fired);

        var r = Assert.Single(done.Recoveries);
        Assert.Equal(("expert-1", "global-rollback", 10L, 10L, 0L), (r.Owner, r.Policy, r.Step, r.RestoredStep, r.StepsReplayed));
        // commit 10 was journaled once, after the failure, with no step completed since the cut: none ran while the
        // restore waited for it
        Assert.Equal([0L, 10, 20, 30], run.Commits.Select(c => c.step));
        Assert.Equal(10, run.Commits.Single(c => c.step == 10).completedSteps);
        Assert.Equal(quick.Losses, run.Losses);
        Assert.Equal(30, run.AllLosses.Count);                                  // nothing was replayed
        Assert.Equal(0.0, ActorRun.MaxAbsDiff(quick.CommittedWeights(30), run.CommittedWeights(30)));
    }
}
