using MoCE.Core.Checkpoints;
using MoCE.Core.Training;

namespace MoCE.Actors.Messages;

// Supervisor ↔ trainer, the run's control plane, and the supervisor's persisted events.

/// <summary>Command to the trainer: run training step s end to end (forward, backward, clip, apply). Experts in
/// <c>Down</c> are recovering (expert-local): they get no rows, take no part in the norm and are not applied.</summary>
public sealed record TrainStep(long Step, int Generation, IReadOnlySet<int> Down) : IStepMessage;
/// <summary>Step s is applied by every available owner; ReroutedImages counts images sent to a next-best expert.</summary>
public sealed record StepCompleted(long Step, StepStats Stats, IReadOnlyList<ExpertStat> Routing, int ReroutedImages = 0) : IStepMessage;
/// <summary>Step s could not complete (another owner failed); every owner has dropped its partial state.</summary>
public sealed record StepFailed(long Step, int Generation, string Error) : IStepMessage;
/// <summary>A restarted expert restored its own last snapshot (expert-local) and can take rows again.</summary>
public sealed record ExpertRecovered(long Step, int Expert) : IStepMessage;
/// <summary>Expert → supervisor (through its host), under expert-exact: restarted, it put back its in-memory copy of the
/// start of step CopyStep (−1: it had none, and the run must fall back to global-rollback).</summary>
public sealed record ExpertCopyRestored(long Step, int Expert, long CopyStep) : IStepMessage;

/// <summary>Query: the run's committed step and recovery history.</summary>
public sealed record GetRunStatus(long Step) : IStepMessage;
public sealed record RunStatusResponse(long Step, long CommittedStep, IReadOnlyList<RecoveryRecord> Recoveries) : IStepMessage;

/// <summary>The run finished its configured steps (or stopped at a requested step) with a committed checkpoint.</summary>
/// <summary>The answer to a StopAndCommit that has a sender (`moce stop`): the run commits at the step boundary after Step
/// and ends. Error: why the stop was refused (then the run goes on).</summary>
public sealed record RunStopping(long Step, string Error) : IStepMessage;
public sealed record RunFinished(long Step, IReadOnlyList<RecoveryRecord> Recoveries) : IStepMessage;

// ---- persisted events (journal) -------------------------------------------------------------------------------

/// <summary>Event: a consistent checkpoint after step s, with every owner's file. Only this makes a checkpoint count.
/// Window: the tokens each expert got in the steps before it (at most checkpoint-every of them, since the last add), so
/// that an add after a resume splits the experts it would have split without the stop; null in a journal written
/// before this field existed (body version 1).</summary>
public sealed record CheckpointCommitted(long Step, IReadOnlyList<CheckpointRef> Manifest, IReadOnlyList<RoutedTokens>? Window = null) : IStepMessage;

/// <summary>The tokens routed to each expert (all MoE blocks together) in step s. Equal by value.</summary>
public sealed record RoutedTokens(long Step, IReadOnlyList<long> Tokens)
{
    public bool Equals(RoutedTokens? other) => other is not null && Step == other.Step && Tokens.SequenceEqual(other.Tokens);
    public override int GetHashCode() => HashCode.Combine(Step, Tokens.Count);
}

/// <summary>Event: the supervisor started, its Number-th start over this run's journal (persisted before it does
/// anything else). Its generations begin at Number × 2^20, above those of every earlier start, so an owner that
/// outlives a supervisor (an expert on its host) tells a message of the earlier one from a current one.</summary>
public sealed record Incarnation(long Step, int Number) : IStepMessage;

/// <summary>Event: an injected fault fired (a chaos schedule): at Step, on Owner, what Kind (fail, straggler, drop,
/// duplicate, delay, corrupt-checkpoint, journal-refuses, fail-creation) and what it did.</summary>
public sealed record ChaosFired(long Step, string Owner, string Kind, string Detail) : IStepMessage;

/// <summary>Event: experts were added at Step (`moce experts add`): expert From + i was split from Sources[i], and
/// Commit is the commit of Step with them (their parts, and the router's with its grown gates). One event, so the
/// journal never holds an add without its commit: a restart, or a rollback, finds the run with its added experts.
/// Node: where they were asked to run ("" for the placement policy).</summary>
public sealed record ExpertsAdded(long Step, int From, IReadOnlyList<int> Sources, string Node, CheckpointCommitted Commit) : IStepMessage;

/// <summary>Event: a failure was detected and recovered from. global-rollback: every owner went back to commit
/// RestoredStep and StepsReplayed steps were replayed. expert-local: the expert went back to its snapshot of
/// RestoredStep, training went on without it for StepsMissed steps, and ReroutedImages images went to their
/// next-best expert meanwhile. expert-exact: the expert put back its in-memory copy of the start of step RestoredStep
/// (= Step) and retried or replayed only that step; nothing else went back. Fallback: why a policy could not recover
/// the failure itself and global-rollback did ("" when it was not a fallback).</summary>
public sealed record RecoveryRecord(long Step, string Owner, string Policy, string Error, long RestoredStep, long StepsReplayed,
                                    double DetectionToRecoveredMs, int ReroutedImages, long StepsMissed = 0, string Fallback = "") : IStepMessage;
