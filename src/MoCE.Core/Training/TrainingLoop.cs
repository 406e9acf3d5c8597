using System.Diagnostics;
using System.Globalization;
using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using Serilog;

namespace MoCE.Core.Training;

/// <summary>What one optimizer step reports.</summary>
public sealed record StepStats(long Step, double Loss, double Lr, double GradNorm, int Images);

/// <summary>A trainer the loop can drive: it runs step <see cref="NextStep"/>, writes its checkpoint parts and
/// restores from a commit. The reference trainers (dense, MoCE) implement it.</summary>
public interface ITrainer
{
    long NextStep { get; }
    StepStats TrainStep();
    IReadOnlyList<CheckpointRef> SaveCheckpoint(CheckpointStore store);
    void Restore(CheckpointCommit commit, CheckpointStore store);
}

/// <summary>A trainer with experts reports the routing of its last step (written to experts.csv).</summary>
public interface IRoutingMetrics
{
    IReadOnlyList<ExpertStat> LastRouting { get; }
}

/// <summary>Progress of a running phase, for the console.</summary>
public sealed record Progress(long Step, long TotalSteps, double Loss, double ImagesPerSecond, TimeSpan Eta);

/// <summary>Drives an <see cref="ITrainer"/> to <see cref="TrainConfig.Steps"/>: resumes from the newest valid
/// commit, commits a checkpoint every N steps, at the end and on cancellation, appends metrics.csv, and
/// reports progress.</summary>
public sealed class TrainingLoop(ITrainer trainer, TrainConfig cfg, string runDir, ILogger log)
{
    /// <summary>Told of each step and commit, as the actor engine's recorder tells it (Prometheus metrics); null: nobody.</summary>
    public IStepObserver? Observer { get; init; }

    public CheckpointStore Store { get; } = new(Path.Combine(runDir, "checkpoints"));

    /// <summary>Restores the newest commit whose files verify (falling back past corrupt ones); returns the step
    /// to continue from, 0 for a fresh run.</summary>
    public long Resume()
    {
        var commits = new CommitLog(Store);
        var commit = commits.LatestValid((c, e) =>
            log.Warning("Checkpoint of step {Step} is unusable, falling back to the previous commit: {Reason}", c.Step, e.Message));
        if (commit is null)
        {
            if (commits.Commits.Count > 0) throw new InvalidDataException($"{Store.Directory}: no committed checkpoint verifies; refusing to start over silently");
            return 0;
        }
        trainer.Restore(commit, Store);
        log.Information("Resumed from committed checkpoint {Step} ({Parts} parts)", commit.Step, commit.Parts.Count);
        return commit.Step;
    }

    /// <summary>Trains to the configured step count, or only up to <paramref name="stopAt"/> (a commit is made
    /// there, as if the process had been stopped).</summary>
    public void Run(Action<Progress>? onProgress = null, CancellationToken ct = default, long? stopAt = null)
    {
        long end = Math.Min(cfg.Steps, stopAt ?? cfg.Steps);
        long start = Resume();
        using var steps = new StepLog(runDir, start, trainer is IRoutingMetrics);
        var commits = new CommitLog(Store);
        var clock = Stopwatch.StartNew();
        var window = Stopwatch.StartNew();
        var stepClock = Stopwatch.StartNew();
        long windowImages = 0;
        double windowLoss = 0;
        int windowSteps = 0;
        if (start >= cfg.Steps) { log.Information("Run already complete at step {Step}", start); return; }
        log.Information("Training steps {From}..{To}", start, cfg.Steps - 1);

        while (trainer.NextStep < end)
        {
            if (ct.IsCancellationRequested)
            {
                log.Warning("Interrupted at step {Step}; committing a checkpoint before exit", trainer.NextStep);
                steps.Flush();
                Commit(commits);
                ct.ThrowIfCancellationRequested();
            }
            var s = trainer.TrainStep();
            if (!double.IsFinite(s.Loss)) throw new InvalidOperationException($"loss is {s.Loss} at step {s.Step}; stopping (last commit is intact)");
            windowImages += s.Images; windowLoss += s.Loss; windowSteps++;
            double ips = windowImages / Math.Max(1e-9, window.Elapsed.TotalSeconds);
            var routing = (trainer as IRoutingMetrics)?.LastRouting;
            steps.Step(s, ips, clock.Elapsed.TotalSeconds, routing);
            Observer?.Stepped(s, routing ?? [], stepClock.Elapsed.TotalSeconds);
            stepClock.Restart();

            if (trainer.NextStep % cfg.LogEvery == 0 || trainer.NextStep == cfg.Steps)
            {
                var eta = TimeSpan.FromSeconds((cfg.Steps - trainer.NextStep) * window.Elapsed.TotalSeconds / windowSteps);
                onProgress?.Invoke(new Progress(trainer.NextStep, cfg.Steps, windowLoss / windowSteps, ips, eta));
                window.Restart(); windowImages = 0; windowLoss = 0; windowSteps = 0;
            }
            if (trainer.NextStep % cfg.CheckpointEvery == 0 || trainer.NextStep == end)
            {
                steps.Flush();
                Commit(commits);
            }
        }
    }

    private void Commit(CommitLog commits)
    {
        var t = Stopwatch.StartNew();
        var parts = trainer.SaveCheckpoint(Store);
        commits.Commit(new CheckpointCommit(trainer.NextStep, parts, DateTime.UtcNow), cfg.KeepCheckpoints);
        Observer?.Committed(trainer.NextStep);
        log.Information("Committed checkpoint {Step} ({Parts} parts, {Ms} ms)", trainer.NextStep, parts.Count, t.ElapsedMilliseconds);
    }
}

/// <summary>Follows a phase's progress: each step once (a replay after a rollback is not told again) and each commit.</summary>
public interface IStepObserver
{
    void Stepped(StepStats stats, IReadOnlyList<ExpertStat> routing, double seconds);
    void Committed(long step);
}

/// <summary>A per-step CSV (metrics.csv, experts.csv). On resume, rows at or after the resumed step (written by a
/// run that died before its next commit) are dropped, so every step appears once.</summary>
public sealed class CsvLog : IDisposable
{
    private readonly StreamWriter w;

    public CsvLog(string path, string header, long truncateFrom)
    {
        var kept = new List<string>();
        if (File.Exists(path))
            kept.AddRange(File.ReadLines(path).Skip(1).Where(l => l.Length > 0 && long.Parse(l[..l.IndexOf(',')], CultureInfo.InvariantCulture) < truncateFrom));
        File.WriteAllLines(path, new[] { header }.Concat(kept));
        w = new StreamWriter(path, append: true);
    }

    public void Append(long step, string row)
    {
        w.WriteLine(row);
        if (step % 10 == 0) w.Flush();
    }

    /// <summary>Called at every commit: a row of a committed step must never be lost to a crash.</summary>
    public void Flush() => w.Flush();

    public void Dispose() => w.Dispose();
}

/// <summary>A phase's record of its steps, the same in every engine: metrics.csv, experts.csv for a model with experts
/// (<see cref="CsvLog"/>: from the step this process starts at, every step once), and the same series as TensorBoard
/// event files in PHASE/tensorboard (TorchSharp's SummaryWriter, one file per process): loss, lr, grad_norm and
/// images_per_s; per MoE block each expert's tokens and the gate entropy; and each recovery, as recovery/POLICY = the steps
/// it replayed, at its step. A resumed or rolled-back phase writes its steps again from the restored one, which
/// TensorBoard shows in place of the old ones (it drops a series' points past a step that comes again).</summary>
public sealed class StepLog : IDisposable
{
    private readonly CsvLog metrics;
    private readonly CsvLog? experts;
    private readonly TorchSharp.Modules.SummaryWriter board;

    public const string BoardDir = "tensorboard";

    public StepLog(string dir, long startStep, bool withExperts)
    {
        metrics = new CsvLog(Path.Combine(dir, "metrics.csv"), "step,loss,lr,grad_norm,images,images_per_s,wall_s", startStep);
        experts = withExperts ? new CsvLog(Path.Combine(dir, "experts.csv"), "step,block,expert,tokens,loss_share,gate_entropy", startStep) : null;
        board = TorchSharp.torch.utils.tensorboard.SummaryWriter(Path.Combine(dir, BoardDir), createRunName: false);
    }

    public void Step(StepStats s, double imagesPerSecond, double wallSeconds, IReadOnlyList<ExpertStat>? routing = null)
    {
        metrics.Append(s.Step, string.Create(CultureInfo.InvariantCulture,
            $"{s.Step},{s.Loss:R},{s.Lr:R},{s.GradNorm:R},{s.Images},{imagesPerSecond:F1},{wallSeconds:F3}"));
        int step = checked((int)s.Step);
        board.add_scalar("loss", (float)s.Loss, step);
        board.add_scalar("lr", (float)s.Lr, step);
        board.add_scalar("grad_norm", (float)s.GradNorm, step);
        board.add_scalar("images_per_s", (float)imagesPerSecond, step);
        if (routing is null || experts is null) return;
        foreach (var e in routing)
        {
            experts.Append(s.Step, string.Create(CultureInfo.InvariantCulture, $"{s.Step},{e.Block},{e.Expert},{e.Tokens},{e.LossShare:G6},{e.GateEntropy:G6}"));
            board.add_scalar(string.Create(CultureInfo.InvariantCulture, $"experts/block{e.Block}/tokens/expert{e.Expert}"), e.Tokens, step);
        }
        foreach (var b in routing.GroupBy(e => e.Block))
            board.add_scalar(string.Create(CultureInfo.InvariantCulture, $"experts/block{b.Key}/gate_entropy"), (float)b.First().GateEntropy, step);
    }

    /// <summary>A recovery at <paramref name="step"/> under <paramref name="policy"/> that replayed <paramref name="replayed"/> steps.</summary>
    public void Recovery(long step, string policy, long replayed) => board.add_scalar($"recovery/{policy}", replayed, checked((int)step));

    /// <summary>Called at every commit: a row of a committed step must never be lost to a crash.</summary>
    public void Flush()
    {
        metrics.Flush();
        experts?.Flush();
    }

    public void Dispose()
    {
        metrics.Dispose();
        experts?.Dispose();
    }
}
