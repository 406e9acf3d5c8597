using MoCE.Core.Clustering;
using MoCE.Core.Evaluation;
using static TorchSharp.torch;

namespace MoCE.Core.Tests;

public class ClusteringAndProbeTests
{
    /// <summary>C well-separated Gaussian blobs in D dimensions; returns points and their true blob.</summary>
    private static (Tensor x, long[] labels) Blobs(int c, int perBlob, int d, long seed, double spread = 0.3)
    {
        using var gen = new Generator((ulong)seed);
        var centers = randn(new long[] { c, d }, generator: gen) * 5;
        var labels = Enumerable.Range(0, c * perBlob).Select(i => (long)(i % c)).ToArray();
        var x = centers.index_select(0, tensor(labels)) + randn(new long[] { c * perBlob, d }, generator: gen) * spread;
        return (x, labels);
    }

    [Fact]
    public void Kmeans_recovers_planted_clusters()
    {
        var (x, truth) = Blobs(c: 8, perBlob: 200, d: 16, seed: 1);
        using var r = KMeans.Fit(x, 8, seed: 0, chunk: 300);
        Assert.True(ClusterMetrics.AdjustedRand(r.Assignments, truth) >= 0.95, $"ARI {ClusterMetrics.AdjustedRand(r.Assignments, truth)}");
        Assert.True(ClusterMetrics.Nmi(r.Assignments, truth) >= 0.95);
        Assert.All(ClusterMetrics.Purity(r.Assignments, truth), p => Assert.True(p.purity > 0.95));
    }

    [Fact]
    public void Kmeans_is_deterministic_for_a_seed()
    {
        var (x, _) = Blobs(c: 6, perBlob: 100, d: 8, seed: 2, spread: 2.0); // overlapping: the seed matters
        using var a = KMeans.Fit(x, 6, seed: 5);
        using var b = KMeans.Fit(x, 6, seed: 5);
        Assert.Equal(a.Assignments, b.Assignments);
        Assert.True(a.Centroids.equal(b.Centroids).all().item<bool>());
        Assert.Equal(a.Inertia, b.Inertia);
    }

    [Fact]
    public void Cluster_metrics_match_hand_computed_values()
    {
        long[] a = [0, 0, 0, 1, 1, 1], b = [1, 1, 1, 0, 0, 0];
        Assert.Equal(1.0, ClusterMetrics.AdjustedRand(a, b), 12);           // a relabelling is perfect agreement
        Assert.Equal(1.0, ClusterMetrics.Nmi(a, b), 12);
        long[] c = [0, 0, 1, 1, 2, 2], d = [0, 0, 0, 1, 1, 1];
        // Σ C(n_ij,2) = 2, Σ C(a_i,2) = 3, Σ C(b_j,2) = 6, expected = 3·6/C(6,2) = 1.2, max = 4.5: ARI = 0.8/3.3
        Assert.Equal(8.0 / 33, ClusterMetrics.AdjustedRand(c, d), 12);
        // MI = (2/3)·ln 2, H(c) = ln 3, H(d) = ln 2: NMI = MI / ((H(c) + H(d)) / 2)
        Assert.Equal(2.0 / 3 * Math.Log(2) / ((Math.Log(3) + Math.Log(2)) / 2), ClusterMetrics.Nmi(c, d), 12);
    }

    [Fact]
    public void Probes_separate_separable_classes_and_not_random_labels()
    {
        var (x, y) = Blobs(c: 3, perBlob: 200, d: 10, seed: 3, spread: 1.0);
        var train = arange(0, 600, 2);
        var test = arange(1, 600, 2);
        long[] Pick(long[] v, Tensor idx) => idx.data<long>().Select(i => v[i]).ToArray();
        var (xtr, xte, ytr, yte) = (x.index_select(0, train), x.index_select(0, test), Pick(y, train), Pick(y, test));
        Assert.True(Probes.LinearProbe(xtr, ytr, xte, yte, 3, epochs: 20, lr: 0.05, weightDecay: 0, batch: 64, seed: 0).Accuracy > 0.97);
        Assert.True(Probes.Knn(xtr, ytr, xte, yte, 3, k: 10, temperature: 0.07) > 0.97);
        var rng = new Random(0);
        var noise = ytr.Select(_ => (long)rng.Next(3)).ToArray();
        Assert.True(Probes.Knn(xtr, noise, xte, yte, 3, k: 10, temperature: 0.07) < 0.6);
    }

    [Fact]
    public void The_linear_probe_stops_when_converged_near_what_much_longer_training_reaches()
    {
        // features of a briefly pre-trained MAE on the committed Fashion-MNIST sample, 1000 train / 500 test images
        using var data = Tiny.TrainSample();
        using var trainer = new Training.DenseTrainer(Tiny.Model, Tiny.Train(steps: 30), data);
        for (int i = 0; i < 30; i++) trainer.TrainStep();
        using var feats = Features.Extract(trainer.Model, data, Enumerable.Range(0, 1000).ToList());
        var labels = data.Labels.Select(l => (long)l).ToArray();
        var (xtr, xte) = (feats.narrow(0, 0, 700), feats.narrow(0, 700, 300));
        var (ytr, yte) = (labels[..700], labels[700..1000]);

        var probe = Probes.LinearProbe(xtr, ytr, xte, yte, 10, epochs: 300, lr: 1e-2, weightDecay: 0, batch: 256, seed: 0, tol: 1e-3);
        Assert.True(probe.Converged, $"not converged in {probe.Epochs} epochs (loss {probe.TrainLoss})");
        Assert.InRange(probe.Epochs, 3, 299);                                 // it stopped early, by the criterion
        var longer = Probes.LinearProbe(xtr, ytr, xte, yte, 10, epochs: 300, lr: 1e-2, weightDecay: 0, batch: 256, seed: 0, tol: 1e-6);
        Assert.True(longer.Epochs > probe.Epochs, $"a stricter tolerance trained {longer.Epochs} epochs, no more than {probe.Epochs}");
        // what it left on the table: the converged training loss is within 10% of where far longer training gets
        Assert.True(probe.TrainLoss <= 1.10 * longer.TrainLoss, $"converged loss {probe.TrainLoss:F4} vs {longer.TrainLoss:F4} after {longer.Epochs} epochs");
        Assert.InRange(probe.Accuracy, 0.4, 1.0);
        var tooShort = Probes.LinearProbe(xtr, ytr, xte, yte, 10, epochs: 2, lr: 1e-2, weightDecay: 0, batch: 256, seed: 0);
        Assert.False(tooShort.Converged);                                     // and a probe cut short says so
    }
}
