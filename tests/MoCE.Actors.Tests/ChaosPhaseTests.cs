using MoCE.Core.Tests;

namespace MoCE.Actors.Tests;

/// <summary>Faults injected in the middle of a step, where a retry without a restore would be wrong: in an expert's
/// backward after its gradients accumulated, in its update after its weights changed, and in its part of a cut after
/// its file was written. Under global-rollback each run ends bit for bit equal to the same run without the fault, and
/// the recovery record shows the restore that made it so.</summary>
public class ChaosPhaseTests(MoceFixture fx) : IClassFixture<MoceFixture>
{
    private static readonly Core.Config.MoeConfig Moe = MoceFixture.Moe with { Layers = [0, 1] };

    [Theory]
    [InlineData(ChaosPhase.Backward, 23, 20)]
    [InlineData(ChaosPhase.Apply, 23, 20)]
    [InlineData(ChaosPhase.Checkpoint, 30, 20)]
    public void An_expert_failing_mid_step_rolls_back_and_ends_bit_equal_to_the_run_without_the_fault(ChaosPhase phase, long step, long restored)
    {
        var train = Tiny.Train(steps: 40);
        var clean = new ActorRun(fx, Moe, train);
        Assert.Equal(40, clean.Run(until: 40, checkpointEvery: 10).Step);
        var expected = clean.CommittedWeights(40);

        var run = new ActorRun(fx, Moe, train);
        var chaos = new ChaosPlan().FailAt("expert-1", step, phase: phase);
        var done = run.Run(until: 40, checkpointEvery: 10, chaos);
        Assert.Equal(40, done.Step);
        Assert.Single(chaos.Fired);
        var first = done.Recoveries[0];                                          // a failed cut can also fail the supervisor's ask
        Assert.Equal("global-rollback", first.Policy);
        Assert.Equal(restored, first.RestoredStep);
        Assert.Contains(phase.ToString().ToLowerInvariant(), string.Join(" ", done.Recoveries.Select(r => r.Error)));
        Assert.Equal(0.0, ActorRun.MaxAbsDiff(expected, run.CommittedWeights(40)));
    }

    /// <summary>Silent corruption: an expert's gradients become NaN after its backward. Applied, they would make every
    /// weight NaN and every later commit useless; instead the trainer finds the global norm not finite, names the
    /// owner whose share it was, and fails the step before anything is applied, and the rollback's replay is clean.</summary>
    [Fact]
    public void An_expert_whose_gradients_become_NaN_fails_the_step_before_it_is_applied_and_the_replay_is_exact()
    {
        var train = Tiny.Train(steps: 30);
        var clean = new ActorRun(fx, Moe, train);
        Assert.Equal(30, clean.Run(until: 30, checkpointEvery: 10).Step);

        var run = new ActorRun(fx, Moe, train);
        var chaos = new ChaosPlan().PoisonGradient("expert-1", 13);
        var done = run.Run(until: 30, checkpointEvery: 10, chaos);
        Assert.Equal([("expert-1", 13L)], chaos.Fired);
        var r = Assert.Single(done.Recoveries);
        Assert.Equal(("trainer", "global-rollback", 10L), (r.Owner, r.Policy, r.RestoredStep));
        Assert.Contains("step 13: the gradient norm is NaN (expert-1's share)", r.Error);
        Assert.All(run.AllLosses, l => Assert.True(double.IsFinite(l.loss), $"step {l.step}'s loss is {l.loss}"));
        Assert.Equal(0.0, ActorRun.MaxAbsDiff(clean.CommittedWeights(30), run.CommittedWeights(30)));
    }
}
