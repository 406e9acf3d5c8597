using System.Globalization;
using MoCE.Core.Training;
using MoCE.Tests.Shared;

namespace MoCE.Core.Tests;

/// <summary>Every phase writes TensorBoard events beside metrics.csv (StepLog), read back here by a reader of the record
/// format that checks every CRC.</summary>
public class TensorBoardTests
{
    [Fact]
    public void A_resumed_phase_s_event_files_hold_the_loss_and_lr_of_every_step_once_as_metrics_csv_does()
    {
        var dir = Tiny.TempDir();
        using var data = Tiny.TrainSample();
        var cfg = Tiny.Train(steps: 12) with { CheckpointEvery = 4 };
        using (var first = new DenseTrainer(Tiny.Model, cfg, data))
            new TrainingLoop(first, cfg, dir, Serilog.Log.Logger).Run(stopAt: 6);
        using (var second = new DenseTrainer(Tiny.Model, cfg, data))          // a fresh process's trainer resumes at 6
            new TrainingLoop(second, cfg, dir, Serilog.Log.Logger).Run();

        var board = Path.Combine(dir, StepLog.BoardDir);
        Assert.Equal(2, Directory.GetFiles(board, "events.out.tfevents.*").Length);  // one file per process
        var points = TensorBoardEvents.Read(board);
        var rows = File.ReadAllLines(Path.Combine(dir, "metrics.csv")).Skip(1).Select(l => l.Split(',')).ToArray();
        var loss = points.Where(p => p.Tag == "loss").ToArray();
        Assert.Equal(Enumerable.Range(0, 12).Select(i => (long)i), loss.Select(p => p.Step));
        Assert.Equal(rows.Select(r => (float)double.Parse(r[1], CultureInfo.InvariantCulture)), loss.Select(p => p.Value));
        Assert.Equal(rows.Select(r => (float)double.Parse(r[2], CultureInfo.InvariantCulture)), points.Where(p => p.Tag == "lr").Select(p => p.Value));
        foreach (var tag in new[] { "grad_norm", "images_per_s" }) Assert.Equal(12, points.Count(p => p.Tag == tag));

        var file = Directory.GetFiles(board, "events.out.tfevents.*").Order(StringComparer.Ordinal).Last();
        var bytes = File.ReadAllBytes(file);
        bytes[^3] ^= 0x40;                                                     // the reader checks what it reads
        File.WriteAllBytes(file, bytes);
        Assert.Throws<InvalidDataException>(() => TensorBoardEvents.Read(board));
    }
}
