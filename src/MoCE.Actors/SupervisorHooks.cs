using MoCE.Actors.Messages;

namespace MoCE.Actors;

/// <summary>Callbacks for the host (metrics files, the commit export, progress). They run on the supervisor's thread
/// and must be quick. BeforeCommit runs after every owner wrote its part and before the commit is persisted:
/// whatever describes the steps up to the commit (metrics rows) must be durable by then. OnMove: a planned move (a drain or
/// a rebalance) completed at that committed step. OnKept: the commits the journal keeps, once it is recovered and
/// after each commit, always before the files of older commits are deleted. OnCutTaken: every owner has copied its part
/// of the cut after that step, so the next step starts (the parts are written in the background).</summary>
public sealed record SupervisorHooks(Action<StepCompleted>? OnStep = null, Action<CheckpointCommitted>? OnCommit = null,
                                     Action<RecoveryRecord>? OnRecovery = null, Action<long>? BeforeCommit = null,
                                     Action<ChaosFired>? OnChaos = null, Action<long>? OnResume = null,
                                     Action<PlannedMove, long>? OnMove = null, Action<IReadOnlyList<CheckpointCommitted>>? OnKept = null,
                                     Action<long>? OnCutTaken = null);

/// <summary>The run could not go on: failures kept coming (see <see cref="RestartBackoff"/>), an owner could not be
/// (re)created, or no commit verifies. The journal and the last commit are intact.</summary>
public sealed class RunFailedException(string message) : Exception(message);
