using System.Diagnostics;
using System.Globalization;
using System.Text;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Evaluation;
using MoCE.Core.Model;
using Serilog;
using static TorchSharp.torch;

namespace MoCE.Cli.Commands;

/// <summary><c>moce eval</c>: linear probe and k-NN accuracy on frozen features for each configured task, comparing
/// the dense MAE, TokenMoE, MoCE (full, routed by cluster) and MoCE-customized (the extracted dense model), all
/// trained for the same number of steps. Writes eval/results.md and eval/results.csv.</summary>
public static class EvalCommand
{
    public sealed record Row(string Task, string Model, int TrainImages, int TestImages, double LinearProbe, double Knn, long Parameters);

    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept();
        Execute(Session.Open(cli));
        return 0;
    }

    public static IReadOnlyList<Row> Execute(Session s)
    {
        var dir = s.Run.Phase("eval");
        var ev = s.Config.Eval;
        var (denseCkpt, denseSha) = Artifacts.Dense(s);
        using var _ = denseCkpt;
        using var train = FashionMnist.Load(s.Data.Directory, Split.Train);
        using var test = FashionMnist.Load(s.Data.Directory, Split.Test);
        using var clustering = Artifacts.Clustering(s, denseSha, train.Count);
        using var teacher = Artifacts.DenseModel(s, denseCkpt);
        var (denseTrained, _) = Artifacts.Trained(s, MoeMethod.Dense, clustering.K);
        var (tokenMoe, _) = Artifacts.Trained(s, MoeMethod.TokenMoe, clustering.K);
        var (moce, _) = Artifacts.Trained(s, MoeMethod.Moce, clustering.K);
        using var d1 = denseTrained;
        using var d2 = tokenMoe;
        using var d3 = moce;

        var rows = new List<Row>();
        foreach (var taskName in ev.Tasks)
        {
            var task = s.Config.Tasks[taskName];
            var (trIdx, trY) = Artifacts.TaskImages(train, task, ev.TrainImages, s.Config.Pretrain.Seed);
            var (teIdx, teY) = Artifacts.TaskImages(test, task, ev.TestImages, s.Config.Pretrain.Seed);
            // cluster ids: training images have theirs; test images take the nearest centroid of their dense features
            var trC = trIdx.Select(i => clustering.TrainIds[i]).ToArray();
            var teC = Artifacts.AssignClusters(s, teacher, clustering, test, teIdx);
            using var customized = CustomizeCommand.Load(s, taskName);
            var models = new (string name, MaskedAutoencoder model)[]
            {
                ("dense MAE", denseTrained), ("TokenMoE", tokenMoe), ("MoCE (full)", moce), ("MoCE-customized", customized),
            };
            foreach (var (name, model) in models)
            {
                var sw = Stopwatch.StartNew();
                using var ftr = Extract(s, model, train, trIdx, trC);
                using var fte = Extract(s, model, test, teIdx, teC);
                int classes = task.Classes.Count;
                double lin = Probes.LinearProbe(ftr, trY, fte, teY, classes, ev.ProbeEpochs, ev.ProbeLr, ev.ProbeWeightDecay, ev.ProbeBatch, s.Config.Pretrain.Seed);
                double knn = Probes.Knn(ftr, trY, fte, teY, classes, ev.KnnK, ev.KnnTemperature);
                var row = new Row(taskName, name, trIdx.Count, teIdx.Count, lin, knn, model.parameters().Sum(p => p.numel()));
                rows.Add(row);
                Log.Information("eval {Task} {Model}: linear {Linear:P2}, k-NN {Knn:P2} ({Train} train / {Test} test images, {Sec:F0} s)",
                    taskName, name, lin, knn, trIdx.Count, teIdx.Count, sw.Elapsed.TotalSeconds);
            }
        }
        var md = Markdown(rows, s, MoeLayers(moce).First().Experts.Count);
        File.WriteAllText(Path.Combine(dir, "results.md"), md);
        File.WriteAllText(Path.Combine(dir, "results.csv"), Csv(rows));
        Log.Information("Results → {Path}\n{Table}", Path.Combine(dir, "results.md"), md);
        return rows;
    }

    /// <summary>Features with the routing each model needs: the images' clusters for MoCE (no gate noise); TokenMoE
    /// routes by token and ignores them; dense models have no gate.</summary>
    private static Tensor Extract(Session s, MaskedAutoencoder model, ImageDataset data, List<int> idx, long[] clusters)
    {
        var pos = idx.Select((img, k) => (img, k)).ToDictionary(x => x.img, x => x.k);
        Func<int[], GateInput?>? gate = model.MoeLayers.Count == 0 ? null
            : b => new GateInput(tensor(b.Select(i => clusters[pos[i]]).ToArray()).to(s.Device));
        return Features.Extract(model, data, idx, s.Config.Data.Mean, s.Config.Data.Std, gate, s.Config.Cluster.FeatureBatch, s.Device);
    }

    private static IEnumerable<MoeLayer> MoeLayers(MaskedAutoencoder m) => m.modules().OfType<MoeLayer>();

    /// <summary><paramref name="experts"/>: MoCE's E, from its commit (experts may have been added while it trained).</summary>
    public static string Markdown(IReadOnlyList<Row> rows, Session s, int experts)
    {
        var inv = CultureInfo.InvariantCulture;
        var tasks = rows.Select(r => r.Task).Distinct().ToList();
        var md = new StringBuilder();
        md.AppendLine($"Pre-training {s.Config.Pretrain.Steps} steps, then {s.Config.Train.Steps} more steps per model (dense continued, TokenMoE, MoCE); " +
                      $"seed {s.Config.Pretrain.Seed}; {experts} experts in blocks [{string.Join(", ", s.Config.Moe.Layers)}], top-{s.Config.Moe.TopK}, {s.Config.Cluster.K} clusters.");
        md.AppendLine();
        md.AppendLine("| model | params | " + string.Join(" | ", tasks.Select(t => $"{t} linear | {t} k-NN")) + " |");
        md.AppendLine("|---|---:|" + string.Concat(tasks.Select(_ => "---:|---:|")));
        foreach (var model in rows.Select(r => r.Model).Distinct())
        {
            var cells = tasks.Select(t => rows.Single(r => r.Task == t && r.Model == model))
                .Select(r => string.Create(inv, $"{100 * r.LinearProbe:F2} | {100 * r.Knn:F2}"));
            md.AppendLine(string.Create(inv, $"| {model} | {rows.First(r => r.Model == model).Parameters:N0} | {string.Join(" | ", cells)} |"));
        }
        md.AppendLine();
        md.AppendLine("Accuracy in %, frozen features (mean of the encoder's patch tokens, no masking). " +
                      string.Join("; ", tasks.Select(t => { var r = rows.First(x => x.Task == t); return $"{t}: {r.TrainImages} train / {r.TestImages} test images"; })) + ".");
        return md.ToString();
    }

    private static string Csv(IEnumerable<Row> rows) =>
        "task,model,train_images,test_images,linear_probe,knn,parameters\n" + string.Concat(rows.Select(r =>
            string.Create(CultureInfo.InvariantCulture, $"{r.Task},{r.Model},{r.TrainImages},{r.TestImages},{r.LinearProbe:F6},{r.Knn:F6},{r.Parameters}\n")));
}
