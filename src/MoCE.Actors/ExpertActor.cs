using Akka.Actor;
using Akka.Event;
using Akka.Persistence;
using MoCE.Actors.Messages;
using MoCE.Actors.Wire;
using MoCE.Core.Checkpoints;
using MoCE.Core.Model;
using MoCE.Core.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Actors;

/// <summary>What one expert is built from on its node: the run's spec (from the supervisor) and what the node
/// gives it (a device, threads, the process's fault plan, the node's in-memory copies). Recover: it was lost or
/// restarted, so under expert-local it comes back from its own last snapshot.</summary>
public sealed record ExpertSetup(ExpertSpec Spec, int Expert, ICheckpointStore Store, Device Device, int OwnerThreads, ChaosPlan Chaos,
                                 EngineThreads Threads, bool Recover, ExpertCopies Copies);

/// <summary>Expert e: owns its MLP in every MoE block, their AdamW state and its device. Persistent: after each
/// commit, and each restore, it snapshots its part {step, file, sha256} (never the weights), so on its own it can come
/// back to the last committed state it had (expert-local recovery). Under expert-exact it also keeps, in its node's
/// memory, its state at the start of the current step and the log of what it received in the step
/// (<see cref="ExpertCopy"/>): restarted, it puts that state back, and a failed update is replayed from the log. In a
/// cluster it also sends that state to a peer node's host after each update (<see cref="CopyTo"/>, <see cref="PeerCopy"/>),
/// where a new instance of it finds the copy if its own node is lost. Runs on its own thread.</summary>
public sealed class ExpertActor : ReceivePersistentActor, IWithTimers
{
    public ITimerScheduler Timers { get; set; } = null!;

    public sealed record ExpertSnapshot(long Step, CheckpointRef Ref) : IStepMessage;

    private readonly ExpertSetup setup;
    private readonly int expert;
    private readonly Dictionary<int, Mlp> mlps = [];
    private readonly ParameterOwner owner;
    private readonly Dictionary<int, (Tensor input, Tensor output)> inFlight = [];
    // the newest attempt (generation, step) seen, and what it already did by block: a forward or backward of an older
    // attempt (delayed past a step or a rollback) or a duplicate of this one's is ignored, so a gradient is never
    // accumulated twice. Generations grow within a supervisor; a restore sets the baseline of a new one.
    private (int generation, long step) attempt = (-1, -1);
    private readonly HashSet<(int block, bool backward)> done = [];
    private readonly ILoggingAdapter log = Context.GetLogger();
    private ExpertSnapshot? lastSnapshot;
    private ExpertSnapshot? written;                     // its part of the newest cut, until that cut commits
    private readonly ExpertSnapshot? birth;              // an added expert's first part (the commit of its add)
    private long tokens;                                 // token rows through this expert's forward since it started
    private bool restarted;
    private readonly bool exact;                         // expert-exact: the node keeps a copy of this expert's step start and log
    private long fromCopy = -1;                          // restarted: the step whose start it put back (−1: it had no copy)
    private bool resync;                                 // restarted under expert-exact: only that step (or a restore) may follow
    private IActorRef peer = ActorRefs.Nobody;           // expert-exact in a cluster: the expert host on another node that keeps a copy too

    public override string PersistenceId { get; }

    public static Props Props(ExpertSetup setup) =>
        Akka.Actor.Props.Create(() => new ExpertActor(setup)).WithDispatcher(ActorContextSetup.PinnedDispatcher);

    public ExpertActor(ExpertSetup setup)
    {
        this.setup = setup;
        ComputeThread.UseThreads(setup.OwnerThreads);                            // this thread's OpenMP and MKL threads
        expert = setup.Expert;
        restarted = setup.Recover;
        setup.Threads.RegisterCurrent($"moce-expert-{expert}");
        setup.Chaos.CheckCreation(Name);
        var spec = setup.Spec;
        PersistenceId = $"{spec.RunId}-{Name}";
        var p = new Dictionary<string, TorchSharp.Modules.Parameter>();
        foreach (var b in spec.Moe.Layers)
        {
            var mlp = new Mlp(spec.Model.Dim, spec.Moe.SplitHidden((int)(spec.Model.Dim * spec.Model.MlpRatio)).routed);
            mlps[b] = mlp;
            foreach (var (n, param) in mlp.named_parameters()) p[$"blocks.{b}.mlp.experts.{expert}.{n}"] = param;
        }
        owner = new ParameterOwner(Name, p, spec.Train, setup.Store);
        if (spec.Initial.Owner == Name)                                           // added by a split: its part in the add's commit
        {
            birth = new ExpertSnapshot(spec.Initial.Step, spec.Initial);
            owner.Restore(spec.Initial);
        }
        else
            using (var initial = setup.Store.Load(spec.Initial))                  // the experts' upcycled weights, hash-verified
                owner.LoadInitial(initial.Tensors);
        foreach (var m in mlps.Values) m.to(setup.Device);
        exact = spec.Policy == RecoveryPolicy.ExpertExact;

        Recover<SnapshotOffer>(o => lastSnapshot = (ExpertSnapshot)o.Snapshot);
        Command<ExpertForward>(HandleForward);
        Command<ExpertBackward>(HandleBackward);
        Command<GetSquaredGradNorm>(m => { if (Current(m, m.Generation)) Sender.Tell(new SquaredGradNormResponse(m.Step, Name, owner.SquaredGradNorm())); });
        Command<Apply>(m => { if (Current(m, m.Generation)) HandleApply(m); });
        Command<Checkpoint>(m => { if (Current(m, m.Generation)) HandleCheckpoint(m); });
        Command<PartPersisted>(HandlePersisted);
        Command<RestoreCheckpoint>(HandleRestore);
        Command<MalformedFrame>(m => { var e = m.Failure(Sender); Sender.Tell(new Status.Failure(new InvalidDataException(e.Message))); throw e; });   // the step fails now
        Command<Committed>(m => { if (written?.Step == m.Step) Snapshot(written); });
        Command<RestoreOwnSnapshot>(_ => HandleRestoreOwnSnapshot());
        Command<CopyTo>(m =>
        {
            bool changed = !m.Host.Equals(peer);
            peer = m.Host;
            if (changed && Copy is { Step: >= 0 } c && !resync) ShipCopy(c);   // the new peer gets the current step's start now
        });
        Command<AbortStep>(m => { owner.Optimizer.ZeroGrad(); FreeStep(); Sender.Tell(new StepAborted(m.Step, Name)); });
        Command<SaveSnapshotSuccess>(_ => { });
        Command<SaveSnapshotFailure>(f => log.Warning("expert {0}: snapshot record not saved: {1}", expert, f.Cause.Message));
    }

    private string Name => $"expert-{expert}";

    protected override void PostRestart(Exception reason)
    {
        restarted = true;
        base.PostRestart(reason);
    }

    /// <summary>After a restart under expert-local, the expert restores its own last snapshot by itself and tells the
    /// supervisor it can take rows again.</summary>
    protected override void OnReplaySuccess()
    {
        lastSnapshot ??= birth;                                                  // an added expert's first snapshot is its birth
        if (restarted && setup.Spec.Policy == RecoveryPolicy.ExpertLocal && lastSnapshot is not null)
            Timers.StartSingleTimer("restore-own-snapshot", new RestoreOwnSnapshot(), setup.Chaos.RecoveryDelay(Name));
        if (restarted && exact) PutBackCopy();
    }

    /// <summary>expert-exact, restarted: the state of the current step's start goes back before any message is handled
    /// (a persistent actor stashes them until its recovery ends), and the supervisor hears which step it was.</summary>
    private void PutBackCopy()
    {
        if (setup.Chaos.LosesCopy(Name)) setup.Copies.Drop(setup.Spec.RunId, expert);   // as if its memory were lost
        var c = setup.Copies.For(setup.Spec.RunId, expert);
        resync = true;
        fromCopy = c.Step;
        if (c.Step >= 0)
        {
            owner.RestoreCopy(c);
            log.Info("{0} put back its in-memory copy of the start of step {1}", Name, c.Step);
        }
        else log.Warning("{0} has no in-memory copy to put back", Name);
        Context.Parent.Tell(new ExpertCopyRestored(c.Step, expert, c.Step));
    }

    private ExpertCopy? Copy => exact ? setup.Copies.For(setup.Spec.RunId, expert) : null;

    /// <summary>Keeps this state as the start of <paramref name="step"/> in the node's memory and, in a cluster, on the peer node.</summary>
    private void Keep(ExpertCopy c, long step)
    {
        owner.KeepCopy(c, step);
        ShipCopy(c);
    }

    /// <summary>Sends the copy to the peer node's host (before the update is acknowledged, so the copy is on its way before
    /// the step can complete). The message gets tensors of its own: the kept buffers are overwritten at the next update.</summary>
    private void ShipCopy(ExpertCopy c)
    {
        if (peer.IsNobody()) return;
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        using (no_grad())      // one copy each: a device tensor's cpu() is one already, a CPU tensor's would be itself
            peer.Tell(new PeerCopy(c.Step, setup.Spec.RunId, expert, c.OptimizerSteps,
                c.State.Select(kv => (kv.Key, (kv.Value.device_type == DeviceType.CPU ? kv.Value.clone() : kv.Value.cpu()).DetachFromDisposeScope())).ToList()));
        NodeMetrics.ExpertCopySeconds.WithLabels(Name).Inc(System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds);
    }

    private sealed record RestoreOwnSnapshot;

    private void HandleRestoreOwnSnapshot()
    {
        FreeStep();
        owner.Restore(lastSnapshot!.Ref);
        log.Info("expert {0} restored its own snapshot of step {1}", expert, lastSnapshot.Step);
        Context.Parent.Tell(new ExpertRecovered(lastSnapshot.Step, expert));
    }

    private void HandleForward(ExpertForward m)
    {
        try
        {
            if (!Fresh(m.Step, m.Generation, m.Block, backward: false)) { m.Input.Dispose(); return; }   // a stale or duplicate message's tensor is not touched
            m = m with { Input = m.Input.On(setup.Device) };
            Copy?.LogAttempt(m.Generation, m.Step);
            setup.Chaos.Check(Name, m.Step);
            var clock = System.Diagnostics.Stopwatch.StartNew();
            using var scope = NewDisposeScope();
            var input = m.Input.detach().requires_grad_(true);                      // a leaf: dL/dInput goes back
            tokens += input.shape[0] * input.shape[1];
            NodeMetrics.ExpertTokens.WithLabels(Name).Inc(input.shape[0] * input.shape[1]);
            var output = mlps[m.Block].forward(input);
            var reply = output.detach();
            if (Copy is { } c) c.LogForward(m.Block, m.Input);                        // the log keeps the rows (same storage)
            else m.Input.Dispose();
            if (inFlight.Remove(m.Block, out var old)) { old.input.Dispose(); old.output.Dispose(); }
            inFlight[m.Block] = (input.MoveToOuterDisposeScope(), output.MoveToOuterDisposeScope());
            Straggle(m.Step, clock);
            Sender.Tell(new ExpertOutput(m.Step, m.Generation, m.Block, expert, reply.MoveToOuterDisposeScope()));
        }
        catch (Exception e) { Sender.Tell(new Status.Failure(e)); throw new StepPhaseException(StepPhase.Forward, m.Step, e); }
    }

    private void HandleBackward(ExpertBackward m)
    {
        try
        {
            if (!Fresh(m.Step, m.Generation, m.Block, backward: true)) { m.GradOutput.Dispose(); return; }
            m = m with { GradOutput = m.GradOutput.On(setup.Device) };
            var clock = System.Diagnostics.Stopwatch.StartNew();
            using var scope = NewDisposeScope();
            var (input, output) = inFlight[m.Block];
            output.backward([m.GradOutput]);                                         // accumulates the parameter grads
            if (Copy is { } c) c.LogBackward(m.Block, m.GradOutput);
            else m.GradOutput.Dispose();
            setup.Chaos.Check(Name, m.Step, ChaosPhase.Backward);
            if (setup.Chaos.PoisonsGradient(Name, m.Step)) using (no_grad()) foreach (var p in owner.Parameters.Values) p.grad?.fill_(double.NaN);
            Straggle(m.Step, clock);
            Sender.Tell(new ExpertInputGrad(m.Step, m.Generation, m.Block, expert, input.grad!.detach().MoveToOuterDisposeScope()));
        }
        catch (Exception e) { Sender.Tell(new Status.Failure(e)); throw new StepPhaseException(StepPhase.Backward, m.Step, e); }
    }

    /// <summary>False (and logged) for a message of an attempt older than the newest this expert has seen: a sender of an
    /// abandoned attempt, or of a supervisor that has since started again, is not answered.</summary>
    private bool Current(IStepMessage m, int generation)
    {
        if (generation >= attempt.generation) return true;
        log.Warning("{0} ignores {1} of step {2}: generation {3} is older than {4}", Name, m.GetType().Name, m.Step, generation, attempt.generation);
        return false;
    }

    /// <summary>False for a message of an older attempt or a duplicate of this attempt's.</summary>
    private bool Fresh(long step, int generation, int block, bool backward)
    {
        var at = (generation, step);
        int c = at.CompareTo(attempt);
        if (c < 0) return false;
        if (c > 0)
        {
            // a new attempt: what an abandoned one left (an expert the trainer did not wait for: a straggler) goes
            if (at.generation != attempt.generation) { FreeStep(); owner.Optimizer.ZeroGrad(); }
            attempt = at;
            if (resync && step != fromCopy)                                      // the supervisor falls back before this; a guard against a silent error
                throw new InvalidOperationException($"{Name} restarted holding the start of step {fromCopy}: it cannot compute step {step}");
            resync = false;                                                      // it computes this attempt itself: nothing to replay
            fromCopy = -1;
            done.Clear();
        }
        return done.Add((block, backward));
    }

    /// <summary>A straggler (chaos schedule) really takes longer: its thread waits out the extra time after computing.
    /// This is the expert's own thread (pinned), not a shared one.</summary>
    private void Straggle(long step, System.Diagnostics.Stopwatch clock)
    {
        var extra = setup.Chaos.StragglerDelay(Name, step, clock.Elapsed);
        if (extra > TimeSpan.Zero) Thread.Sleep(extra);
    }

    private void HandleApply(Apply m)
    {
        try
        {
            if (resync)
            {
                if (fromCopy != m.Step) throw new InvalidOperationException($"{Name} restarted holding {(fromCopy < 0 ? "no in-memory copy" : $"the start of step {fromCopy}")}: it cannot apply step {m.Step}");
                ReplayFromLog(m.Generation, m.Step);
                resync = false;
            }
            fromCopy = -1;
            owner.Apply(m.Lr, m.ClipScale);
            setup.Chaos.Check(Name, m.Step, ChaosPhase.Apply);
            FreeStep();
            if (Copy is { } c) Keep(c, m.Step + 1);                               // the start of the next step
            Sender.Tell(new StepApplied(m.Step, Name));
        }
        catch (Exception e) { Sender.Tell(new Status.Failure(e)); throw new StepPhaseException(StepPhase.Apply, m.Step, e); }   // the trainer's wait ends now
    }

    /// <summary>expert-exact, restarted in step s's update: the state of s's start is back; the forward and backward
    /// of every block it had rows for run again on the logged rows and output gradients, in their order, which gives
    /// the gradients it had bit for bit (the update then uses the clip and lr the trainer sent). An empty log: it had
    /// no rows in the step. A log of another attempt cannot be replayed, and the trainer's step fails.</summary>
    private void ReplayFromLog(int generation, long step)
    {
        var c = Copy!;
        if (c.Logged != (generation, step) && (c.Forwards.Count > 0 || c.Backwards.Count > 0))
            throw new InvalidOperationException($"{Name} cannot replay step {step} (generation {generation}): its log holds generation {c.Logged.generation} of step {c.Logged.step}");
        using var scope = NewDisposeScope();
        var outputs = new Dictionary<int, Tensor>();
        foreach (var (block, x) in c.Forwards) outputs[block] = mlps[block].forward(x.detach().requires_grad_(true));
        foreach (var (block, g) in c.Backwards) outputs[block].backward([g]);
        log.Info("{0} replayed its part of step {1} from its log ({2} blocks)", Name, step, c.Forwards.Count);
    }

    /// <summary>Its part of a cut: copied now (the next step may start), written in the background.</summary>
    private void HandleCheckpoint(Checkpoint m)
    {
        try
        {
            if (Copy is { Step: var at } c && at != m.Step) Keep(c, m.Step);       // commit 0: no update came before
            CutParts.Begin(owner, m, new Dictionary<string, string> { ["kind"] = "expert", ["expert"] = expert.ToString() }, Self, Sender, setup.Chaos);
        }
        catch (Exception e) { throw new StepPhaseException(StepPhase.Checkpoint, m.Step, e); }   // the cut fails now
    }

    /// <summary>Its part is durable: it becomes the expert's snapshot once the cut commits. A failed write (or a chaos
    /// fault after it) fails the expert, and the cut is never committed.</summary>
    private void HandlePersisted(PartPersisted p)
    {
        try
        {
            if (CutParts.Persisted(owner, p) is not { } r) return;
            setup.Chaos.AfterCheckpoint(Name, p.Step, setup.Store, r);
            setup.Chaos.Check(Name, p.Step, ChaosPhase.Checkpoint);
            written = new ExpertSnapshot(p.Step, r);
            log.Info("{0} on {1} ({2}): checkpoint {3}, {4} tokens through its forward since it started", Name,
                ((ExtendedActorSystem)Context.System).Provider.DefaultAddress, setup.Device, p.Step, tokens);
            p.ReplyTo.Tell(new CheckpointWritten(p.Step, r, p.Generation));
        }
        catch (Exception e) when (e is not StepPhaseException) { throw new StepPhaseException(StepPhase.Checkpoint, p.Step, e); }
    }

    private void HandleRestore(RestoreCheckpoint m)
    {
        FreeStep();
        attempt = (m.Generation, -1);
        done.Clear();
        owner.Restore(m.Ref);
        (resync, fromCopy) = (false, -1);
        if (Copy is { } c) Keep(c, m.Step);
        Snapshot(new ExpertSnapshot(m.Step, m.Ref));                             // a part of a commit: what it now holds
        log.Info("{0} restored {1} (commit {2})", Name, m.Ref.File, m.Step);
        Sender.Tell(new Restored(m.Step, Name));
    }

    private void Snapshot(ExpertSnapshot s)
    {
        lastSnapshot = s;
        written = null;
        SaveSnapshot(s);
    }

    private void FreeStep()
    {
        foreach (var (input, output) in inFlight.Values) { input.Dispose(); output.Dispose(); }
        inFlight.Clear();
    }

    protected override void PostStop()
    {
        FreeStep();
        owner.Dispose();
        foreach (var m in mlps.Values) m.Dispose();
        base.PostStop();
    }
}
