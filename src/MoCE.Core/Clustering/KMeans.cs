using MoCE.Core.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Core.Clustering;

/// <summary>Result of k-means: centroids [C, D], the id of each point [N] and the final inertia Σ‖x − c‖².</summary>
public sealed record KMeansResult(Tensor Centroids, long[] Assignments, double Inertia, int Iterations) : IDisposable
{
    public void Dispose() => Centroids.Dispose();
}

/// <summary>Lloyd's k-means with k-means++ seeding (Arthur &amp; Vassilvitskii 2007), deterministic for a seed.
/// Distances are computed in chunks of rows, so memory stays bounded by chunk × C.</summary>
public static class KMeans
{
    public static KMeansResult Fit(Tensor x, int k, long seed, int maxIter = 100, double tol = 1e-6, int chunk = 4096,
                                   Action<int, double>? onIteration = null)
    {
        long n = x.shape[0];
        if (x.dim() != 2) throw new ArgumentException($"k-means needs [N, D] features, got [{string.Join(", ", x.shape)}]");
        if (k < 1 || k > n) throw new ArgumentException($"k = {k} must be in [1, {n}]");
        using var scope = NewDisposeScope();
        var pts = x.to_type(ScalarType.Float32).contiguous();
        var rng = new SplitMix64(Seeds.Derive(seed, Seeds.Stream.KMeans, 0));
        var centroids = PlusPlus(pts, k, ref rng, chunk);
        long[] assign = [];
        double inertia = double.NaN;
        int it = 0;
        for (it = 1; it <= maxIter; it++)
        {
            var (ids, d2) = Nearest(pts, centroids, chunk);
            var newAssign = ids.data<long>().ToArray();
            inertia = d2.sum().to_type(ScalarType.Float64).item<double>();
            // update: c_j = mean of the points assigned to j (an empty cluster takes the farthest point)
            var sums = zeros(k, pts.shape[1]).index_add_(0, ids, pts, Runtime.Scalars.One);
            var counts = bincount(ids, minlength: k).to_type(ScalarType.Float32);
            var next = sums / counts.clamp_min(1).unsqueeze(1);
            var empty = counts.eq(0).nonzero().flatten().data<long>().ToArray();
            if (empty.Length > 0)
            {
                var far = d2.argsort(descending: true);
                for (int e = 0; e < empty.Length; e++) next[empty[e]] = pts[far[e]];
            }
            double shift = (next - centroids).pow(2).sum(1).max().item<float>();
            bool same = assign.AsSpan().SequenceEqual(newAssign);
            centroids = next;
            assign = newAssign;
            onIteration?.Invoke(it, inertia);
            if (same || shift <= tol) break;
        }
        var (finalIds, finalD2) = Nearest(pts, centroids, chunk);
        assign = finalIds.data<long>().ToArray();
        inertia = finalD2.sum().to_type(ScalarType.Float64).item<double>();
        return new KMeansResult(centroids.MoveToOuterDisposeScope(), assign, inertia, Math.Min(it, maxIter));
    }

    /// <summary>The nearest centroid of each row: ids [N] and squared distances [N].</summary>
    public static (Tensor ids, Tensor d2) Nearest(Tensor x, Tensor centroids, int chunk = 4096)
    {
        var ids = new List<Tensor>();
        var dists = new List<Tensor>();
        var cn = centroids.pow(2).sum(1);                         // [C]
        for (long s = 0; s < x.shape[0]; s += chunk)
        {
            var xs = x.narrow(0, s, Math.Min(chunk, x.shape[0] - s));
            // ‖x − c‖² = ‖x‖² − 2 x·c + ‖c‖²
            var d = xs.pow(2).sum(1, keepdim: true) - 2 * xs.matmul(centroids.t()) + cn; // [chunk, C]
            var (v, i) = d.min(1);
            ids.Add(i);
            dists.Add(v.clamp_min(0));
        }
        return (cat(ids, 0), cat(dists, 0));
    }

    /// <summary>k-means++: the first centroid uniformly, each next one with probability ∝ D(x)², the squared
    /// distance to the nearest centroid chosen so far.</summary>
    private static Tensor PlusPlus(Tensor x, int k, ref SplitMix64 rng, int chunk)
    {
        long n = x.shape[0];
        var chosen = new List<long> { (long)rng.NextBelow((ulong)n) };
        var d2 = (x - x[chosen[0]]).pow(2).sum(1);               // [N]
        for (int j = 1; j < k; j++)
        {
            var w = d2.to_type(ScalarType.Float64).data<double>().ToArray();
            double total = w.Sum();
            long pick;
            if (total <= 0) pick = (long)rng.NextBelow((ulong)n);  // all points coincide with centroids
            else
            {
                double u = (rng.Next() >> 11) * (1.0 / (1UL << 53)) * total, acc = 0;
                pick = n - 1;
                for (long i = 0; i < n; i++) { acc += w[i]; if (acc > u) { pick = i; break; } }
            }
            chosen.Add(pick);
            d2 = minimum(d2, (x - x[pick]).pow(2).sum(1));
        }
        return x.index_select(0, tensor(chosen.ToArray()));
    }
}
