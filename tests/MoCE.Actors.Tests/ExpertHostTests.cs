using Akka.Actor;
using MoCE.Actors.Messages;
using MoCE.Core.Checkpoints;
using MoCE.Core.Tests;

namespace MoCE.Actors.Tests;

/// <summary>The expert host: it hands back the expert it already runs (a new supervisor after a failover finds it),
/// but once told to stop it (a planned move), a request for the same expert waits for the old instance and gets a
/// new one, never the one that is stopping.</summary>
public class ExpertHostTests(MoceFixture fx) : IClassFixture<MoceFixture>
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    /// <summary>An owner's part of a cut: first taken (copied), then written (durable), both answered to the asker.</summary>
    private async Task<CheckpointRef> Cut(IActorRef owner, Checkpoint m)
    {
        var inbox = Inbox.Create(system!);
        inbox.Send(owner, m);
        var taken = Assert.IsType<CheckpointTaken>(await inbox.ReceiveAsync(Timeout));
        Assert.Equal((m.Step, m.Generation), (taken.Step, taken.Generation));
        var written = Assert.IsType<CheckpointWritten>(await inbox.ReceiveAsync(Timeout));
        Assert.Equal((m.Step, m.Generation, taken.Owner), (written.Step, written.Generation, written.Ref.Owner));
        return written.Ref;
    }

    private ActorSystem? system;

    /// <summary>An expert host in an actor system of its own (with this fault plan), and the spec of this fixture's experts.</summary>
    private async Task WithHost(Func<IActorRef, ExpertSpec, ActorContextSetup, Task> test, ChaosPlan? chaos = null)
    {
        var run = new ActorRun(fx, MoceFixture.Moe with { Layers = [0, 1] }, Tiny.Train(steps: 5));
        var setup = run.Setup();
        var initial = setup.Store.Save("initial", 0, new Dictionary<string, string> { ["kind"] = "initial-experts" },
            setup.Initial.Where(kv => kv.Key.Contains(".mlp.experts.", StringComparison.Ordinal)).Select(kv => (kv.Key, kv.Value)));
        var spec = new ExpertSpec(setup.RunId, setup.Model, setup.Moe, setup.Train, setup.Store.Location, initial, RecoveryPolicy.GlobalRollback);
        var threads = new EngineThreads();
        using var system = this.system = ActorSystem.Create("host", ActorEngine.Config(run.RunDir));
        try
        {
            await test(system.ActorOf(ExpertHostActor.Props(new NodeResources(["cpu"], 1, chaos ?? ChaosPlan.None, threads)), ExpertHostActor.Name), spec, setup);
        }
        finally
        {
            await system.Terminate().WaitAsync(TimeSpan.FromSeconds(30));
            threads.JoinAll(TimeSpan.FromSeconds(30));
        }
    }

    [Fact]
    public Task A_stopped_expert_asked_for_again_is_a_new_instance_and_answers() => WithHost(async (host, spec, _) =>
    {
        var first = await host.Ask<ExpertHosted>(new HostExpert(0, 1, spec, false), Timeout);
        var again = await host.Ask<ExpertHosted>(new HostExpert(0, 1, spec, false), Timeout);
        Assert.Equal(first.Ref, again.Ref);                                  // failover: the running expert is handed back

        host.Tell(new StopExpert(1, spec.RunId, 1));
        var moved = await host.Ask<ExpertHosted>(new HostExpert(1, 1, spec, false), Timeout);
        Assert.NotEqual(first.Ref, moved.Ref);                               // not the instance that is stopping
        var norm = await moved.Ref.Ask<SquaredGradNormResponse>(new GetSquaredGradNorm(1), Timeout);
        Assert.Equal("expert-1", norm.Owner);
        Assert.Equal(0.0, norm.Value);                                       // fresh: no gradients yet
    });

    /// <summary>Fencing: an expert outlives its supervisor, so a message of an older attempt (a rollback's, or one from
    /// a supervisor that has since started again, whose generations are all lower) must not act on it. After a restore
    /// under generation G, an Apply of G − 1 is ignored: the next cut counts one optimizer step, not two.</summary>
    [Fact]
    public Task An_expert_ignores_an_apply_or_a_cut_of_an_older_generation() => WithHost(async (host, spec, setup) =>
    {
        var expert = (await host.Ask<ExpertHosted>(new HostExpert(0, 0, spec, false), Timeout)).Ref;
        const int G = 2 << 20;                                               // the second start of a supervisor
        var part = await Cut(expert, new Checkpoint(1, G));
        await expert.Ask<Restored>(new RestoreCheckpoint(1, part, G), Timeout);
        long Steps(CheckpointRef r) { using var c = CheckpointFile.Read(Path.Combine(setup.Store.Location, r.File)); return long.Parse(c["optimizer_steps"]); }
        long before = Steps(part);

        expert.Tell(new Apply(1, 1e-3, 1.0, G - 1));                          // held back from the first supervisor
        await Assert.ThrowsAsync<AskTimeoutException>(() => expert.Ask<CheckpointTaken>(new Checkpoint(2, G - 1), TimeSpan.FromSeconds(2)));
        await expert.Ask<StepApplied>(new Apply(1, 1e-3, 1.0, G), Timeout);  // the current attempt's
        var after = await Cut(expert, new Checkpoint(2, G));
        Assert.Equal(before + 1, Steps(after));
    });

    /// <summary>expert-exact, on the expert alone: its update of step 1 fails after it changed the weights. Restarted, it
    /// puts back its node's copy of step 1's start and, asked again, replays and applies the step once (the part it
    /// then writes counts one optimizer step, not two). With the copy lost it refuses the second ask instead of applying
    /// the update to a state it does not have.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public Task An_exact_expert_whose_update_failed_applies_it_once_from_its_copy_or_refuses_without_one(bool loseCopy)
    {
        var chaos = new ChaosPlan().FailAt("expert-0", 1, phase: ChaosPhase.Apply);
        if (loseCopy) chaos.LoseCopy("expert-0");
        return WithHost(async (host, spec, setup) =>
        {
            var expert = (await host.Ask<ExpertHosted>(new HostExpert(0, 0, spec with { Policy = RecoveryPolicy.ExpertExact }, false), Timeout)).Ref;
            long Steps(CheckpointRef r) { using var c = CheckpointFile.Read(Path.Combine(setup.Store.Location, r.File)); return long.Parse(c["optimizer_steps"]); }
            await expert.Ask<StepApplied>(new Apply(0, 1e-3, 1.0, 3), Timeout);      // a fresh instance's state would differ now
            long before = Steps(await Cut(expert, new Checkpoint(1, 3)));            // the start of step 1, also kept in memory
            var failed = await Assert.ThrowsAnyAsync<Exception>(() => expert.Ask<StepApplied>(new Apply(1, 1e-3, 1.0, 3), Timeout));
            Assert.Contains("fails at step 1", failed.Message);
            if (loseCopy)
            {
                var refused = await Assert.ThrowsAnyAsync<Exception>(() => expert.Ask<StepApplied>(new Apply(1, 1e-3, 1.0, 3), Timeout));
                Assert.Contains("restarted holding no in-memory copy: it cannot apply step 1", refused.Message);
                return;
            }
            Assert.Equal("expert-0", (await expert.Ask<StepApplied>(new Apply(1, 1e-3, 1.0, 3), Timeout)).Owner);
            Assert.Equal(before + 1, Steps(await Cut(expert, new Checkpoint(2, 3))));
        }, chaos);
    }

    /// <summary>KillNode ends the process only on a node started to obey a chaos schedule's kill (moce.node.chaos-kill);
    /// elsewhere it is refused with a warning naming the sender, and the host goes on answering. (Were it obeyed here,
    /// the test process itself would die: the test run fails loudly.)</summary>
    [Fact]
    public async Task A_kill_sent_to_a_host_that_does_not_accept_one_is_refused_and_logged()
    {
        var threads = new EngineThreads();
        using var system = ActorSystem.Create("host-kill", ActorEngine.AkkaConfig());
        var logs = new List<string>();
        var listener = system.ActorOf(Props.Create(() => new Listener(logs)));
        system.EventStream.Subscribe(listener, typeof(Akka.Event.Warning));
        try
        {
            var host = system.ActorOf(ExpertHostActor.Props(new NodeResources(["cpu"], 1, ChaosPlan.None, threads)), ExpertHostActor.Name);
            host.Tell(new KillNode(7));
            var info = await host.Ask<HostInfo>(new GetHostInfo(8), Timeout);
            Assert.Equal(8, info.Step);
            var end = DateTime.UtcNow + Timeout;
            while (DateTime.UtcNow < end && !Refused()) await Task.Delay(50);
            Assert.True(Refused(), "the refusal is logged: " + string.Join("\n", logs));
        }
        finally
        {
            await system.Terminate().WaitAsync(TimeSpan.FromSeconds(30));
            threads.JoinAll(TimeSpan.FromSeconds(30));
        }
        bool Refused() { lock (logs) return logs.Any(l => l.Contains("Refused KillNode (step 7)", StringComparison.Ordinal) && l.Contains("moce.node.chaos-kill", StringComparison.Ordinal)); }
    }

    private sealed class Listener : ReceiveActor
    {
        public Listener(List<string> logs) => Receive<Akka.Event.Warning>(e => { lock (logs) logs.Add(e.ToString()); });
    }
}
