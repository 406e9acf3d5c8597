using MoCE.Actors;
using MoCE.Runs.Configuration;
using MoCE.Core.Checkpoints;
using MoCE.Core.Clustering;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Runtime;
using MoCE.Core.Training;
using Serilog;

namespace MoCE.Runs;

/// <summary>`moce train` on the actor engine, in this process or (as `moce node --roles coordinator`) as one
/// coordinator of a cluster: one actor per owner (trainer, router, each expert) under a persistent supervisor whose
/// journal holds the commits. <see cref="RunRecorder"/> writes the same metrics.csv and experts.csv as the
/// reference engine, commits.json and recoveries.json.</summary>
public static class ActorTrain
{
    public static void Execute(Session s, MoeConfig moe, string dir, CheckpointContent dense, string denseSha, ImageDataset data,
                               ClusteringResult clustering, CancellationToken ct, NodeOptions? node = null, ChaosPlan? chaos = null)
    {
        var train = s.Config.Train;
        var store = new CheckpointStore(Path.Combine(dir, "checkpoints"));
        // upcycling computes: on a thread of its own, so that this thread (which hosts the engine) holds no OpenMP pool
        var setup = ComputeThread.Run("actor-setup", s.Config.Threads, () => ActorContextSetup.FromDense(s.Run.ActorRunId($"{MoceConfig.MethodName(moe.Method)}-{denseSha[..16]}"),
            s.Config.Model, moe, train, data, clustering.TrainIds, clustering.K, TrainerCheckpoint.ModelWeights(dense), store, s.Device,
            s.Config.Threads, s.Config.OwnerThreads, clustering.Centroids)) with
        {
            AskTimeout = s.Config.AskTimeout,
            Backoff = s.Config.Backoff,
            Policy = s.Config.RecoveryPolicy,
            PeerCopies = s.Config.PeerCopies,
            SpreadOnJoin = s.Config.Placement == "spread",
            SplitMargin = s.Config.SplitMargin,
            StragglerTimeout = s.Config.StragglerTimeout,
            StragglerSitOut = s.Config.StragglerSitOut,
            Chaos = chaos ?? ChaosPlan.None,
        };
        using var metrics = node is null ? s.ServeMetrics() : null;             // a node serves them itself
        using var recorder = new RunRecorder(dir, train, store, MoceConfig.MethodName(moe.Method), Log.Logger, moe);
        var finished = node is null
            ? ActorEngine.Run(setup, dir, train.Steps, train.CheckpointEvery, train.KeepCheckpoints, recorder.Hooks, ct, akka: s.Config.Hocon)
            : ClusterNode.Run(node, ClusterNode.Config(node, ActorEngine.Config(dir, s.Config.Hocon)),
                new CoordinatorRun(setup, recorder.Hooks, train.Steps, train.CheckpointEvery, train.KeepCheckpoints), Log.Logger, ct)!;
        if (node is not null)
        {
            // what this coordinator sent and received, by message: the bytes the protocol costs (moce bench-cluster reads it)
            var traffic = MoCE.Actors.Wire.WireTraffic.Snapshot();
            File.WriteAllText(Path.Combine(dir, "wire.json"), System.Text.Json.JsonSerializer.Serialize(traffic, new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
            var plane = traffic.Where(kv => MoCE.Actors.Wire.WireTraffic.DataPlane.Contains(kv.Key)).ToList();
            Log.Information("Data plane on this coordinator: {Sent} B sent, {Received} B received in {Messages} messages",
                plane.Sum(kv => kv.Value.Sent), plane.Sum(kv => kv.Value.Received), plane.Sum(kv => kv.Value.SentMessages + kv.Value.ReceivedMessages));
        }
        ct.ThrowIfCancellationRequested();
        Log.Information("Actor engine finished at step {Step}; {Recoveries} recoveries in this run's history", finished.Step, finished.Recoveries.Count);
    }
}
