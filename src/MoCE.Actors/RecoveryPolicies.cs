using MoCE.Actors.Placement;
using MoCE.Actors.Messages;

namespace MoCE.Actors;

/// <summary>What happened to an owner: it failed (threw, or its host reported it), it was lost (its node went, or it
/// stopped unreported), or the router's straggler timeout gave up on it (it is alive, only slow).</summary>
public enum FaultKind { Failed, Lost, Slow }

/// <summary>Where in a step an owner failed: its forward, its backward, its update, its part of a cut, or elsewhere (a
/// failure its owner did not place, a restore, a lost node).</summary>
public enum StepPhase : byte { Other, Forward, Backward, Apply, Checkpoint }

/// <summary>What an expert throws when it fails in a phase of a step: the failure itself, with where it happened (its
/// host reports the phase with the failure).</summary>
public sealed class StepPhaseException(StepPhase phase, long step, Exception inner)
    : Exception($"{inner.Message} (in the {phase.ToString().ToLowerInvariant()} of step {step})", inner)
{
    public StepPhase Phase { get; } = phase;
    public long Step { get; } = step;
}

/// <summary>A fault the run must answer: the owners it hit (one, or every expert of a lost node), its kind, what was
/// said about it (for the log and the recovery record only: no decision reads it), and the step the run was at.</summary>
public sealed record Fault(IReadOnlyList<string> Owners, FaultKind Kind, string Error, long Step, StepPhase Phase = StepPhase.Other)
{
    public IReadOnlyList<int> Experts => Owners.Select(SupervisorState.ExpertIndex).OfType<int>().ToList();
    public bool OnlyExperts => Owners.Count > 0 && Experts.Count == Owners.Count;
}

/// <summary>Why an expert is out of the steps while the run goes on: it failed (expert-local: it comes back from its own
/// snapshot), or the router's straggler timeout gave up on it (it sits out, alive, and is in the cuts).</summary>
public enum OutageKind { Failed, Straggler }

/// <summary>An expert's outage: its kind, the step it began, the error, when it began (a <see cref="System.Diagnostics.Stopwatch"/>
/// timestamp), the image routings that went to another expert meanwhile, and (a straggler) the step it takes rows again.</summary>
public sealed record Outage(OutageKind Kind, long Step, string Error, long Since, int Rerouted = 0, long Until = long.MaxValue)
{
    /// <summary>The record of this outage's end: expert <paramref name="expert"/> takes rows again at step <paramref name="now"/>,
    /// after restoring its snapshot of step <paramref name="back"/> (a straggler restores nothing).</summary>
    public RecoveryRecord Ended(int expert, long back, long now)
    {
        double ms = System.Diagnostics.Stopwatch.GetElapsedTime(Since).TotalMilliseconds;
        return Kind == OutageKind.Straggler
            ? new RecoveryRecord(Step, OwnerRegistry.ExpertId(expert), "straggler-timeout", Error, Step, 0, ms, Rerouted, now - Step)
            : new RecoveryRecord(Step, OwnerRegistry.ExpertId(expert), "expert-local", Error, back, 0, ms, Rerouted, now - back);
    }
}

/// <summary>What the run does about a fault.</summary>
public abstract record Decision;
/// <summary>Failures keep coming: stop the run with this reason; the last commit stays for a resume.</summary>
public sealed record StopRun(string Reason) : Decision;
/// <summary>Every owner restores the newest verified commit after this backoff, then replays (global-rollback).
/// Fallback: why the configured policy could not recover it itself ("" when global-rollback is the policy's own answer).</summary>
public sealed record RollBack(TimeSpan Delay, string Fallback = "") : Decision;
/// <summary>These experts put back their in-memory copy of the start of the current step, and every owner retries the
/// step as it is (expert-exact, a failure in a forward or a backward: nobody has applied the step yet).</summary>
public sealed record RetryFromCopy(IReadOnlyList<int> Experts) : Decision;
/// <summary>These experts put back their copy and replay their part of the current step from their log; the trainer
/// asks their update again and the others wait (expert-exact, a failure in an update: the others have applied it).</summary>
public sealed record ReplayFromCopy(IReadOnlyList<int> Experts) : Decision;
/// <summary>The copies are back: retry the current step (every owner as it is).</summary>
public sealed record RetryStep : Decision;
/// <summary>Only these experts go back, each to its own snapshot; the step is retried without them (expert-local).</summary>
public sealed record TakeDown(IReadOnlyList<int> Experts) : Decision;
/// <summary>These slow experts sit out until step <c>Until</c> (exclusive); the step is retried without them (straggler-timeout).</summary>
public sealed record SitOut(IReadOnlyList<int> Experts, long Until) : Decision;
/// <summary>Nothing to do (a rollback or the end already covers it).</summary>
public sealed record Ignore : Decision;

/// <summary>What a policy knows besides the fault: whether a step is being trained (only then can an expert be left
/// behind; a failure in a cut, a restore or an operation rolls back), and how many failures came in a row.</summary>
public sealed record FaultContext(bool Training, int FailuresInARow);

/// <summary>A recovery policy: what it does about a fault, or null when the fault is not its to handle and the next
/// policy decides. The run asks straggler-timeout, then the configured policy, then global-rollback, which takes all.</summary>
public interface IRecoveryPolicy
{
    Decision? Decide(Fault fault, FaultContext context);
}

/// <summary>global-rollback: every fault rolls every owner back to the last verified commit, after a backoff that grows
/// with the failures in a row. Exact: the run equals one that never failed.</summary>
public sealed class GlobalRollbackPolicy(RestartBackoff backoff) : IRecoveryPolicy
{
    public Decision? Decide(Fault fault, FaultContext context) => new RollBack(backoff.Delay(context.FailuresInARow));
}

/// <summary>expert-local: a failed or lost expert, while a step is trained, goes back to its own snapshot and the run
/// goes on without it. A trainer, router or teacher failure is left to global-rollback.</summary>
public sealed class ExpertLocalPolicy : IRecoveryPolicy
{
    public Decision? Decide(Fault fault, FaultContext context) =>
        fault.Kind != FaultKind.Slow && fault.OnlyExperts && context.Training ? new TakeDown(fault.Experts) : null;
}

/// <summary>expert-exact: a failed expert, while a step is trained, puts back its in-memory copy of the step's start
/// (kept by its node) and only that step is retried (a forward or backward failed: no owner has applied it) or its
/// part replayed from its log (its update failed: the others have applied it). An expert lost with its node, while a
/// step is trained, comes back on the peer node that keeps a copy of its state, and the step is retried (a loss while
/// owners apply the step fails the trainer itself, which rolls back). Nothing else goes back, and the run equals one
/// without the failure bit for bit. A failure or loss outside a step's compute (a cut, a restore) is not a step's:
/// it falls back to global-rollback, and so does a lost node without peer copies (<paramref name="peerCopies"/> off) and a
/// recovery whose copy turns out missing or of another step; the record says why.</summary>
public sealed class ExpertExactPolicy(RestartBackoff backoff, bool peerCopies = true) : IRecoveryPolicy
{
    public Decision? Decide(Fault fault, FaultContext context)
    {
        if (fault.Kind == FaultKind.Slow || !fault.OnlyExperts) return null;
        string who = string.Join(",", fault.Owners);
        if (!context.Training)
            return new RollBack(backoff.Delay(context.FailuresInARow), $"expert-exact: {who} {(fault.Kind == FaultKind.Lost ? "lost" : "failed")} while no step was being trained");
        if (fault.Kind == FaultKind.Lost && !peerCopies)
            return new RollBack(backoff.Delay(context.FailuresInARow), $"expert-exact: {who} lost with its node, and peer copies are off (moce.actors.peer-copies)");
        return (fault.Kind, fault.Phase) switch
        {
            (FaultKind.Lost, _) or (_, StepPhase.Forward or StepPhase.Backward) => new RetryFromCopy(fault.Experts),
            (_, StepPhase.Apply) => new ReplayFromCopy(fault.Experts),
            _ => new RollBack(backoff.Delay(context.FailuresInARow), $"expert-exact: {who} failed outside a forward, backward or update"),
        };
    }
}

/// <summary>moce.actors.straggler-timeout: a slow expert sits out <paramref name="sitOut"/> steps, alive and in the cuts.</summary>
public sealed class StragglerTimeoutPolicy(long sitOut) : IRecoveryPolicy
{
    public Decision? Decide(Fault fault, FaultContext context) =>
        fault.Kind != FaultKind.Slow ? null : context.Training ? new SitOut(fault.Experts, fault.Step + sitOut) : new Ignore();
}
