using MoCE.Core.Checkpoints;

namespace MoCE.Actors.Messages;

// The protocol every parameter owner (trainer, router, each expert) speaks. Each owner keeps its weights and its
// own AdamW; the global gradient norm is the sum of the owners' shares. Every message carries its step.

/// <summary>A message about one training step.</summary>
public interface IStepMessage { long Step { get; } }

// Generation: the attempt (of the step, or of the cut) the message belongs to. Generations grow within a supervisor
// and across its starts (Incarnation), so an expert, which outlives a supervisor on its host, ignores a message of an
// attempt older than the newest it has seen: one held back across a rollback or a supervisor's restart.

/// <summary>Query: this owner's Σ‖g‖² for step s, its share of the global gradient norm.</summary>
public sealed record GetSquaredGradNorm(long Step, int Generation = 0) : IStepMessage;
public sealed record SquaredGradNormResponse(long Step, string Owner, double Value) : IStepMessage;

/// <summary>Command: scale the gradients by the global clip coefficient, take one AdamW step with lr, zero the
/// gradients and free the step's autograd state. Step s is complete when every owner has acknowledged.</summary>
public sealed record Apply(long Step, double Lr, double ClipScale, int Generation = 0) : IStepMessage;
public sealed record StepApplied(long Step, string Owner) : IStepMessage;

/// <summary>Command: the owner's part of the cut after step s (s steps done). Two replies: <see cref="CheckpointTaken"/>
/// once its weights and optimizer state are copied into a buffer kept for the purpose (the only blocking work: the next
/// step may start), and <see cref="CheckpointWritten"/> once that copy is durable in the checkpoint store (written in
/// the background), with its content-addressed file. Written is not committed: the cut may still fail.</summary>
public sealed record Checkpoint(long Step, int Generation = 0) : IStepMessage;
public sealed record CheckpointTaken(long Step, int Generation, string Owner) : IStepMessage;
public sealed record CheckpointWritten(long Step, CheckpointRef Ref, int Generation = 0) : IStepMessage;
/// <summary>Notice from the supervisor: the cut after step s is journaled. An expert makes its part of it its own
/// snapshot, what it comes back to on its own under expert-local; a part of a cut that never committed never is.</summary>
public sealed record Committed(long Step) : IStepMessage;

/// <summary>Command: drop any in-flight step and load this checkpoint part (hash-verified).</summary>
public sealed record RestoreCheckpoint(long Step, CheckpointRef Ref, int Generation = 0) : IStepMessage;
public sealed record Restored(long Step, string Owner) : IStepMessage;

/// <summary>Command (a chaos schedule's fail-in-move): throw now, as a failing owner does; its supervisor restarts it and
/// the run recovers. Sent by the supervisor when a planned move reaches the phase the schedule names.</summary>
public sealed record Crash(long Step, string Reason) : IStepMessage;

/// <summary>Command: step s failed elsewhere; zero the gradients and drop the step's autograd state.</summary>
public sealed record AbortStep(long Step) : IStepMessage;
public sealed record StepAborted(long Step, string Owner) : IStepMessage;
