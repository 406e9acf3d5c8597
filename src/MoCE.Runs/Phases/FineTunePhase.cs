using System.Globalization;
using System.Text.Json;
using MoCE.Core.Config;
using MoCE.Core.Evaluation;
using MoCE.Core.Model;
using Serilog;

namespace MoCE.Runs;

/// <summary><c>moce finetune [--models a,b] [--tasks x,y]</c>: end-to-end fine-tuning (<see cref="FineTune"/>, the paper's
/// evaluation) of each dense encoder (pretrained, dense, moce-customized) on each task's training images, tested on
/// its test images. A (task, model) already fine-tuned with the same weights and settings is not redone. Writes
/// eval/finetune.md and eval/finetune.csv.</summary>
public static class FineTunePhase
{
    public sealed record Row(string Task, string Model, int TrainImages, int TestImages, double Accuracy, double TrainLoss, string Key);

    public static readonly IReadOnlyList<string> Encoders = ["pretrained", "dense", "moce-customized"];

    /// <summary><paramref name="ct"/> (Ctrl-C) stops it between steps; the rows done so far are kept.</summary>
    public static IReadOnlyList<Row> Execute(Session s, IReadOnlyList<string> modelNames, IReadOnlyList<string> taskNames, CancellationToken ct = default)
    {
        var dir = s.Run.Phase("eval");
        var ft = s.Config.FineTune;
        var settings = JsonSerializer.Serialize(ft);
        using var data = new TaskData(s, taskNames);
        using var models = new EvalPhase.ModelSet(s, data);
        var cachePath = Path.Combine(dir, "finetune.json");
        var cache = File.Exists(cachePath) ? JsonSerializer.Deserialize<Dictionary<string, Row>>(File.ReadAllText(cachePath)) ?? [] : [];
        var rows = new List<Row>();
        foreach (var taskName in taskNames)
        {
            var ti = data.Tasks[taskName];
            foreach (var name in modelNames)
            {
                var (key, load, _) = models.Get(name, ti);
                var rowKey = $"{JsonSerializer.Serialize(ti.Task)}|{key}|{settings}|{s.Config.EvalSeed}";
                if (cache.TryGetValue(rowKey, out var done))
                {
                    rows.Add(done);
                    Log.Information("finetune {Task} {Model}: {Acc:P2} (done before; same weights and settings)", taskName, EvalPhase.Display[name], done.Accuracy);
                    continue;
                }
                var sw = System.Diagnostics.Stopwatch.StartNew();
                var source = load();
                using var encoder = new MaskedAutoencoder(source.Config);             // a copy: the loaded model stays as trained
                encoder.load_state_dict(source.state_dict());
                var ds = ti.Task.Dataset;
                var r = Core.Runtime.ComputeThread.Run("finetune", s.Config.Threads, () => FineTune.Run(encoder,
                    data.Set(ds, Core.Data.Split.Train), ti.Train, ti.TrainY, data.Set(ds, Core.Data.Split.Test), ti.Test, ti.TestY,
                    ti.Task.Classes.Count, ft, s.Config.EvalSeed, s.Device, ct));
                var row = new Row(taskName, EvalPhase.Display[name], ti.Train.Count, ti.Test.Count, r.Accuracy, r.TrainLoss, key);
                rows.Add(row);
                cache[rowKey] = row;
                File.WriteAllText(cachePath, JsonSerializer.Serialize(cache));
                Log.Information("finetune {Task} {Model}: {Acc:P2} after {Steps} steps (last epoch's loss {Loss:F3}; {Sec:F0} s)",
                    taskName, EvalPhase.Display[name], r.Accuracy, r.Steps, r.TrainLoss, sw.Elapsed.TotalSeconds);
            }
        }
        var inv = CultureInfo.InvariantCulture;
        var md = $"Fine-tuning ({ft.Epochs} epochs of {ft.BatchSize}, base lr {ft.BaseLr.ToString(inv)}, layer decay {ft.LayerDecay.ToString(inv)}), test accuracy in %:\n\n"
            + $"| model | {string.Join(" | ", taskNames)} |\n|---|{string.Concat(taskNames.Select(_ => "---:|"))}\n"
            + string.Concat(modelNames.Select(m => $"| {EvalPhase.Display[m]} | {string.Join(" | ", taskNames.Select(t => rows.FirstOrDefault(r => r.Task == t && r.Model == EvalPhase.Display[m]) is { } r ? (100 * r.Accuracy).ToString("F2", inv) : "–"))} |\n"));
        File.WriteAllText(Path.Combine(dir, "finetune.md"), md);
        File.WriteAllText(Path.Combine(dir, "finetune.csv"), "task,model,train_images,test_images,accuracy,train_loss\n"
            + string.Concat(rows.Select(r => string.Create(inv, $"{r.Task},{r.Model},{r.TrainImages},{r.TestImages},{r.Accuracy:F6},{r.TrainLoss:F6}\n"))));
        Log.Information("Fine-tuning results → {Path}\n{Table}", Path.Combine(dir, "finetune.md"), md);
        return rows;
    }
}
