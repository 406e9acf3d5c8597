using MoCE.Actors;
using MoCE.Core.Config;
using MoCE.Core.Tests;

namespace MoCE.Actors.Tests;

public class EquivalenceTests(MoceFixture fx) : IClassFixture<MoceFixture>
{
    private static readonly MoeConfig Moe = MoceFixture.Moe with { Layers = [0, 1] };

    [Fact]
    public void Actor_engine_equals_the_reference_for_50_steps()
    {
        var train = Tiny.Train(steps: 50);
        var run = new ActorRun(fx, Moe, train);
        var expected = run.Reference(out var losses);
        var done = run.Run(until: 50, checkpointEvery: 25);
        Assert.Equal(50, done.Step);
        Assert.Equal(Enumerable.Range(0, 50).Select(i => (long)i), run.Losses.Keys);
        for (int s = 0; s < 50; s++) Assert.True(Math.Abs(losses[s] - run.Losses[s]) <= 1e-5, $"step {s}: reference {losses[s]}, actors {run.Losses[s]}");
        double diff = ActorRun.MaxAbsDiff(expected, run.CommittedWeights(50));
        Assert.True(diff <= 1e-5, $"max |Δw| = {diff}");
    }

    /// <summary>TokenMoE with top-2: rows go to two experts each, so the router's fold order (plan order) matters,
    /// and the gate reads the tokens, so dL/dh has the gate's path too.</summary>
    [Fact]
    public void Actor_engine_equals_the_reference_for_token_moe_with_top_2()
    {
        var moe = Moe with { Method = MoeMethod.TokenMoe, TopK = 2, LambdaDistill = 0, LambdaBalance = 0.01 };
        var train = Tiny.Train(steps: 20);
        var run = new ActorRun(fx, moe, train);
        var expected = run.Reference(out var losses);
        Assert.Equal(20, run.Run(until: 20, checkpointEvery: 10).Step);
        for (int s = 0; s < 20; s++) Assert.True(Math.Abs(losses[s] - run.Losses[s]) <= 1e-5, $"step {s}: reference {losses[s]}, actors {run.Losses[s]}");
        double diff = ActorRun.MaxAbsDiff(expected, run.CommittedWeights(20));
        Assert.True(diff <= 1e-5, $"max |Δw| = {diff}");
    }

    /// <summary>A universal expert (moe.shared-fraction) is the trunk's: the trainer computes it beside the router's
    /// experts, and its dL/dh joins theirs at the cut.</summary>
    [Fact]
    public void Actor_engine_equals_the_reference_with_a_universal_expert()
    {
        var train = Tiny.Train(steps: 20);
        var run = new ActorRun(fx, Moe with { SharedFraction = 0.5 }, train);
        var expected = run.Reference(out var losses);
        Assert.Equal(20, run.Run(until: 20, checkpointEvery: 10).Step);
        for (int s = 0; s < 20; s++) Assert.True(Math.Abs(losses[s] - run.Losses[s]) <= 1e-5, $"step {s}: reference {losses[s]}, actors {run.Losses[s]}");
        var got = run.CommittedWeights(20);
        Assert.Contains("blocks.0.mlp.shared.fc1.weight", got.Keys);
        double diff = ActorRun.MaxAbsDiff(expected, got);
        Assert.True(diff <= 1e-5, $"max |Δw| = {diff}");
    }

    [Theory]
    [InlineData("expert-1")]
    [InlineData("router")]
    [InlineData("trainer")]
    [InlineData("teacher")]
    public void Global_rollback_after_a_failure_at_step_23_of_60_equals_an_uninterrupted_run(string owner)
    {
        var train = Tiny.Train(steps: 60);
        var run = new ActorRun(fx, Moe, train);
        var expected = run.Reference(out _);
        var chaos = new ChaosPlan().FailAt(owner, 23);
        var done = run.Run(until: 60, checkpointEvery: 10, chaos);
        Assert.Equal(60, done.Step);
        Assert.Single(chaos.Fired);
        var rec = Assert.Single(done.Recoveries);
        Assert.Equal(owner, rec.Owner);
        Assert.Equal(20, rec.RestoredStep);
        Assert.Equal(3, rec.StepsReplayed);
        double diff = ActorRun.MaxAbsDiff(expected, run.CommittedWeights(60));
        Assert.True(diff <= 1e-5, $"max |Δw| = {diff}");
    }
}

/// <summary>The quickstart's layout (MoE blocks 1 and 3 of 4, a dense block between them): the segment protocol
/// crosses a dense segment between two routings, forward and backward.</summary>
public class QuickstartLayoutEquivalenceTests(QuickstartLayoutFixture fx) : IClassFixture<QuickstartLayoutFixture>
{
    [Fact]
    public void Actor_engine_equals_the_reference_with_a_dense_block_between_two_moe_blocks()
    {
        var moe = MoceFixture.Moe with { Layers = [1, 3] };
        var train = Tiny.Train(steps: 30);
        var run = new ActorRun(fx, moe, train);
        var expected = run.Reference(out var losses);
        Assert.Equal(30, run.Run(until: 30, checkpointEvery: 10).Step);
        for (int s = 0; s < 30; s++) Assert.True(Math.Abs(losses[s] - run.Losses[s]) <= 1e-5, $"step {s}: reference {losses[s]}, actors {run.Losses[s]}");
        var got = run.CommittedWeights(30);
        Assert.Contains("blocks.2.mlp.fc1.weight", got.Keys);                       // the dense block between them
        double diff = ActorRun.MaxAbsDiff(expected, got);
        Assert.True(diff <= 1e-5, $"max |Δw| = {diff}");
    }
}
