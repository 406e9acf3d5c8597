using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using MoCE.Actors.Messages;
using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Core.Training;

namespace MoCE.Actors;

/// <summary>What a coordinator writes about a run, wherever the supervisor runs (moce train, moce node, tests): the
/// same metrics.csv, experts.csv and TensorBoard events as the reference engine (<see cref="StepLog"/>), commits.json (the commits the journal keeps, mirrored
/// before any older file is deleted, for the later phases), recoveries.json, and a progress line every log-every steps. A replayed step (after a rollback) is not
/// written twice, and rows past the step this process starts from are dropped first: after a resume or a coordinator
/// failover the files continue from the last commit.</summary>
public sealed class RunRecorder(string dir, TrainConfig train, CheckpointStore store, string label, Serilog.ILogger log, MoeConfig? moe = null) : IDisposable
{
    /// <summary>The cluster → expert gate g(c) of every MoE block at one commit: what `moce report` draws.</summary>
    public sealed record RoutingSnapshot(long Step, Dictionary<int, double[][]> Blocks);
    /// <summary>routing.json: the gate at the first commit this run recorded and at the latest.</summary>
    public sealed record RoutingRecord(RoutingSnapshot? Start, RoutingSnapshot? End);

    private StepLog? steps;
    private long lastRow = -1;
    private readonly Stopwatch window = Stopwatch.StartNew(), clock = Stopwatch.StartNew(), sinceLast = Stopwatch.StartNew();
    private double windowLoss;
    private int windowSteps;
    private readonly CommitLog commits = new(store);
    private readonly List<RecoveryRecord> recoveries = File.Exists(Path.Combine(dir, "recoveries.json"))
        ? JsonSerializer.Deserialize<List<RecoveryRecord>>(File.ReadAllText(Path.Combine(dir, "recoveries.json"))) ?? [] : [];

    private readonly List<ChaosFired> chaos = File.Exists(Path.Combine(dir, "chaos.json"))
        ? JsonSerializer.Deserialize<List<ChaosFired>>(File.ReadAllText(Path.Combine(dir, "chaos.json"))) ?? [] : [];

    public SupervisorHooks Hooks => new(OnStep, BeforeCommit: _ => steps?.Flush(), OnCommit: OnCommit, OnRecovery: OnRecovery, OnChaos: OnChaos,
        OnKept: kept => commits.Mirror(kept.Select(c => new CheckpointCommit(c.Step, c.Manifest, DateTime.UtcNow))));

    /// <summary>An injected fault fired: chaos.json (what `moce status` and `moce report` read), as it happens.</summary>
    private void OnChaos(ChaosFired c)
    {
        chaos.Add(c);
        WriteJson("chaos.json", chaos);
    }

    /// <summary>MoCE: g(c) = softmax(W·emb[c] / τ) per block from the commit's router part, into routing.json.</summary>
    private void RecordRouting(CheckpointCommitted c)
    {
        if (moe is not { Method: MoeMethod.Moce } || c.Manifest.FirstOrDefault(p => p.Owner == RouterActor.Name) is not { } part) return;
        var path = Path.Combine(dir, "routing.json");
        var record = File.Exists(path) ? JsonSerializer.Deserialize<RoutingRecord>(File.ReadAllText(path)) ?? new(null, null) : new RoutingRecord(null, null);
        using var content = store.Load(part);
        using var scope = TorchSharp.torch.NewDisposeScope();
        var blocks = new Dictionary<int, double[][]>();
        foreach (var b in moe.Layers)
        {
            var w = content.Tensors[$"model.blocks.{b}.mlp.gate.w_gate.weight"].to_type(TorchSharp.torch.ScalarType.Float64);
            var emb = content.Tensors[$"model.blocks.{b}.mlp.gate.emb"].to_type(TorchSharp.torch.ScalarType.Float64);
            var g = TorchSharp.torch.softmax(emb.matmul(w.t()) / moe.Temperature, 1);
            blocks[b] = Enumerable.Range(0, (int)g.shape[0]).Select(r => g[r].data<double>().ToArray()).ToArray();
        }
        var snapshot = new RoutingSnapshot(c.Step, blocks);
        WriteJson("routing.json", new RoutingRecord(record.Start ?? snapshot, snapshot));
    }

    private void WriteJson<T>(string name, T value)
    {
        var path = Path.Combine(dir, name);
        File.WriteAllText(path + ".tmp", JsonSerializer.Serialize(value, new JsonSerializerOptions { WriteIndented = true }));
        File.Move(path + ".tmp", path, overwrite: true);
    }

    private void OnStep(StepCompleted m)
    {
        if (m.Step <= lastRow) return;                          // a replayed step after a rollback: already written
        steps ??= new StepLog(dir, m.Step, withExperts: true);    // the first step of this process: rows ≥ it are stale
        lastRow = m.Step;
        windowLoss += m.Stats.Loss; windowSteps++;
        var seconds = sinceLast.Elapsed.TotalSeconds;
        sinceLast.Restart();
        NodeMetrics.Progress.Stepped(m.Stats, m.Routing, seconds);
        double ips = windowSteps * train.BatchSize / Math.Max(1e-9, window.Elapsed.TotalSeconds);
        steps.Step(m.Stats, ips, clock.Elapsed.TotalSeconds, m.Routing);
        long done = m.Step + 1;
        if (done % train.LogEvery != 0 && done != train.Steps) return;
        var eta = TimeSpan.FromSeconds((train.Steps - done) * window.Elapsed.TotalSeconds / windowSteps);
        log.Information("{Method} [actors] step {Step}/{Total} loss {Loss:F4} {Ips:F0} img/s ETA {Eta:hh\\:mm\\:ss}{Routing}",
            label, done, train.Steps, windowLoss / windowSteps, ips, eta, ExpertStat.Summary(m.Routing));
        window.Restart(); windowLoss = 0; windowSteps = 0;
    }

    private void OnCommit(CheckpointCommitted c)
    {
        RecordRouting(c);
        NodeMetrics.Progress.Committed(c.Step);
    }

    private void OnRecovery(RecoveryRecord r)
    {
        recoveries.Add(r);
        steps?.Recovery(r.Step, r.Policy, r.StepsReplayed);
        NodeMetrics.Recoveries.WithLabels(r.Policy).Inc();
        WriteJson("recoveries.json", recoveries);
    }

    public void Dispose()
    {
        steps?.Dispose();
    }
}
