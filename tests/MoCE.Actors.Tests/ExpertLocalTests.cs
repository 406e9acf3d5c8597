using MoCE.Actors;
using MoCE.Core.Config;
using MoCE.Core.Tests;

namespace MoCE.Actors.Tests;

public class ExpertLocalTests(MoceFixture fx) : IClassFixture<MoceFixture>
{
    [Fact]
    public void Expert_local_keeps_training_reroutes_while_the_expert_is_down_and_reports_its_downtime()
    {
        var moe = MoceFixture.Moe with { Layers = [0, 1] };
        var train = Tiny.Train(steps: 60);
        var run = new ActorRun(fx, moe, train);
        // expert-1 throws at step 23 and takes a while to come back from its snapshot of step 20: at least 1.5 s, and at
        // least eight steps' time as measured in this run just before (a busy machine makes the steps slower, and the
        // downtime with them), so that training goes on for several steps meanwhile however loaded the cores are
        var chaos = new ChaosPlan().FailAt("expert-1", 23);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var at = new System.Collections.Concurrent.ConcurrentDictionary<long, TimeSpan>();
        var delay = TimeSpan.Zero;
        var done = run.Run(until: 60, checkpointEvery: 10, chaos, RecoveryPolicy.ExpertLocal, afterStep: s =>
        {
            at.TryAdd(s, clock.Elapsed);
            if (s != 22) return;
            delay = TimeSpan.FromSeconds(Math.Max(1.5, 8 * (at[22] - at[12]).TotalSeconds / 10));
            chaos.DelayRecovery("expert-1", delay);
        });

        Assert.Equal(60, done.Step);
        var r = Assert.Single(done.Recoveries);
        Assert.Equal(("expert-1", "expert-local", 23L, 20L), (r.Owner, r.Policy, r.Step, r.RestoredStep));
        Assert.Equal(0, r.StepsReplayed);                               // nobody else went back
        // the downtime runs from when the supervisor learns of the failure, which is after the expert's restart (and its
        // delay) began: by how much depends on how busy the supervisor's mailbox is (65 ms once, on a loaded machine).
        // A record that missed the delay (0, or one step's time) falls far below 0.8 × delay
        Assert.True(r.DetectionToRecoveredMs >= 0.8 * delay.TotalMilliseconds, $"downtime {r.DetectionToRecoveredMs} ms, delay {delay.TotalMilliseconds:F0} ms");
        Assert.True(r.StepsMissed > 3, $"missed {r.StepsMissed} steps in {r.DetectionToRecoveredMs:F0} ms");   // training went on while it was down
        Assert.True(r.ReroutedImages > 0, "its images went to the next-best expert meanwhile");
        Assert.Equal(60, run.Losses.Count);

        // its weights are its snapshot of step 20 plus the steps after it rejoined: 20 + (60 − rejoin) updates,
        // while every other owner took all 60
        long rejoin = r.RestoredStep + r.StepsMissed;
        Assert.Equal(20 + (60 - rejoin), run.OptimizerSteps("expert-1", 60));
        foreach (var other in new[] { "expert-0", "expert-2", "router", "trainer" })
            Assert.Equal(60, run.OptimizerSteps(other, 60));
    }
}
