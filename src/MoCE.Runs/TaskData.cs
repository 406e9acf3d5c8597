using MoCE.Core.Clustering;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Evaluation;
using MoCE.Core.Model;
using MoCE.Core.Training;
using Serilog;
using static TorchSharp.torch;

namespace MoCE.Runs;

/// <summary>One task's images: training and test indices into its dataset's splits, labels relabelled 0..n−1.</summary>
public sealed record TaskImages(TaskConfig Task, List<int> Train, long[] TrainY, List<int> Test, long[] TestY);

/// <summary>Everything evaluation and customization read: each task's dataset splits and images, and features per
/// (model, dataset, split) over the union of every task's images there, extracted once and kept on disk in
/// RUN/eval/features, keyed by the model's identity (its checkpoint hashes).</summary>
public sealed class TaskData : IDisposable
{
    private readonly Session s;
    private readonly Dictionary<(string dataset, Split split), ImageDataset> sets = [];
    private readonly Dictionary<(string dataset, Split split), List<int>> union = [];
    private readonly Dictionary<string, (Tensor feats, Dictionary<int, int> row)> memory = [];
    private readonly string cacheDir;
    public IReadOnlyDictionary<string, TaskImages> Tasks { get; }

    public TaskData(Session s, IEnumerable<string> taskNames)
    {
        this.s = s;
        cacheDir = Path.Combine(s.Upstream.Phase("eval"), "features");        // keyed by weights: runs trained from one pre-training share it
        var tasks = new Dictionary<string, TaskImages>();
        foreach (var name in taskNames.Distinct())
        {
            var task = s.Config.Tasks.TryGetValue(name, out var t) ? t
                : throw new ConfigException("moce.eval.tasks", $"no task '{name}' under moce.tasks (defined: {string.Join(", ", s.Config.Tasks.Keys)})");
            task.CheckClasses(s.Data.Resolved(task.Dataset).Classes);
            var (tr, trY) = TaskSelection.Select(Set(task.Dataset, Split.Train), task, task.Shots > 0 ? int.MaxValue : s.Config.Eval.TrainImages, s.Config.EvalSeed, task.Shots);
            var (te, teY) = TaskSelection.Select(Set(task.Dataset, Split.Test), task, s.Config.Eval.TestImages, s.Config.EvalSeed, 0);
            if (task.Shots > 0 && tr.Count < task.Shots * task.Classes.Count)
                throw new ConfigException($"{task.Key}.shots", $"{task.Shots} per class asked, but dataset '{task.Dataset}' has only {tr.Count} training images of these classes in all");
            if (tr.Count == 0 || te.Count == 0) throw new ConfigException(task.Key, $"dataset '{task.Dataset}' has no images of classes [{string.Join(", ", task.Classes)}] in one of its splits");
            tasks[name] = new TaskImages(task, tr, trY, te, teY);
            Union(task.Dataset, Split.Train).AddRange(tr);
            Union(task.Dataset, Split.Test).AddRange(te);
        }
        foreach (var k in union.Keys.ToList()) union[k] = union[k].Distinct().Order().ToList();
        Tasks = tasks;
    }

    public ImageDataset Set(string dataset, Split split)
    {
        if (!sets.TryGetValue((dataset, split), out var d)) sets[(dataset, split)] = d = s.Data.Load(dataset, split);
        return d;
    }

    /// <summary>Every task's images of a dataset split, the set features are extracted for.</summary>
    public IReadOnlyList<int> Images(string dataset, Split split) => union[(dataset, split)];

    private List<int> Union(string dataset, Split split) => union.TryGetValue((dataset, split), out var l) ? l : union[(dataset, split)] = [];

    /// <summary>Features [n, D] of <paramref name="indices"/>, all of which must be among the tasks' images of that
    /// dataset and split. <paramref name="key"/> identifies the model (same key, same weights); <paramref name="gate"/>
    /// routes a batch (null for dense models).</summary>
    public Tensor Features(string key, Func<MaskedAutoencoder> model, string dataset, Split split, IReadOnlyList<int> indices, Func<int[], GateInput?>? gate = null)
    {
        var all = union[(dataset, split)];
        // the image set is part of the name: the runs of a study's seeds draw different sets and share this cache
        var id = $"{key}-{dataset}-{split}-{ImagesTag(all)}".Replace('/', '_').Replace('+', '_');
        if (!memory.TryGetValue(id, out var f))
        {
            var file = Path.Combine(cacheDir, id + ".bin");
            var feats = TryRead(file, all);
            if (feats is null)
            {
                var sw = System.Diagnostics.Stopwatch.StartNew();
                feats = MoCE.Core.Evaluation.Features.Extract(model(), Set(dataset, split), all, gate, s.Config.Cluster.FeatureBatch, s.Device);
                Write(file, all, feats);
                Log.Information("features {Key} on {Dataset}/{Split}: {Count} images in {Sec:F1} s", key, dataset, split, all.Count, sw.Elapsed.TotalSeconds);
            }
            else Log.Information("features {Key} on {Dataset}/{Split}: {Count} images from the cache", key, dataset, split, all.Count);
            memory[id] = f = (feats, all.Select((img, r) => (img, r)).ToDictionary(x => x.img, x => x.r));
        }
        using var rows = tensor(indices.Select(i => (long)(f.row.TryGetValue(i, out var r) ? r : throw new ArgumentException($"image {i} of {dataset}/{split} is not among the tasks' images"))).ToArray());
        return f.feats.index_select(0, rows);
    }

    private static string ImagesTag(List<int> images)
    {
        var bytes = new byte[images.Count * sizeof(int)];
        Buffer.BlockCopy(images.ToArray(), 0, bytes, 0, bytes.Length);
        return Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(bytes))[..8];
    }

    /// <summary>Cluster ids of images: the nearest centroid of their pretrained dense MAE features.</summary>
    public long[] Clusters(string denseKey, Func<MaskedAutoencoder> dense, ClusteringResult clustering, string dataset, Split split, IReadOnlyList<int> indices)
    {
        using var f = Features(denseKey, dense, dataset, split, indices);
        var (ids, d2) = KMeans.Nearest(f, clustering.Centroids);
        using (ids) using (d2) return ids.data<long>().ToArray();
    }

    private static Tensor? TryRead(string file, List<int> indices)
    {
        if (!File.Exists(file)) return null;
        try
        {
            using var r = new BinaryReader(File.OpenRead(file));
            int n = r.ReadInt32(), d = r.ReadInt32();
            if (n != indices.Count) return null;
            for (int i = 0; i < n; i++) if (r.ReadInt32() != indices[i]) return null;
            var data = new float[(long)n * d];
            var bytes = r.ReadBytes(data.Length * 4);
            if (bytes.Length != data.Length * 4) return null;
            Buffer.BlockCopy(bytes, 0, data, 0, bytes.Length);
            return tensor(data, [n, d]);
        }
        catch (EndOfStreamException) { return null; }
    }

    private static void Write(string file, List<int> indices, Tensor feats)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(file)!);
        var tmp = file + ".tmp";
        using (var w = new BinaryWriter(File.Create(tmp)))
        {
            w.Write(indices.Count);
            w.Write((int)feats.shape[1]);
            foreach (var i in indices) w.Write(i);
            var data = feats.contiguous().data<float>().ToArray();
            var bytes = new byte[data.Length * 4];
            Buffer.BlockCopy(data, 0, bytes, 0, bytes.Length);
            w.Write(bytes);
        }
        File.Move(tmp, file, overwrite: true);
    }

    public void Dispose()
    {
        foreach (var d in sets.Values) d.Dispose();
        foreach (var (f, _) in memory.Values) f.Dispose();
    }
}
