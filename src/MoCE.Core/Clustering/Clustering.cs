using System.Globalization;
using System.Text.Json;
using MoCE.Core.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Core.Clustering;

/// <summary>A clustering that does not belong to the model or data it is used with.</summary>
public sealed class RunMismatchException(string what) : Exception(what);

/// <summary>The output of <c>moce cluster</c>: centroids [C, D] of the dense MAE's features, the cluster id of
/// every training image, and the dense checkpoint they were computed from (by sha256). Stored in the checkpoint
/// format (hash-verified) with a small manifest, clustering.json.</summary>
public sealed class ClusteringResult : IDisposable
{
    public required Tensor Centroids { get; init; }
    public required long[] TrainIds { get; init; }
    public required string DenseSha256 { get; init; }
    public required string DataSource { get; init; }
    public int K => (int)Centroids.shape[0];
    public int Dim => (int)Centroids.shape[1];

    private const string Manifest = "clustering.json";

    public void Save(string dir)
    {
        var store = new CheckpointStore(dir);
        var meta = new Dictionary<string, string>
        {
            ["kind"] = "clustering",
            ["dense_sha256"] = DenseSha256,
            ["data"] = DataSource,
            ["k"] = K.ToString(CultureInfo.InvariantCulture),
            ["dim"] = Dim.ToString(CultureInfo.InvariantCulture),
        };
        using var ids = tensor(TrainIds);
        var r = store.Save("clustering", 0, meta, [("centroids", Centroids), ("train_ids", ids)]);
        var tmp = Path.Combine(dir, Manifest + ".tmp");
        File.WriteAllText(tmp, JsonSerializer.Serialize(r));
        File.Move(tmp, Path.Combine(dir, Manifest), overwrite: true);
        store.DeleteAllExcept([r]);
    }

    public static bool Exists(string dir) => File.Exists(Path.Combine(dir, Manifest));

    public static ClusteringResult Load(string dir)
    {
        var manifest = Path.Combine(dir, Manifest);
        if (!File.Exists(manifest)) throw new RunMismatchException($"no clustering in {dir} (missing {Manifest}): run `moce cluster` on this run first");
        var r = JsonSerializer.Deserialize<CheckpointRef>(File.ReadAllText(manifest)) ?? throw new RunMismatchException($"{manifest} is empty");
        using var c = new CheckpointStore(dir).Load(r);
        return new ClusteringResult
        {
            Centroids = c.Tensors["centroids"].clone(),
            TrainIds = c.Tensors["train_ids"].data<long>().ToArray(),
            DenseSha256 = c["dense_sha256"],
            DataSource = c["data"],
        };
    }

    /// <summary>Checks that this clustering was made from <paramref name="denseSha256"/> for a model of width
    /// <paramref name="dim"/> over a dataset of <paramref name="count"/> images.</summary>
    public void Check(string denseSha256, int dim, int count)
    {
        if (Dim != dim)
            throw new RunMismatchException($"clustering has {Dim}-dimensional centroids, the model's features are {dim}-dimensional: it was made for another model");
        if (DenseSha256 != denseSha256)
            throw new RunMismatchException($"clustering was computed from dense checkpoint {DenseSha256[..16]}…, but this run starts from {denseSha256[..16]}…: re-run `moce cluster`");
        if (TrainIds.Length != count)
            throw new RunMismatchException($"clustering assigns {TrainIds.Length} training images, the dataset has {count} ({DataSource} vs the current data)");
    }

    public void Dispose() => Centroids.Dispose();
}
