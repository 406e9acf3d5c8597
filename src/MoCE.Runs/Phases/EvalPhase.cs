using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using MoCE.Core.Clustering;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Evaluation;
using MoCE.Core.Model;
using Serilog;
using static TorchSharp.torch;

namespace MoCE.Runs;

/// <summary><c>moce eval [--models a,b] [--tasks x,y]</c>: linear probe and k-NN accuracy on frozen features for each
/// task and model: the pretrained dense MAE, the dense MAE continued, TokenMoE, MoCE (full, routed by cluster) and
/// MoCE-customized (the extracted dense model per task). Features are extracted once per model and dataset split and
/// cached; a (task, model) already evaluated with the same weights and settings is not evaluated again. Writes
/// eval/results.md and eval/results.csv.</summary>
public static class EvalPhase
{
    public sealed record Row(string Task, string Model, int TrainImages, int TestImages, double LinearProbe, double Knn, long Parameters, string Key = "")
    {
        /// <summary>The epochs the linear probe trained, and whether it met moce.eval.probe-tol.</summary>
        public int ProbeEpochs { get; init; }
        public bool ProbeConverged { get; init; } = true;
    }

    public static readonly IReadOnlyDictionary<string, string> Display = new Dictionary<string, string>
    {
        ["pretrained"] = "pretrained MAE", ["dense"] = "dense MAE", ["token-moe"] = "TokenMoE", ["moce"] = "MoCE (full)", ["moce-customized"] = "MoCE-customized",
    };

    /// <summary>The evaluation settings a row depends on (not which tasks and models are selected), and the seed of its draws.</summary>
    public static string Settings(EvalConfig ev, long evalSeed) => JsonSerializer.Serialize(ev with { Tasks = [], Models = [] }) + $"|seed={evalSeed}";

    /// <summary>A short stable hash of a model's identity (checkpoint hashes).</summary>
    public static string Short(string identity) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(identity)))[..16];

    public static IReadOnlyList<Row> Execute(Session s, IReadOnlyList<string>? modelNames = null, IReadOnlyList<string>? taskNames = null)
    {
        var dir = s.Run.Phase("eval");
        var ev = s.Config.Eval;
        modelNames ??= ev.Models;
        taskNames ??= ev.Tasks;
        using var data = new TaskData(s, taskNames);
        using var models = new ModelSet(s, data);
        var cachePath = Path.Combine(dir, "rows.json");
        var cache = File.Exists(cachePath) ? JsonSerializer.Deserialize<Dictionary<string, Row>>(File.ReadAllText(cachePath)) ?? [] : [];
        var settings = Settings(ev, s.Config.EvalSeed);

        var rows = new List<Row>();
        foreach (var taskName in taskNames)
        {
            var ti = data.Tasks[taskName];
            foreach (var name in modelNames)
            {
                var (key, load, gate) = models.Get(name, ti);
                var rowKey = $"{JsonSerializer.Serialize(ti.Task)}|{key}|{settings}";
                if (cache.TryGetValue(rowKey, out var done))
                {
                    rows.Add(done);
                    Log.Information("eval {Task} {Model}: linear {Linear:P2}, k-NN {Knn:P2} (done before; same weights and settings)", taskName, Display[name], done.LinearProbe, done.Knn);
                    continue;
                }
                var sw = System.Diagnostics.Stopwatch.StartNew();
                var ds = ti.Task.Dataset;
                using var ftr = data.Features(key, load, ds, Core.Data.Split.Train, ti.Train, gate?.Invoke(Core.Data.Split.Train));
                using var fte = data.Features(key, load, ds, Core.Data.Split.Test, ti.Test, gate?.Invoke(Core.Data.Split.Test));
                int classes = ti.Task.Classes.Count;
                var probe = Probes.LinearProbe(ftr, ti.TrainY, fte, ti.TestY, classes, ev.ProbeEpochs, ev.ProbeLr, ev.ProbeWeightDecay, ev.ProbeBatch, s.Config.EvalSeed, ev.ProbeTol);
                double lin = probe.Accuracy;
                if (!probe.Converged)
                    Log.Warning("eval {Task} {Model}: the linear probe did not converge in {Epochs} epochs (moce.eval.probe-epochs; training loss {Loss:F4})", taskName, Display[name], probe.Epochs, probe.TrainLoss);
                double knn = Probes.Knn(ftr, ti.TrainY, fte, ti.TestY, classes, ev.KnnK, ev.KnnTemperature, centre: ev.KnnCentre);
                var row = new Row(taskName, Display[name], ti.Train.Count, ti.Test.Count, lin, knn, models.Parameters(name, ti), key) { ProbeEpochs = probe.Epochs, ProbeConverged = probe.Converged };
                rows.Add(row);
                cache[rowKey] = row;
                File.WriteAllText(cachePath, JsonSerializer.Serialize(cache));
                Log.Information("eval {Task} {Model}: linear {Linear:P2}, k-NN {Knn:P2} ({Train} train / {Test} test images, {Sec:F0} s)",
                    taskName, Display[name], lin, knn, ti.Train.Count, ti.Test.Count, sw.Elapsed.TotalSeconds);
            }
        }
        var md = Markdown(rows, s, models.MoceExperts);
        File.WriteAllText(Path.Combine(dir, "results.md"), md);
        File.WriteAllText(Path.Combine(dir, "results.csv"), Csv(rows));
        Log.Information("Results → {Path}\n{Table}", Path.Combine(dir, "results.md"), md);
        return rows;
    }

    /// <summary>The models of a run, each loaded at most once, with the key that identifies its weights and the
    /// routing it needs: the images' clusters for MoCE (no gate noise); TokenMoE routes by token; dense models have
    /// no gate.</summary>
    public sealed class ModelSet(Session s, TaskData data) : IDisposable
    {
        public TaskData Data => data;
        private readonly Dictionary<string, MaskedAutoencoder> loaded = [];
        private readonly Dictionary<string, string> keys = [];
        private (Core.Checkpoints.CheckpointContent content, string sha)? dense;
        private ClusteringResult? clustering;

        public int? MoceExperts => loaded.TryGetValue("moce", out var m) ? m.MoeLayers.Values.First().Experts.Count : null;

        private (Core.Checkpoints.CheckpointContent content, string sha) Dense() => dense ??= Artifacts.Dense(s);
        public string DenseKey => "pretrained-" + Dense().sha[..16];
        public MaskedAutoencoder DenseModel() => Cached("pretrained", () => Artifacts.DenseModel(s, Dense().content));
        public ClusteringResult Clustering() => clustering ??= Artifacts.Clustering(s, Dense().sha, s.Data.PretrainCount());

        private MaskedAutoencoder Cached(string name, Func<MaskedAutoencoder> make) =>
            loaded.TryGetValue(name, out var m) ? m : loaded[name] = make();

        /// <summary>The image clusters of the tasks' images of a dataset split (nearest centroid of the pretrained features).</summary>
        public Func<int[], GateInput?> ClusterGate(TaskImages ti, Core.Data.Split split)
        {
            var idx = data.Images(ti.Task.Dataset, split);                            // features are extracted for every task's images at once
            var ids = data.Clusters(DenseKey, DenseModel, Clustering(), ti.Task.Dataset, split, idx);
            var byImage = idx.Select((img, k) => (img, k)).ToDictionary(x => x.img, x => ids[x.k]);
            return b => new GateInput(tensor(b.Select(i => byImage[i]).ToArray()).to(s.Device));
        }

        /// <summary>Key, loader and gate (per split) of model <paramref name="name"/> for task <paramref name="ti"/>.</summary>
        public (string key, Func<MaskedAutoencoder> load, Func<Core.Data.Split, Func<int[], GateInput?>?>? gate) Get(string name, TaskImages ti)
        {
            switch (name)
            {
                case "pretrained": return (DenseKey, DenseModel, null);
                case "moce-customized":
                {
                    var id = "moce-customized/" + ti.Task.Name;
                    if (!keys.TryGetValue(id, out var key)) keys[id] = key = CustomizePhase.Ensure(s, ti.Task.Name, this, ti).key;   // once per task
                    return (key, () => Cached(id, () => CustomizePhase.Load(s, ti.Task.Name)), null);
                }
                default:
                {
                    var method = MoCE.Runs.Configuration.MoceConfig.ParseMethod("--models", name);
                    if (!keys.TryGetValue(name, out var key)) keys[name] = key = name + "-" + Short(Artifacts.TrainedSha(s, method));
                    MaskedAutoencoder Load() => Cached(name, () => Artifacts.Trained(s, method, Clustering().K).model);
                    // MoCE routes by the images' clusters; TokenMoE reads the same gate input and ignores the ids
                    return method == MoeMethod.Dense ? (key, Load, null) : (key, Load, split => ClusterGate(ti, split));
                }
            }
        }

        public long Parameters(string name, TaskImages ti) => Get(name, ti).load().parameters().Sum(p => p.numel());

        public void Dispose()
        {
            foreach (var m in loaded.Values) m.Dispose();
            dense?.content.Dispose();
            clustering?.Dispose();
        }
    }

    /// <summary><paramref name="experts"/>: MoCE's E, from its commit (experts may have been added while it trained).</summary>
    public static string Markdown(IReadOnlyList<Row> rows, Session s, int? experts)
    {
        var inv = CultureInfo.InvariantCulture;
        var tasks = rows.Select(r => r.Task).Distinct().ToList();
        var md = new StringBuilder();
        md.AppendLine($"Pre-training {s.Config.Pretrain.Steps} steps on {s.Config.Data.Describe()}, " +
                      $"then {s.Config.Train.Steps} more steps per model (seed {s.Config.Train.Seed})" +
                      (experts is int e ? $"; {e} experts in blocks [{string.Join(", ", s.Config.Moe.Layers)}], top-{s.Config.Moe.TopK}, {s.Config.Cluster.K} clusters." : "."));
        md.AppendLine();
        md.AppendLine("| model | params | " + string.Join(" | ", tasks.Select(t => $"{t} linear | {t} k-NN")) + " |");
        md.AppendLine("|---|---:|" + string.Concat(tasks.Select(_ => "---:|---:|")));
        foreach (var model in rows.Select(r => r.Model).Distinct())
        {
            var cells = tasks.Select(t => rows.SingleOrDefault(r => r.Task == t && r.Model == model))
                .Select(r => r is null ? "– | –" : string.Create(inv, $"{100 * r.LinearProbe:F2} | {100 * r.Knn:F2}"));
            md.AppendLine(string.Create(inv, $"| {model} | {rows.First(r => r.Model == model).Parameters:N0} | {string.Join(" | ", cells)} |"));
        }
        md.AppendLine();
        md.AppendLine("Accuracy in %, frozen features (mean of the encoder's patch tokens, no masking). " +
                      string.Join("; ", tasks.Select(t => { var r = rows.First(x => x.Task == t); var tc = s.Config.Tasks[t]; return $"{t} ({tc.Dataset}): {r.TrainImages} train / {r.TestImages} test images"; })) + ".");
        var ev = s.Config.Eval;
        var unconverged = rows.Where(r => !r.ProbeConverged).ToList();
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"Linear probes run until two epochs in a row improve the training loss by less than {ev.ProbeTol:G3} (relative), {ev.ProbeEpochs} epochs at most; k-NN on {(ev.KnnCentre ? "centred" : "uncentred")} features. ") +
                      (unconverged.Count == 0 ? "Every probe converged." : $"Not converged: {string.Join(", ", unconverged.Select(r => $"{r.Task} {r.Model}"))}."));
        return md.ToString();
    }

    private static string Csv(IEnumerable<Row> rows) =>
        "task,model,train_images,test_images,linear_probe,knn,parameters\n" + string.Concat(rows.Select(r =>
            string.Create(CultureInfo.InvariantCulture, $"{r.Task},{r.Model},{r.TrainImages},{r.TestImages},{r.LinearProbe:F6},{r.Knn:F6},{r.Parameters}\n")));
}
