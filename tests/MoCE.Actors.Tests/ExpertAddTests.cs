using Akka.Actor;
using MoCE.Actors.Messages;
using MoCE.Core.Checkpoints;
using MoCE.Core.Tests;

namespace MoCE.Actors.Tests;

/// <summary>`moce experts add` in one process: an expert added at a step boundary trains from there; a run stopped
/// after the add and resumed equals the uninterrupted one bit for bit (the journal and the commit carry the added
/// expert and its weights); and a failure right after the add rolls back to the grown commit, not before it.</summary>
public class ExpertAddTests(MoceFixture fx) : IClassFixture<MoceFixture>
{
    private static readonly Core.Config.MoeConfig Moe = MoceFixture.Moe with { Layers = [0, 1] };
    private static readonly TimeSpan Bound = TimeSpan.FromMinutes(3);
    private static AddExperts AddOneAt20 => new(-1, 1, "", AtStep: 20);

    /// <summary>The uninterrupted run with one expert added at step 20: its answer, its routing and its final weights.</summary>
    private (ExpertsAddedReply reply, ActorRun run, Dictionary<string, TorchSharp.torch.Tensor> weights) Baseline()
    {
        var run = new ActorRun(fx, Moe, Tiny.Train(steps: 40));
        Task<ExpertsAddedReply>? reply = null;
        Assert.Equal(40, run.Run(until: 40, checkpointEvery: 10, started: s => reply = s.Ask<ExpertsAddedReply>(AddOneAt20, Bound)).Step);
        Assert.True(reply!.Wait(Bound), "the add was never answered");
        return (reply.Result, run, run.CommittedWeights(40));
    }

    [Fact]
    public void An_added_expert_trains_from_its_step_and_a_restart_after_the_add_ends_bit_equal()
    {
        var (reply, a, expected) = Baseline();
        Assert.Equal("", reply.Error);
        Assert.Equal(20, reply.Step);
        Assert.Equal([3], reply.Added);
        // every MoE layer's gate has the new row, and expert 3 has its MLP in every MoE block
        foreach (var block in Moe.Layers)
        {
            Assert.Equal(4, expected[$"blocks.{block}.mlp.gate.w_gate.weight"].shape[0]);
            Assert.Contains($"blocks.{block}.mlp.experts.3.fc1.weight", expected.Keys);
        }
        // no token went to expert 3 before the add; it received tokens within 10 steps after it
        Assert.DoesNotContain(a.Routing.Where(kv => kv.Key < 20).SelectMany(kv => kv.Value), e => e.Expert == 3 && e.Tokens > 0);
        Assert.Contains(a.Routing.Where(kv => kv.Key is >= 20 and < 30).SelectMany(kv => kv.Value), e => e.Expert == 3 && e.Tokens > 0);
        // it started as a copy of its source, and they trained apart
        int source = reply.Sources[0];
        Assert.NotEqual(0.0, (expected["blocks.1.mlp.experts.3.fc1.weight"] - expected[$"blocks.1.mlp.experts.{source}.fc1.weight"]).abs().max().item<float>());

        // stopped after the add (a commit at the stop), then started again: the journal gives E = 4, the commit the weights
        var b = new ActorRun(fx, Moe, Tiny.Train(steps: 40));
        using var cts = new CancellationTokenSource();
        var stopped = b.Run(until: 40, checkpointEvery: 10, afterStep: s => { if (s == 26) cts.Cancel(); }, ct: cts.Token, started: s => s.Tell(AddOneAt20));
        Assert.InRange(stopped.Step, 27, 39);
        var resumed = new ActorRun(fx, Moe, Tiny.Train(steps: 40)) { RunDir = b.RunDir, RunId = b.RunId };
        Assert.Equal(40, resumed.Run(until: 40, checkpointEvery: 10).Step);
        Assert.Equal(stopped.Step, resumed.Losses.Keys.First());                  // it resumed at the stop's commit, with 4 experts
        Assert.Contains(resumed.Routing.SelectMany(kv => kv.Value), e => e.Expert == 3);
        Assert.Equal(0.0, ActorRun.MaxAbsDiff(expected, resumed.CommittedWeights(40)));
    }

    [Theory]
    [InlineData("expert-3", ChaosPhase.Apply)]                                 // the added expert itself, after its update
    [InlineData("router", ChaosPhase.Entry)]                                   // the router with the grown gates
    public void A_failure_right_after_an_add_rolls_back_to_the_grown_commit_and_ends_bit_equal(string owner, ChaosPhase phase)
    {
        var (_, _, expected) = Baseline();
        var run = new ActorRun(fx, Moe, Tiny.Train(steps: 40));
        var chaos = new ChaosPlan().FailAt(owner, 20, phase: phase);
        var done = run.Run(until: 40, checkpointEvery: 10, chaos, started: s => s.Tell(AddOneAt20));
        Assert.Equal(40, done.Step);
        Assert.Single(chaos.Fired);
        var r = Assert.Single(done.Recoveries);
        Assert.Equal(20, r.RestoredStep);                                         // the add's own commit, with 4 experts
        Assert.Equal(0, r.StepsReplayed);
        Assert.Equal(0.0, ActorRun.MaxAbsDiff(expected, run.CommittedWeights(40)));
    }
}
