using MoCE.Actors.Placement;
using MoCE.Actors.Messages;

namespace MoCE.Actors;

/// <summary>What happened to an owner: it failed (threw, or its host reported it), it was lost (its node went, or it
/// stopped unreported), or the router's straggler timeout gave up on it (it is alive, only slow).</summary>
public enum FaultKind { Failed, Lost, Slow }

/// <summary>A fault the run must answer: the owners it hit (one, or every expert of a lost node), its kind, what was
/// said about it (for the log and the recovery record only: no decision reads it), and the step the run was at.</summary>
public sealed record Fault(IReadOnlyList<string> Owners, FaultKind Kind, string Error, long Step)
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
/// <summary>Every owner restores the newest verified commit after this backoff, then replays (global-rollback).</summary>
public sealed record RollBack(TimeSpan Delay) : Decision;
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

/// <summary>moce.actors.straggler-timeout: a slow expert sits out <paramref name="sitOut"/> steps, alive and in the cuts.</summary>
public sealed class StragglerTimeoutPolicy(long sitOut) : IRecoveryPolicy
{
    public Decision? Decide(Fault fault, FaultContext context) =>
        fault.Kind != FaultKind.Slow ? null : context.Training ? new SitOut(fault.Experts, fault.Step + sitOut) : new Ignore();
}
