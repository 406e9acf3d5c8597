using MoCE.Core.Checkpoints;
using MoCE.Core.Clustering;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Evaluation;
using MoCE.Core.Model;
using MoCE.Core.Training;
using static TorchSharp.torch;

namespace MoCE.Core.Tests;

/// <summary>A tiny dense MAE trained a few steps, saved as a checkpoint, and clustered into 4 clusters:
/// the starting point of every MoCE test.</summary>
public class MoceFixture : IDisposable
{
    /// <summary>The dense MAE's (and so every model's) architecture.</summary>
    public MaeConfig Model { get; }
    public const int Clusters = 4;
    public ImageDataset Data { get; } = Tiny.TrainSample();
    public CheckpointStore Store { get; } = new(Tiny.TempDir());
    public CheckpointRef DenseRef { get; }
    public ClusteringResult Clustering { get; }

    public static MoeConfig Moe => new() { Experts = 3, TopK = 1, Layers = [1], GateDim = 8, LambdaRoute = 0.1, LambdaDistill = 1.0 };

    public MoceFixture() : this(Tiny.Model) { }

    protected MoceFixture(MaeConfig model)
    {
        Model = model;
        using var dense = new DenseTrainer(model, Tiny.Train(steps: 5), Data);
        for (int i = 0; i < 5; i++) dense.TrainStep();
        DenseRef = dense.SaveCheckpoint(Store)[0];
        using var feats = Features.Extract(dense.Model, Data, Enumerable.Range(0, Data.Count).ToList());
        var km = KMeans.Fit(feats, Clusters, seed: 0);
        Clustering = new ClusteringResult { Centroids = km.Centroids, TrainIds = km.Assignments, DenseSha256 = DenseRef.Sha256, DataSource = Data.Source };
    }

    public CheckpointContent Dense() => Store.Load(DenseRef);

    public MoceTrainer Trainer(MoeConfig moe, TrainConfig train)
    {
        using var dense = Dense();
        return new MoceTrainer(Model, moe, train, Data, Clustering, dense, DenseRef.Sha256);
    }

    public void Dispose()
    {
        GC.SuppressFinalize(this);
        Clustering.Dispose();
        Data.Dispose();
    }
}

/// <summary>The quickstart's layout at the tiny width: four encoder blocks, MoE in blocks 1 and 3, so a dense block
/// (2) sits between two MoE blocks.</summary>
public sealed class QuickstartLayoutFixture() : MoceFixture(Tiny.Model with { Depth = 4 });
