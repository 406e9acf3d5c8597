using MoCE.Actors;
using MoCE.Actors.Messages;
using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Core.Tests;
using MoCE.Core.Training;
using static TorchSharp.torch;

namespace MoCE.Actors.Tests;

/// <summary>Runs the actor engine on the fixture's dense MAE and clustering, and the reference trainer for comparison.</summary>
public sealed class ActorRun(MoceFixture fx, MoeConfig moe, TrainConfig train)
{
    public string RunDir { get; init; } = Tiny.TempDir();
    /// <summary>The run's id, in every persistence id: unique, so that runs sharing a journal (PostgreSQL) never collide.</summary>
    public string RunId { get; init; } = "test-" + Guid.NewGuid().ToString("N")[..12];
    /// <summary>The actor system's configuration over hocon/akka.conf (e.g. the PostgreSQL journal); null: SQLite in RunDir.</summary>
    public Akka.Configuration.Config? Akka { get; init; }
    public SortedDictionary<long, double> Losses { get; } = [];
    /// <summary>Every completed step's global gradient norm (the last completion of each step).</summary>
    public SortedDictionary<long, double> GradNorms { get; } = [];
    /// <summary>Every completed step's loss in the order they completed, replays included (Losses keeps the last).</summary>
    public List<(long step, double loss)> AllLosses { get; } = [];
    /// <summary>Every journaled commit: its step, and how many steps had completed (replays included) when it was journaled.</summary>
    public List<(long step, int completedSteps)> Commits { get; } = [];
    /// <summary>The commits the supervisor resumed from (a start on an existing run, or a supervisor started again).</summary>
    public List<long> Resumes { get; } = [];
    /// <summary>How long an owner waits for another's reply: what detects a dropped message.</summary>
    public TimeSpan AskTimeout { get; init; } = TimeSpan.FromSeconds(30);
    public TimeSpan StragglerTimeout { get; init; } = TimeSpan.Zero;
    public int StragglerSitOut { get; init; } = 10;
    /// <summary>Each completed step's routing: tokens per (block, expert).</summary>
    public SortedDictionary<long, IReadOnlyList<ExpertStat>> Routing { get; } = [];

    /// <summary>The supervisor's check of control commands (what a TLS cluster sets); null: none.</summary>
    public Security.ControlAuthorizer? Control { get; init; }

    public ActorContextSetup Setup(ChaosPlan? chaos = null, RecoveryPolicy policy = RecoveryPolicy.GlobalRollback, RestartBackoff? backoff = null)
    {
        using var dense = fx.Dense();
        return ActorContextSetup.FromDense(RunId, fx.Model, moe, train, fx.Data, fx.Clustering.TrainIds, MoceFixture.Clusters,
            TrainerCheckpoint.ModelWeights(dense), new CheckpointStore(Path.Combine(RunDir, "checkpoints")), CPU, trainerThreads: 0) with
        {
            Chaos = chaos ?? ChaosPlan.None,
            Policy = policy,
            Backoff = backoff ?? RestartBackoff.Default,
            AskTimeout = AskTimeout,
            StragglerTimeout = StragglerTimeout,
            StragglerSitOut = StragglerSitOut,
            Control = Control,
        };
    }

    public RunFinished Run(long until, long checkpointEvery, ChaosPlan? chaos = null, RecoveryPolicy policy = RecoveryPolicy.GlobalRollback,
                           Action<long>? afterStep = null, CancellationToken ct = default, RestartBackoff? backoff = null,
                           Action<Akka.Actor.IActorRef>? started = null)
    {
        var setup = Setup(chaos, policy, backoff);
        return ActorEngine.Run(setup, RunDir, until, checkpointEvery, keep: 3, Hooks(afterStep), ct, Akka, Timeout, started);
    }

    /// <summary>The run as one coordinator node of a cluster (<see cref="ClusterNode.Run"/>) with spread placement: its
    /// experts live on the expert nodes of <paramref name="node"/>'s seeds. <paramref name="config"/>: the node's actor
    /// system configuration, with the shared journal. <paramref name="moved"/> hears of every completed planned move.</summary>
    public RunFinished RunCoordinator(NodeOptions node, Akka.Configuration.Config config, long until, long checkpointEvery, ChaosPlan chaos,
                                      Action<long>? afterStep, CancellationToken ct, Action<NodeStarted>? started, Action<PlannedMove, long>? moved)
    {
        var setup = Setup(chaos) with { SpreadOnJoin = true };
        var run = new CoordinatorRun(setup, Hooks(afterStep) with { OnMove = moved }, until, checkpointEvery, Keep: 3);
        return ClusterNode.Run(node, config, run, Serilog.Log.Logger, ct, started: started)!;
    }

    /// <summary>Records every step's loss and routing, and every resume.</summary>
    private SupervisorHooks Hooks(Action<long>? afterStep) => new(OnStep: m =>
    {
        lock (Losses) { Losses[m.Step] = m.Stats.Loss; GradNorms[m.Step] = m.Stats.GradNorm; AllLosses.Add((m.Step, m.Stats.Loss)); Routing[m.Step] = m.Routing; }
        afterStep?.Invoke(m.Step);
    }, OnResume: s => { lock (Resumes) Resumes.Add(s); }, OnCommit: c => { lock (Losses) Commits.Add((c.Step, AllLosses.Count)); });

    /// <summary>Every run in a test is bounded: a recovery that never ends fails the test instead of hanging CI.</summary>
    public TimeSpan Timeout { get; init; } = TimeSpan.FromMinutes(5);

    /// <summary>The reference trainer over the same configuration: its loss at every step and its final weights, by
    /// full state_dict name. What the engine must equal.</summary>
    public Dictionary<string, Tensor> Reference(out List<double> losses)
    {
        using var t = fx.Trainer(moe, train);
        losses = Enumerable.Range(0, (int)train.Steps).Select(_ => t.TrainStep().Loss).ToList();
        return t.Model.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
    }

    /// <summary>An owner's optimizer step count in the commit of <paramref name="step"/>.</summary>
    public long OptimizerSteps(string owner, long step)
    {
        var f = Directory.GetFiles(Path.Combine(RunDir, "checkpoints"), $"{owner}-*.ckpt")
            .Select(CheckpointFile.Read).ToList();
        try { return f.Where(c => long.Parse(c["step"]) == step).Select(c => long.Parse(c["optimizer_steps"])).Single(); }
        finally { foreach (var c in f) c.Dispose(); }
    }

    /// <summary>The newest commit's weights, by full state_dict name, read back from the owners' files.</summary>
    public Dictionary<string, Tensor> CommittedWeights(long step)
    {
        var store = new CheckpointStore(Path.Combine(RunDir, "checkpoints"));
        var files = Directory.GetFiles(store.Directory, $"*-{step:D8}-*.ckpt");
        var all = new Dictionary<string, Tensor>();
        foreach (var f in files)
        {
            using var c = CheckpointFile.Read(f);
            foreach (var (name, t) in TrainerCheckpoint.ModelWeights(c)) all[name] = t.clone();
        }
        return all;
    }

    public static double MaxAbsDiff(IReadOnlyDictionary<string, Tensor> a, IReadOnlyDictionary<string, Tensor> b)
    {
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        return a.Max(kv => (kv.Value - b[kv.Key]).abs().max().item<float>());
    }
}
