using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using MoCE.Actors;
using MoCE.Actors.Messages;
using MoCE.Cli.Configuration;
using MoCE.Core.Checkpoints;
using MoCE.Core.Clustering;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Runtime;
using MoCE.Core.Training;
using Serilog;
using TorchSharp;

namespace MoCE.Cli.Commands;

/// <summary>`moce train` on the actor engine: one actor per owner (trainer, router, each expert) under a persistent
/// supervisor whose journal (SQLite in the phase directory) holds the commits. Writes the same metrics.csv and
/// experts.csv as the reference engine, commits.json (the journal's commits, for the later phases) and
/// recoveries.json.</summary>
public static class ActorTrain
{
    public static void Execute(Session s, MoeConfig moe, string dir, CheckpointContent dense, string denseSha, ImageDataset data,
                               ClusteringResult clustering, CancellationToken ct)
    {
        var train = s.Config.Train;
        var store = new CheckpointStore(Path.Combine(dir, "checkpoints"));
        // upcycling computes: on a thread of its own, so that this thread (which hosts the engine) holds no OpenMP pool
        var setup = ComputeThread.Run("actor-setup", s.Config.Threads, () => ActorContextSetup.FromDense(s.Run.ActorRunId($"{MoceConfig.MethodName(moe.Method)}-{denseSha[..16]}"),
            s.Config.Model, moe, train, s.Config.Data, data, clustering.TrainIds, clustering.K, TrainerCheckpoint.ModelWeights(dense), store, s.Device,
            s.Config.Threads, s.Config.OwnerThreads)) with
        {
            AskTimeout = s.Config.AskTimeout,
            Backoff = s.Config.Backoff,
            Policy = s.Config.RecoveryPolicy == "expert-local" ? RecoveryPolicy.ExpertLocal : RecoveryPolicy.GlobalRollback,
        };

        CsvLog? metrics = null, experts = null;
        long lastRow = -1;
        var window = Stopwatch.StartNew();
        var clock = Stopwatch.StartNew();
        double windowLoss = 0;
        int windowSteps = 0;
        var commits = new CommitLog(store);
        var recoveries = new List<RecoveryRecord>();
        try
        {
            var hooks = new SupervisorHooks(
                OnStep: m =>
                {
                    if (m.Step <= lastRow) return;                          // a replayed step after a rollback: already written
                    if (metrics is null)                                   // the first step of this process: rows ≥ it are stale
                    {
                        metrics = new CsvLog(Path.Combine(dir, "metrics.csv"), "step,loss,lr,grad_norm,images,images_per_s,wall_s", m.Step);
                        experts = new CsvLog(Path.Combine(dir, "experts.csv"), "step,block,expert,tokens,loss_share,gate_entropy", m.Step);
                    }
                    lastRow = m.Step;
                    windowLoss += m.Stats.Loss; windowSteps++;
                    double ips = windowSteps * train.BatchSize / Math.Max(1e-9, window.Elapsed.TotalSeconds);
                    var st = m.Stats;
                    metrics.Append(st.Step, string.Create(CultureInfo.InvariantCulture,
                        $"{st.Step},{st.Loss:R},{st.Lr:R},{st.GradNorm:R},{st.Images},{ips:F1},{clock.Elapsed.TotalSeconds:F3}"));
                    foreach (var e in m.Routing)
                        experts!.Append(st.Step, string.Create(CultureInfo.InvariantCulture,
                            $"{st.Step},{e.Block},{e.Expert},{e.Tokens},{e.LossShare:G6},{e.GateEntropy:G6}"));
                    long done = st.Step + 1;
                    if (done % train.LogEvery == 0 || done == train.Steps)
                    {
                        var eta = TimeSpan.FromSeconds((train.Steps - done) * window.Elapsed.TotalSeconds / windowSteps);
                        Log.Information("{Method} [actors] step {Step}/{Total} loss {Loss:F4} {Ips:F0} img/s ETA {Eta:hh\\:mm\\:ss}{Routing}",
                            MoceConfig.MethodName(moe.Method), done, train.Steps, windowLoss / windowSteps, ips, eta, TrainCommand.RoutingSummary(m.Routing));
                        window.Restart(); windowLoss = 0; windowSteps = 0;
                    }
                },
                BeforeCommit: _ => { metrics?.Flush(); experts?.Flush(); },
                OnCommit: c => commits.Commit(new CheckpointCommit(c.Step, c.Manifest, DateTime.UtcNow), train.KeepCheckpoints, deleteFiles: false),
                OnRecovery: r =>
                {
                    recoveries.Add(r);
                    File.WriteAllText(Path.Combine(dir, "recoveries.json"), JsonSerializer.Serialize(recoveries, new JsonSerializerOptions { WriteIndented = true }));
                });
            var finished = ActorEngine.Run(setup, dir, train.Steps, train.CheckpointEvery, train.KeepCheckpoints, hooks, ct, akka: s.Config.Hocon);
            ct.ThrowIfCancellationRequested();
            Log.Information("Actor engine finished at step {Step}; {Recoveries} recoveries in this run's history", finished.Step, finished.Recoveries.Count);
        }
        finally
        {
            metrics?.Dispose();
            experts?.Dispose();
        }
    }
}
