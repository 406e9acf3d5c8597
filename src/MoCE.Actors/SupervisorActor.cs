using System.Diagnostics;
using Akka.Actor;
using Akka.Actor.Internal;
using Akka.Event;
using Akka.Persistence;
using MoCE.Actors.Messages;
using MoCE.Core.Checkpoints;

namespace MoCE.Actors;

/// <summary>Callbacks for the host (metrics files, the commit export, progress). They run on the supervisor's thread
/// and must be quick. BeforeCommit runs after every owner wrote its part and before the commit is persisted:
/// whatever describes the steps up to the commit (metrics rows) must be durable by then.</summary>
public sealed record SupervisorHooks(Action<StepCompleted>? OnStep = null, Action<CheckpointCommitted>? OnCommit = null,
                                     Action<RecoveryRecord>? OnRecovery = null, Action<long>? BeforeCommit = null);

/// <summary>The run could not go on: failures kept coming (see <see cref="RestartBackoff"/>), an owner could not be
/// (re)created, or no commit verifies. The journal and the last commit are intact.</summary>
public sealed class RunFailedException(string message) : Exception(message);

/// <summary>The supervisor: owns the run. It creates the owners (trainer, router, experts) and the teacher as its children and
/// watches them, drives the step loop, takes a consistent checkpoint every N steps (every owner writes its part,
/// then <see cref="CheckpointCommitted"/> is persisted: only that makes a checkpoint count), and on an owner's
/// failure applies the recovery policy, with backoff when failures repeat. Its journal (SQLite by default) holds
/// commits and recoveries, never tensors, so a restarted process resumes from the last commit.</summary>
public sealed class SupervisorActor : ReceivePersistentActor, IWithTimers
{
    public ITimerScheduler Timers { get; set; } = null!;

    /// <summary>Command from the engine: train until step <c>Until</c> (exclusive); reply <see cref="RunFinished"/>.</summary>
    public sealed record Start(long Until);
    /// <summary>Command from the engine (Ctrl-C): commit a checkpoint at the current step and finish.</summary>
    public sealed record StopAndCommit;

    private sealed record CutDone(long Step, int Generation, CheckpointRef[] Refs);
    private sealed record RestoreDone(long Step, int Generation);
    private sealed record OperationFailed(int Generation, Exception Error);
    private sealed record OwnerFailed(string Owner, Exception Error);
    private sealed record RestoreAfterBackoff(int Generation);

    private readonly ActorContextSetup setup;
    private readonly SupervisorHooks hooks;
    private readonly long checkpointEvery;
    private readonly int keep;
    private readonly ILoggingAdapter log = Context.GetLogger();
    private readonly SupervisorState state;
    private readonly List<IActorRef> owners = [];
    private IActorRef trainer = ActorRefs.Nobody;
    private IActorRef? replyTo;
    private long step, end;
    private int generation;
    private bool recovering, stopRequested, waitingForExperts;
    private (string owner, string error, long step, Stopwatch clock)? failure;
    private RunFailedException? fatal;                  // a run that cannot go on
    private readonly Dictionary<string, Exception> stopCauses = [];
    // expert-local: experts recovering (no rows, no updates), those ready to rejoin, and what their downtime cost
    private readonly HashSet<int> down = [];
    private readonly Dictionary<int, long> rejoining = [];
    private readonly Dictionary<int, (long step, string error, Stopwatch clock, int rerouted)> outages = [];

    public override string PersistenceId { get; }

    public static Props Props(ActorContextSetup setup, SupervisorHooks hooks, long checkpointEvery, int keep) =>
        Akka.Actor.Props.Create(() => new SupervisorActor(setup, hooks, checkpointEvery, keep));

    public SupervisorActor(ActorContextSetup setup, SupervisorHooks hooks, long checkpointEvery, int keep)
    {
        this.setup = setup;
        this.hooks = hooks;
        this.checkpointEvery = checkpointEvery;
        this.keep = keep;
        PersistenceId = $"{setup.RunId}-supervisor";
        state = new SupervisorState(setup.Policy, setup.Backoff);

        Recover<CheckpointCommitted>(state.Apply);
        Recover<RecoveryRecord>(state.Apply);
        Command<Start>(HandleStart);
        Command<StepCompleted>(HandleStepCompleted);
        Command<CutDone>(HandleCutDone);
        Command<RestoreDone>(HandleRestoreDone);
        Command<OwnerFailed>(HandleOwnerFailed);
        Command<RestoreAfterBackoff>(m => { if (m.Generation == generation && fatal is null) Restore(); });
        Command<Terminated>(t => Fail($"{t.ActorRef.Path.Name} stopped" +
            (stopCauses.TryGetValue(t.ActorRef.Path.Name, out var c) ? $" because it could not be created: {c.GetBaseException().Message}" : "") +
            "; the run cannot go on without it"));
        Command<OperationFailed>(m => { if (m.Generation == generation) Self.Tell(new OwnerFailed("supervisor", m.Error)); });
        Command<StopAndCommit>(_ => stopRequested = true);
        Command<StepFailed>(HandleStepFailed);
        Command<ExpertRecovered>(m =>
        {
            if (!down.Contains(m.Expert)) return;
            rejoining[m.Expert] = m.Step;
            if (waitingForExperts) { waitingForExperts = false; Next(); }
        });
        Command<GetRunStatus>(m => Sender.Tell(new RunStatusResponse(step, state.LastCommit?.Step ?? -1, state.Recoveries)));
    }

    protected override void PreStart()
    {
        base.PreStart();
        var experts = Enumerable.Range(0, setup.Moe.Experts).Select(e => Context.ActorOf(ExpertActor.Props(setup, e), $"expert-{e}")).ToList();
        var router = Context.ActorOf(RouterActor.Props(setup, experts), RouterActor.Name);
        var teacher = setup.Teacher is null ? null : Context.ActorOf(TeacherActor.Props(setup), TeacherActor.Name);
        trainer = Context.ActorOf(TrainerActor.Props(setup, router, experts, teacher), TrainerActor.Name);
        owners.Add(trainer);
        owners.Add(router);
        owners.AddRange(experts);
        foreach (var child in owners.Append(teacher ?? ActorRefs.Nobody).Where(c => !c.IsNobody())) Context.Watch(child);
    }

    /// <summary>Every failed owner is restarted (a fresh instance) and the failure is handed to the policy. One that
    /// cannot even be created is stopped: its Terminated (the supervisor watches every child) ends the run.</summary>
    protected override SupervisorStrategy SupervisorStrategy() => new NamingStrategy(this);

    private sealed class NamingStrategy(SupervisorActor sup)
        : OneForOneStrategy(-1, -1, e => e is ActorInitializationException ? Directive.Stop : Directive.Restart)
    {
        public override void ProcessFailure(IActorContext context, bool restart, IActorRef child, Exception cause, ChildRestartStats stats, IReadOnlyCollection<ChildRestartStats> children)
        {
            if (restart) sup.Self.Tell(new OwnerFailed(child.Path.Name, cause));
            else sup.stopCauses[child.Path.Name] = cause;                            // runs on the supervisor's own thread
            base.ProcessFailure(context, restart, child, cause, stats, children);
        }
    }

    /// <summary>Ends the run with an error the engine rethrows. Nothing is lost: the last commit stays.</summary>
    private void Fail(string why, bool commitsUsable = true)
    {
        if (fatal is not null) return;
        var last = state.LastCommit?.Step;
        fatal = new RunFailedException($"{why}. Stopping; " + (!commitsUsable ? "see the warnings above for each commit's bad file"
            : last is null ? "nothing was committed yet" : $"the last commit ({last}) is intact: fix the cause and run again to resume from it") + ".");
        log.Error(fatal.Message);
        replyTo?.Tell(new Status.Failure(fatal));
    }

    private void HandleStart(Start m)
    {
        replyTo = Sender;
        if (fatal is not null) { replyTo.Tell(new Status.Failure(fatal)); return; }
        end = m.Until;
        if (state.LastCommit is null) Cut(0);                 // the initial state is commit 0: rollback always has a target
        else Restore();
    }

    private void Next()
    {
        if (fatal is not null) return;
        if (rejoining.Count > 0) { Rejoin(); return; }
        if (step >= end && down.Count > 0 && !stopRequested)
        {
            // the final commit must hold every expert's own state: wait for the recovering ones
            log.Info("All steps done; waiting for experts [{0}] to finish recovering before the final commit", string.Join(",", down));
            waitingForExperts = true;
            return;
        }
        if (stopRequested && state.LastCommit?.Step != step) { Cut(step); return; }
        if (step >= end || stopRequested) { replyTo?.Tell(new RunFinished(step, state.Recoveries)); return; }
        trainer.Tell(new TrainStep(step, generation, new HashSet<int>(down)));
    }

    /// <summary>expert-local: recovered experts take rows again from the next step; their recovery is recorded.</summary>
    private void Rejoin()
    {
        var records = rejoining.Select(kv =>
        {
            var o = outages[kv.Key];
            down.Remove(kv.Key);
            outages.Remove(kv.Key);
            return new RecoveryRecord(o.step, $"expert-{kv.Key}", "expert-local", o.error, kv.Value, 0, o.clock.Elapsed.TotalMilliseconds, o.rerouted, step - kv.Value);
        }).ToList();
        rejoining.Clear();
        PersistAll(records, r =>
        {
            state.Apply(r);
            hooks.OnRecovery?.Invoke(r);
            log.Warning("{0} is back from its snapshot of step {1} after {2:F0} ms: it missed {3} steps, {4} image routings went to the next-best expert",
                r.Owner, r.RestoredStep, r.DetectionToRecoveredMs, r.StepsMissed, r.ReroutedImages);
            if (r != records[^1]) return;
            if (step >= end) Cut(step);                 // the last commit was cut without them: cut again
            else Next();
        });
    }

    private void HandleStepFailed(StepFailed m)
    {
        // global-rollback: the failed owner's supervision drives the rollback, so there is nothing to do here.
        // expert-local: the failed expert is already marked down (its OwnerFailed is queued before the trainer's
        // abort can complete); retry the same step without it
        if (recovering || m.Step != step || setup.Policy != RecoveryPolicy.ExpertLocal) return;
        log.Warning("Step {0} failed ({1}); retrying it with experts [{2}] down", m.Step, m.Error, string.Join(",", down));
        Next();
    }

    private void HandleStepCompleted(StepCompleted m)
    {
        if (recovering || m.Step != step) return;        // a step from an abandoned attempt
        state.StepCompleted(m.Step);
        foreach (var e in down) outages[e] = outages[e] with { rerouted = outages[e].rerouted + m.ReroutedImages };
        hooks.OnStep?.Invoke(m);
        step = m.Step + 1;
        if (step % checkpointEvery == 0 || step == end) Cut(step);
        else Next();
    }

    /// <summary>A consistent cut after step s: every owner writes its file; then the commit is persisted.</summary>
    private void Cut(long s)
    {
        int g = generation;
        // an expert that is down (expert-local) is not in the cut: the commit carries its last committed part
        var absent = owners.Where(o => IsDown(o)).Select(o => state.LastCommit!.Manifest.Single(r => r.Owner == o.Path.Name)).ToArray();
        Task.WhenAll(owners.Where(o => !IsDown(o)).Select(o => o.Ask<CheckpointWritten>(new Checkpoint(s), setup.AskTimeout)))
            .PipeTo(Self, success: r => new CutDone(s, g, r.Select(w => w.Ref).Concat(absent).ToArray()), failure: e => new OperationFailed(g, e));
    }

    private bool IsDown(IActorRef owner) => SupervisorState.ExpertIndex(owner.Path.Name) is { } e && down.Contains(e);

    private void HandleCutDone(CutDone m)
    {
        if (m.Generation != generation || recovering) return;
        hooks.BeforeCommit?.Invoke(m.Step);
        Persist(new CheckpointCommitted(m.Step, m.Refs), e =>
        {
            state.Apply(e);
            // keep the last K commits' files (and never delete a file a kept commit names)
            if (state.Commits.Count > keep) setup.Store.DeleteAllExcept(state.KeptParts(keep));
            log.Info("Committed checkpoint {0} ({1} owners)", e.Step, e.Manifest.Count);
            hooks.OnCommit?.Invoke(e);
            step = e.Step;
            Next();
        });
    }

    private void HandleOwnerFailed(OwnerFailed m)
    {
        log.Warning("Owner {0} failed at step {1}: {2}", m.Owner, step, m.Error.Message);
        if (fatal is not null) return;
        switch (state.Decide(m.Owner, m.Error.Message, step, recovering))
        {
            case SupervisorState.StopRun stop:
                Fail(stop.Reason);
                return;
            case SupervisorState.TakeExpertDown d:
                // expert-local: only this expert goes back (to its own snapshot, on restart); training goes on without it
                if (down.Add(d.Expert)) outages[d.Expert] = (step, m.Error.Message, Stopwatch.StartNew(), 0);
                generation++;                           // the in-flight attempt's replies are stale; the trainer reports StepFailed
                return;
            case SupervisorState.RollBack r:
                failure ??= (m.Owner, m.Error.Message, step, Stopwatch.StartNew());
                generation++;                           // replies of the failed attempt are now stale
                recovering = true;
                // backoff: a failure that keeps coming back is retried ever more slowly (the restarted owners wait for Restore)
                if (r.Delay <= TimeSpan.Zero) { Restore(); return; }
                log.Info("Restoring in {0:F0} ms (failure {1} in a row)", r.Delay.TotalMilliseconds, state.FailuresInARow);
                Timers.StartSingleTimer("restore", new RestoreAfterBackoff(generation), r.Delay);
                return;
        }
    }

    /// <summary>global-rollback: every owner restores the newest commit whose files all verify (falling back past a
    /// corrupt or missing file, by name), and the run replays from there.</summary>
    private void Restore()
    {
        var target = state.RestoreTarget(setup.Store.Verify,
            (c, e) => log.Warning("Commit {0} is unusable, falling back to the previous one: {1}", c.Step, e.Message));
        if (target is null) { Fail($"no committed checkpoint of the {state.Commits.Count} in the journal verifies; cannot restore", commitsUsable: false); return; }
        int g = generation;
        var parts = target.Manifest.ToDictionary(r => r.Owner);
        Task.WhenAll(owners.Select(o => o.Ask<Restored>(new RestoreCheckpoint(target.Step, parts[o.Path.Name]), setup.AskTimeout)))
            .PipeTo(Self, success: _ => new RestoreDone(target.Step, g), failure: e => new OperationFailed(g, e));
    }

    private void HandleRestoreDone(RestoreDone m)
    {
        if (m.Generation != generation) return;
        recovering = false;
        step = m.Step;
        if (failure is { } f)
        {
            var record = new RecoveryRecord(f.step, f.owner, "global-rollback", f.error, m.Step, f.step - m.Step, f.clock.Elapsed.TotalMilliseconds, 0);
            failure = null;
            Persist(record, r =>
            {
                state.Apply(r);
                hooks.OnRecovery?.Invoke(r);
                log.Warning("Recovered from {0}'s failure at step {1}: restored commit {2}, replaying {3} steps ({4:F0} ms)",
                    r.Owner, r.Step, r.RestoredStep, r.StepsReplayed, r.DetectionToRecoveredMs);
                Next();
            });
        }
        else
        {
            log.Info("Resumed from committed checkpoint {0}", m.Step);
            Next();
        }
    }
}
