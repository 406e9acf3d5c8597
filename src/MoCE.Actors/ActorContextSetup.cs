using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Training;
using TorchSharp;

namespace MoCE.Actors;

/// <summary>How the supervisor recovers from a failed owner.</summary>
public enum RecoveryPolicy
{
    /// <summary>Pause, restore every owner to the last committed checkpoint, replay: equals a run that never failed.</summary>
    GlobalRollback,
    /// <summary>Only the failed expert restores its own last snapshot; training goes on without it, the router
    /// reroutes its images to their next-best expert meanwhile. Faster, but approximate. A failed router or
    /// trainer still triggers global-rollback.</summary>
    ExpertLocal,
    /// <summary>Only the failed expert goes back, to its in-memory copy of the current step's start (kept by its node),
    /// and only that step is retried or its part replayed: as fast as expert-local, and exact like global-rollback.
    /// An expert lost with its node, or a failure outside a step's compute, falls back to global-rollback.</summary>
    ExpertExact,
}

/// <summary>How the supervisor paces recovery from failures that keep coming. After the n-th failure in a row (no
/// step completed past the failed one in between) it waits Min·2^(n−1), at most Max, before it restores; at the
/// MaxFailures-th it stops the run with the error instead of looping, and the last commit stays for a later resume.</summary>
public sealed record RestartBackoff(TimeSpan Min, TimeSpan Max, int MaxFailures)
{
    public static readonly RestartBackoff Default = new(TimeSpan.FromSeconds(0.2), TimeSpan.FromSeconds(30), 8);

    public TimeSpan Delay(int failuresInARow) =>
        TimeSpan.FromTicks((long)Math.Min(Max.Ticks, Min.Ticks * Math.Pow(2, Math.Max(0, failuresInARow - 1))));
}

/// <summary>Everything the actors of one run share, fixed for the run: configuration, data, the initial (upcycled)
/// weights, the checkpoint store, the device and the chaos plan. Read-only after construction.</summary>
public sealed record ActorContextSetup
{
    public const string PinnedDispatcher = "akka.actor.moce-pinned-dispatcher";

    public required string RunId { get; init; }
    public required MaeConfig Model { get; init; }
    public required MoeConfig Moe { get; init; }
    public required TrainConfig Train { get; init; }
    public required ImageDataset Data { get; init; }
    public required long[] ClusterIds { get; init; }
    public required int Clusters { get; init; }
    /// <summary>The full model's initial state (dense weights upcycled), by state_dict name; each owner copies its part.</summary>
    public required IReadOnlyDictionary<string, torch.Tensor> Initial { get; init; }
    /// <summary>The frozen dense teacher's weights (distillation), by state_dict name; null when distillation is off.</summary>
    public IReadOnlyDictionary<string, torch.Tensor>? Teacher { get; init; }
    public required ICheckpointStore Store { get; init; }
    public required torch.Device Device { get; init; }
    public ChaosPlan Chaos { get; init; } = ChaosPlan.None;
    public RecoveryPolicy Policy { get; init; } = RecoveryPolicy.GlobalRollback;
    /// <summary>moce.actors.peer-copies: under expert-exact in a cluster, each expert also sends its state after every update
    /// to a peer node, where it comes back exactly if its own node is lost. Off: no such traffic, and a lost node's
    /// experts fall back to global-rollback.</summary>
    public bool PeerCopies { get; init; } = true;
    public RestartBackoff Backoff { get; init; } = RestartBackoff.Default;
    /// <summary>moce.actors.placement = spread: a node that joins a training run gets experts moved to it (commit, then
    /// restore) until the nodes hold equal shares; fill (false): only new and lost experts go to the least-loaded node.</summary>
    public bool SpreadOnJoin { get; init; }
    /// <summary>moce.actors.split-margin: when an added expert splits a busy one, the margin by which each of the two
    /// leads on its half of the clusters, in gate logits divided by the temperature (<see cref="MoCE.Core.Model.ExpertSplit"/>).</summary>
    public double SplitMargin { get; init; } = 2.0;
    /// <summary>moce.actors.straggler-timeout: an expert that has not answered a block this long after the router sent
    /// it its rows is treated as down for <see cref="StragglerSitOut"/> steps: the step is retried without it, its rows
    /// going to their next-best expert. Zero: off (the step waits for it).</summary>
    public TimeSpan StragglerTimeout { get; init; } = TimeSpan.Zero;
    /// <summary>moce.actors.straggler-sit-out: the steps a timed-out straggler sits out before it takes rows again.</summary>
    public int StragglerSitOut { get; init; } = 10;
    /// <summary>Torch intra-op threads of the trainer's thread (the trunk's compute); 0 keeps torch's default.</summary>
    public int TrainerThreads { get; init; }
    /// <summary>Torch intra-op threads of the router's, each expert's and the teacher's thread; 0 leaves torch's
    /// setting alone. 1 (the default) gives them no OpenMP pool of their own: they compute side by side, and the
    /// trainer's pool is the process's only one (see <see cref="MoCE.Core.Runtime.ComputeThread"/>).</summary>
    public int OwnerThreads { get; init; } = 1;
    /// <summary>The setup of a run that starts from a dense MAE: the initial state is the dense weights upcycled
    /// exactly as the reference trainer does (<see cref="MoceTrainer.InitialModel"/>), and the frozen teacher is the
    /// dense model when distillation is on.</summary>
    public static ActorContextSetup FromDense(string runId, MaeConfig model, MoeConfig moe, TrainConfig train,
        ImageDataset data, long[] clusterIds, int clusters, IReadOnlyDictionary<string, torch.Tensor> dense, ICheckpointStore store,
        torch.Device device, int trainerThreads, int ownerThreads = 1, torch.Tensor? centroids = null)
    {
        using var initial = MoceTrainer.InitialModel(model, moe, clusters, dense, train.Seed, centroids);
        return new ActorContextSetup
        {
            RunId = runId, Model = model, Moe = moe, Train = train, Data = data,
            ClusterIds = clusterIds, Clusters = clusters,
            Initial = initial.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone()),
            Teacher = moe.LambdaDistill > 0 ? dense.ToDictionary(kv => kv.Key, kv => kv.Value.clone()) : null,
            Store = store, Device = device, TrainerThreads = trainerThreads, OwnerThreads = ownerThreads,
        };
    }

    /// <summary>Who may steer the run (drain, add, stop): with TLS, the cluster's trust and a signature window
    /// (<see cref="Security.ControlAuthorizer"/>); null (plain TCP, one process): whoever reaches the supervisor.</summary>
    public Security.ControlAuthorizer? Control { get; init; }

    /// <summary>How the supervisor interrupts the trainer's step when an expert is lost with its node.</summary>
    public StepCancellation Cancellation { get; init; } = new();

    /// <summary>The compute actors' threads, which the engine waits for when it stops.</summary>
    public EngineThreads Threads { get; init; } = new();

    /// <summary>How long a blocking wait for another owner's reply may take before the step fails.</summary>
    public TimeSpan AskTimeout { get; init; } = TimeSpan.FromSeconds(60);
}
