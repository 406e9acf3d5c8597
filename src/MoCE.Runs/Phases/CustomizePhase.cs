using System.Globalization;
using System.Text;
using System.Text.Json;
using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Core.Customization;
using MoCE.Core.Data;
using MoCE.Core.Evaluation;
using MoCE.Runs.Configuration;
using MoCE.Core.Model;
using Serilog;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Runs;

/// <summary><c>moce customize --task NAME</c>: the task's cluster histogram picks one expert per MoCE layer, and
/// those experts are written into a dense ViT of the dense MAE's size (customize/NAME/).</summary>
public static class CustomizePhase
{
    public sealed record Report(string Task, IReadOnlyList<int> Classes, int TaskImages, double[] Histogram, IReadOnlyList<ExpertChoice> Experts,
                                long FullParameters, long ExtractedParameters, long DenseParameters, int ComparedImages,
                                double MeanRelativeL2, double MeanCosine, string MoceSha256, string FoldGateWeight);

    public static string Dir(Session s, string task) => s.Run.Phase(Path.Combine("customize", task));

    /// <summary>The extracted model of a task (made by <see cref="Ensure"/>).</summary>
    public static MaskedAutoencoder Load(Session s, string task)
    {
        var r = JsonSerializer.Deserialize<CheckpointRef>(File.ReadAllText(Path.Combine(Dir(s, task), "model.json")))!;
        using var c = new CheckpointStore(Dir(s, task)).Load(r);
        var m = new MaskedAutoencoder(s.Config.Model);
        Core.Checkpoints.TrainerCheckpoint.LoadModelWeights(m, c);
        m.to(s.Device).eval();
        return m;
    }

    /// <summary>Customizes the task unless its extracted model was made from the run's newest MoCE checkpoint with
    /// the same task definition and settings; returns the extracted model's key (for caches) and its sha256.</summary>
    public static (string key, string sha) Ensure(Session s, string taskName, EvalPhase.ModelSet models, TaskImages ti)
    {
        var path = Path.Combine(Dir(s, taskName), "model.json");
        var wanted = Identity(s, ti.Task);
        if (!File.Exists(path) || ReadMeta(s, taskName, path).GetValueOrDefault("identity") != wanted) Execute(s, ti, models);
        var r = JsonSerializer.Deserialize<CheckpointRef>(File.ReadAllText(path))!;
        return ($"customized-{taskName}-{r.Sha256[..16]}", r.Sha256);
    }

    private static string Identity(Session s, TaskConfig task) =>
        $"{Artifacts.TrainedSha(s, MoeMethod.Moce)}|{JsonSerializer.Serialize(task)}|fold={HoconTree.Kebab(s.Config.FoldGateWeight.ToString())}|train={s.Config.Eval.TrainImages}|test={s.Config.Eval.TestImages}";

    private static IReadOnlyDictionary<string, string> ReadMeta(Session s, string task, string manifest)
    {
        var r = JsonSerializer.Deserialize<CheckpointRef>(File.ReadAllText(manifest))!;
        using var c = new CheckpointStore(Dir(s, task)).Load(r);
        return c.Meta;
    }

    public static void Execute(Session s, string taskName)
    {
        using var data = new TaskData(s, [taskName]);
        using var models = new EvalPhase.ModelSet(s, data);
        Execute(s, data.Tasks[taskName], models);
    }

    private static void Execute(Session s, TaskImages ti, EvalPhase.ModelSet models)
    {
        var task = ti.Task;
        var dir = Dir(s, task.Name);
        var (moceKey, moceLoad, moceGate) = models.Get("moce", ti);
        var moce = moceLoad();
        var moceSha = Artifacts.TrainedSha(s, MoeMethod.Moce);
        var clustering = models.Clustering();

        // h(c): the task's training images by cluster (nearest centroid of their pretrained features)
        var trainClusters = models.Data.Clusters(models.DenseKey, models.DenseModel, clustering, task.Dataset, Split.Train, ti.Train);
        var h = Customizer.Histogram(trainClusters, clustering.K);
        var choices = Customizer.Choose(moce, h, s.Config.FoldGateWeight);
        using var extracted = moce.ExtractDense(Customizer.AsRoute(choices));
        extracted.to(s.Device).eval();

        // how far the extracted model is from the full model routed top-1 by each image's own cluster
        using var full = models.Data.Features(moceKey, moceLoad, task.Dataset, Split.Test, ti.Test, moceGate!(Split.Test));
        using var ext = Features.Extract(extracted, models.Data.Set(task.Dataset, Split.Test), ti.Test, batch: s.Config.Cluster.FeatureBatch, device: s.Device);
        double relL2, cosine;
        using (NewDisposeScope())
        {
            relL2 = ((ext - full).norm(1) / full.norm(1).clamp_min(1e-12)).mean().item<float>();
            cosine = nn.functional.cosine_similarity(ext, full, 1).mean().item<float>();
        }

        var store = new CheckpointStore(dir);
        var meta = new Dictionary<string, string>
        {
            ["kind"] = "customized-dense-mae",
            ["task"] = task.Name,
            ["moce_sha256"] = moceSha,
            ["identity"] = Identity(s, task),
            ["experts"] = JsonSerializer.Serialize(choices),
            ["model_config"] = JsonSerializer.Serialize(s.Config.Model),
        };
        var saved = store.Save("customized", 0, meta, extracted.state_dict().Select(kv => ("model." + kv.Key, kv.Value)));
        File.WriteAllText(Path.Combine(dir, "model.json"), JsonSerializer.Serialize(saved));
        store.DeleteAllExcept([saved]);

        using var denseRef = new MaskedAutoencoder(s.Config.Model);
        var classNames = s.Data.Resolved(task.Dataset).Classes;
        var report = new Report(task.Name, task.Classes, ti.Train.Count, h, choices, Customizer.ParameterCount(moce), Customizer.ParameterCount(extracted),
            Customizer.ParameterCount(denseRef), ti.Test.Count, relL2, cosine, moceSha, HoconTree.Kebab(s.Config.FoldGateWeight.ToString()));
        File.WriteAllText(Path.Combine(dir, "report.json"), JsonSerializer.Serialize(report, new JsonSerializerOptions { WriteIndented = true }));
        File.WriteAllText(Path.Combine(dir, "report.md"), Markdown(report, task.Dataset, classNames));
        Log.Information("Customized {Task}: experts {Experts}; {Full:N0} → {Extracted:N0} parameters (dense MAE {Dense:N0}); features vs full model: rel. L2 {L2:F4}, cosine {Cos:F4}",
            task.Name, string.Join(", ", choices.Select(c => $"block {c.Block}→e{c.Expert} (gate mass {c.Scores[c.Expert]:F3})")), report.FullParameters,
            report.ExtractedParameters, report.DenseParameters, relL2, cosine);
    }

    private static string Markdown(Report r, string dataset, IReadOnlyList<string> classNames)
    {
        var md = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        md.AppendLine($"# Customized model for task `{r.Task}`");
        md.AppendLine();
        md.AppendLine($"Classes of {dataset}: {string.Join(", ", r.Classes.Select(c => classNames[c]))}; {r.TaskImages} training images.");
        md.AppendLine();
        md.AppendLine("Cluster histogram h: " + string.Join(" ", r.Histogram.Select((v, c) => string.Create(inv, $"c{c}:{v:F3}"))));
        md.AppendLine();
        md.AppendLine("| block | chosen expert | weight folded into fc2 | scores Σ_c h(c)·g(c)_e (the chosen one is its mean gate mass on the task) |");
        md.AppendLine("|---:|---:|---:|---|");
        foreach (var c in r.Experts)
            md.AppendLine(string.Create(inv, $"| {c.Block} | {c.Expert} | {c.Weight:F4} | {string.Join(" ", c.Scores.Select(x => x.ToString("F3", inv)))} |"));
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"Parameters: full MoCE model {r.FullParameters:N0}; extracted {r.ExtractedParameters:N0}; dense MAE {r.DenseParameters:N0}."));
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"Features of the extracted model vs the full model routed top-1 by each image's cluster, on {r.ComparedImages} test images of the task: mean relative L2 distance {r.MeanRelativeL2:F4}, mean cosine similarity {r.MeanCosine:F4}."));
        return md.ToString();
    }
}
