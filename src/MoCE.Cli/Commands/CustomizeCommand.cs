using System.Globalization;
using System.Text;
using System.Text.Json;
using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Core.Customization;
using MoCE.Core.Data;
using MoCE.Core.Evaluation;
using MoCE.Core.Model;
using Serilog;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Cli.Commands;

/// <summary><c>moce customize --task NAME</c>: the task's cluster histogram picks one expert per MoCE layer, and
/// those experts are written into a dense ViT of the dense MAE's size (customize/NAME/).</summary>
public static class CustomizeCommand
{
    public sealed record Report(string Task, IReadOnlyList<int> Classes, int TaskImages, double[] Histogram, IReadOnlyList<ExpertChoice> Experts,
                                long FullParameters, long ExtractedParameters, long DenseParameters, int ComparedImages,
                                double MeanRelativeL2, double MeanCosine, string MoceSha256, bool FoldGateWeight);

    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept("task");
        var task = cli.Flags.TryGetValue("task", out var t) ? t : throw new ConfigException("--task", "is required: moce customize --task NAME");
        Execute(Session.Open(cli), task);
        return 0;
    }

    public static string Dir(Session s, string task) => s.Run.Phase(Path.Combine("customize", task));

    /// <summary>Loads the extracted model of a task, customizing first if it is missing or was made from another
    /// MoCE checkpoint than the run's newest.</summary>
    public static MaskedAutoencoder Load(Session s, string task)
    {
        var path = Path.Combine(Dir(s, task), "model.json");
        var current = Artifacts.TrainedSha(s, MoeMethod.Moce);
        if (!File.Exists(path) || ReadMeta(s, task, path)["moce_sha256"] != current) Execute(s, task);
        var r = JsonSerializer.Deserialize<CheckpointRef>(File.ReadAllText(path))!;
        using var c = new CheckpointStore(Dir(s, task)).Load(r);
        var m = new MaskedAutoencoder(s.Config.Model);
        Core.Checkpoints.TrainerCheckpoint.LoadModelWeights(m, c);
        m.to(s.Device).eval();
        return m;
    }

    private static IReadOnlyDictionary<string, string> ReadMeta(Session s, string task, string manifest)
    {
        var r = JsonSerializer.Deserialize<CheckpointRef>(File.ReadAllText(manifest))!;
        using var c = new CheckpointStore(Dir(s, task)).Load(r);
        return c.Meta;
    }

    public static void Execute(Session s, string taskName)
    {
        var task = s.Config.Tasks.TryGetValue(taskName, out var tc) ? tc
            : throw new ConfigException("--task", $"no task '{taskName}' under moce.tasks (defined: {string.Join(", ", s.Config.Tasks.Keys)})");
        var dir = Dir(s, taskName);
        var (denseCkpt, denseSha) = Artifacts.Dense(s);
        using var _ = denseCkpt;
        using var train = FashionMnist.Load(s.Data.Directory, Split.Train);
        using var clustering = Artifacts.Clustering(s, denseSha, train.Count);
        var (moce, moceSha) = Artifacts.Trained(s, MoeMethod.Moce, clustering.K);
        using var __ = moce;

        // h(c): the task's training images by cluster (every training image already has its cluster)
        var taskTrain = Enumerable.Range(0, train.Count).Where(i => task.Classes.Contains(train.Labels[i])).ToList();
        var h = Customizer.Histogram(taskTrain.Select(i => clustering.TrainIds[i]), clustering.K);
        var choices = Customizer.Choose(moce, h, s.Config.FoldGateWeight);
        var route = Customizer.AsRoute(choices);
        using var extracted = moce.ExtractDense(route);
        extracted.to(s.Device).eval();

        // how far the extracted model is from the full model routed top-1 by each image's own cluster
        using var test = FashionMnist.Load(s.Data.Directory, Split.Test);
        var (testIdx, _) = Artifacts.TaskImages(test, task, s.Config.Eval.TestImages, s.Config.Pretrain.Seed);
        using var dense = Artifacts.DenseModel(s, denseCkpt);
        var testClusters = Artifacts.AssignClusters(s, dense, clustering, test, testIdx);
        var pos = testIdx.Select((img, k) => (img, k)).ToDictionary(x => x.img, x => x.k);
        using var full = Features.Extract(moce, test, testIdx, s.Config.Data.Mean, s.Config.Data.Std, device: s.Device,
            gate: b => new GateInput(tensor(b.Select(i => testClusters[pos[i]]).ToArray()).to(s.Device)));
        using var ext = Features.Extract(extracted, test, testIdx, s.Config.Data.Mean, s.Config.Data.Std, device: s.Device);
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
            ["task"] = taskName,
            ["moce_sha256"] = moceSha,
            ["experts"] = JsonSerializer.Serialize(choices),
            ["model_config"] = JsonSerializer.Serialize(s.Config.Model),
        };
        var saved = store.Save("customized", 0, meta, extracted.state_dict().Select(kv => ("model." + kv.Key, kv.Value)));
        File.WriteAllText(Path.Combine(dir, "model.json"), JsonSerializer.Serialize(saved));
        store.DeleteAllExcept([saved]);

        using var denseRef = new MaskedAutoencoder(s.Config.Model);
        var report = new Report(taskName, task.Classes, taskTrain.Count, h, choices, Customizer.ParameterCount(moce), Customizer.ParameterCount(extracted),
            Customizer.ParameterCount(denseRef), testIdx.Count, relL2, cosine, moceSha, s.Config.FoldGateWeight);
        File.WriteAllText(Path.Combine(dir, "report.json"), JsonSerializer.Serialize(report, new JsonSerializerOptions { WriteIndented = true }));
        File.WriteAllText(Path.Combine(dir, "report.md"), Markdown(report));
        Log.Information("Customized {Task}: experts {Experts}; {Full:N0} → {Extracted:N0} parameters (dense MAE {Dense:N0}); features vs full model: rel. L2 {L2:F4}, cosine {Cos:F4}",
            taskName, string.Join(", ", choices.Select(c => $"block {c.Block}→e{c.Expert} (w {c.Weight:F3})")), report.FullParameters,
            report.ExtractedParameters, report.DenseParameters, relL2, cosine);
    }

    private static string Markdown(Report r)
    {
        var md = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        md.AppendLine($"# Customized model for task `{r.Task}`");
        md.AppendLine();
        md.AppendLine($"Classes: {string.Join(", ", r.Classes.Select(c => FashionMnist.ClassNames[c]))}; {r.TaskImages} training images.");
        md.AppendLine();
        md.AppendLine("Cluster histogram h: " + string.Join(" ", r.Histogram.Select((v, c) => string.Create(inv, $"c{c}:{v:F3}"))));
        md.AppendLine();
        md.AppendLine("| block | chosen expert | weight folded into fc2 | scores Σ_c h(c)·g(c)_e |");
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
