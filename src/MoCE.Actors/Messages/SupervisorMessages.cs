using MoCE.Core.Checkpoints;
using MoCE.Core.Training;

namespace MoCE.Actors.Messages;

// Supervisor ↔ trainer, the run's control plane, and the supervisor's persisted events.

/// <summary>Command to the trainer: run training step s end to end (forward, backward, clip, apply).</summary>
public sealed record TrainStep(long Step, int Generation) : IStepMessage;
/// <summary>Step s is applied by every owner.</summary>
public sealed record StepCompleted(long Step, StepStats Stats, IReadOnlyList<ExpertStat> Routing) : IStepMessage;

/// <summary>Query: the run's committed step and recovery history.</summary>
public sealed record GetRunStatus(long Step) : IStepMessage;
public sealed record RunStatusResponse(long Step, long CommittedStep, IReadOnlyList<RecoveryRecord> Recoveries) : IStepMessage;

/// <summary>The run finished its configured steps (or stopped at a requested step) with a committed checkpoint.</summary>
public sealed record RunFinished(long Step, IReadOnlyList<RecoveryRecord> Recoveries) : IStepMessage;

// ---- persisted events (journal) -------------------------------------------------------------------------------

/// <summary>Event: a consistent checkpoint after step s, with every owner's file. Only this makes a checkpoint count.</summary>
public sealed record CheckpointCommitted(long Step, IReadOnlyList<CheckpointRef> Manifest) : IStepMessage;

/// <summary>Event: a failure was detected and recovered from.</summary>
public sealed record RecoveryRecord(long Step, string Owner, string Policy, string Error, long RestoredStep, long StepsReplayed,
                                    double DetectionToRecoveredMs, int ReroutedImages) : IStepMessage;
