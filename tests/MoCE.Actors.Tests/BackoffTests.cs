using MoCE.Actors;
using MoCE.Core.Config;
using MoCE.Core.Tests;

namespace MoCE.Actors.Tests;

/// <summary>Failures that keep coming: each retry waits longer (backoff), and past max-failures the run stops with
/// an error that names the owner and the step, keeping its commits for a later resume.</summary>
public class BackoffTests(MoceFixture fx) : IClassFixture<MoceFixture>
{
    private static readonly MoeConfig Moe = MoceFixture.Moe with { Layers = [0, 1] };

    [Fact]
    public void A_repeating_failure_is_retried_with_growing_delays_and_the_run_still_equals_an_uninterrupted_one()
    {
        var train = Tiny.Train(steps: 40);
        var run = new ActorRun(fx, Moe, train);
        var chaos = new ChaosPlan().FailAt("expert-1", 23, times: 3);
        var backoff = new RestartBackoff(TimeSpan.FromMilliseconds(100), TimeSpan.FromSeconds(1), MaxFailures: 5);
        var done = run.Run(until: 40, checkpointEvery: 10, chaos, backoff: backoff);

        Assert.Equal(40, done.Step);
        Assert.Equal(3, chaos.Fired.Count);
        Assert.True(done.Recoveries.Count == 3, "recoveries (one per injected failure expected): " +   // a surplus names its cause
            string.Join("; ", done.Recoveries.Select(r => $"{r.Owner} at step {r.Step}: {r.Error}")));
        for (int i = 0; i < 3; i++)
        {
            var r = done.Recoveries[i];
            Assert.Equal(("expert-1", 23L, 20L), (r.Owner, r.Step, r.RestoredStep));
            Assert.True(r.DetectionToRecoveredMs >= 100 * (1 << i), $"recovery {i + 1} took {r.DetectionToRecoveredMs:F0} ms, backoff {100 * (1 << i)} ms");
        }
        Assert.True(ActorRun.MaxAbsDiff(run.Reference(out _), run.CommittedWeights(40)) <= 1e-5);
    }

    [Fact]
    public void A_failure_that_never_stops_ends_the_run_naming_it_and_a_later_run_resumes_from_the_last_commit()
    {
        var train = Tiny.Train(steps: 40);
        var run = new ActorRun(fx, Moe, train);
        var chaos = new ChaosPlan().FailAt("router", 23, times: 1000);
        var backoff = new RestartBackoff(TimeSpan.FromMilliseconds(50), TimeSpan.FromSeconds(1), MaxFailures: 3);

        var e = Assert.Throws<RunFailedException>(() => run.Run(until: 40, checkpointEvery: 10, chaos, backoff: backoff));
        Assert.Contains("router failed at step 23", e.Message);
        Assert.Contains("failure 3 in a row", e.Message);
        Assert.Contains("the last commit (20) is intact", e.Message);
        Assert.Equal(3, chaos.Fired.Count);                              // it stopped trying

        run.Losses.Clear();
        Assert.Equal(40, run.Run(until: 40, checkpointEvery: 10).Step);   // the cause is gone: resume
        Assert.Equal(20, run.Losses.Keys.First());
        Assert.True(ActorRun.MaxAbsDiff(run.Reference(out _), run.CommittedWeights(40)) <= 1e-5);
    }

    [Fact]
    public void An_owner_that_cannot_be_created_stops_the_run_with_its_error()
    {
        var run = new ActorRun(fx, Moe, Tiny.Train(steps: 10));
        var e = Assert.Throws<RunFailedException>(() => run.Run(until: 10, checkpointEvery: 5, new ChaosPlan().FailCreation("expert-2")));
        Assert.Contains("expert-2 stopped because it could not be created: chaos: expert-2 cannot be created", e.Message);
    }
}
