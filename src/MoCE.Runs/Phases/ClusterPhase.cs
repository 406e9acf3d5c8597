using System.Globalization;
using System.Text;
using System.Text.Json;
using MoCE.Core.Clustering;
using MoCE.Core.Data;
using MoCE.Core.Evaluation;
using Serilog;

namespace MoCE.Runs;

/// <summary><c>moce cluster</c>: k-means over the dense MAE's features (mean of the unmasked patch tokens) of
/// every training image; writes the centroids, each image's cluster and a report (sizes, purity, NMI).</summary>
public static class ClusterPhase
{
    public static void Execute(Session s)
    {
        var dir = s.Run.Phase("cluster");
        var (dense, sha) = Artifacts.Dense(s);
        using var _ = dense;
        using var data = s.Data.PretrainSet();
        if (ClusteringResult.Exists(dir))
        {
            using var existing = ClusteringResult.Load(dir);
            if (existing.DenseSha256 == sha && existing.K == s.Config.Cluster.K && existing.TrainIds.Length == data.Count)
            {
                Log.Information("Clustering already done for dense checkpoint {Sha}… ({K} clusters); skipping", sha[..16], existing.K);
                return;
            }
            Log.Warning("Existing clustering does not match this dense checkpoint or k; recomputing");
        }
        using var model = Artifacts.DenseModel(s, dense);
        Log.Information("Extracting features of {Count} images from dense checkpoint {Sha}…", data.Count, sha[..16]);
        int lastPct = -1;
        using var feats = Features.Extract(model, data, Enumerable.Range(0, data.Count).ToList(),
            batch: s.Config.Cluster.FeatureBatch, device: s.Device, progress: (done, total) =>
            {
                int pct = done * 100 / total;
                if (pct / 20 != lastPct / 20) { lastPct = pct; Log.Information("features {Done}/{Total}", done, total); }
            });
        var c = s.Config.Cluster;
        using var km = KMeans.Fit(feats, c.K, s.Config.Pretrain.Seed, c.MaxIter, c.Tol,
            onIteration: (it, inertia) => { if (it % 10 == 0) Log.Information("k-means iteration {It}: inertia {Inertia:F1}", it, inertia); });
        Log.Information("k-means: {K} clusters after {It} iterations, inertia {Inertia:F1}", c.K, km.Iterations, km.Inertia);

        var result = new ClusteringResult { Centroids = km.Centroids, TrainIds = km.Assignments, DenseSha256 = sha, DataSource = data.Source };
        result.Save(dir);
        WriteReport(dir, km.Assignments, data, sha);
    }

    private static void WriteReport(string dir, long[] ids, ImageDataset data, string sha)
    {
        var labels = data.Labels.Select(l => (long)l).ToArray();
        var domains = Enumerable.Range(0, data.Count).Select(i => (long)data.DomainOf(i)).ToArray();
        var purity = ClusterMetrics.Purity(ids, labels);
        double nmi = ClusterMetrics.Nmi(ids, labels), ari = ClusterMetrics.AdjustedRand(ids, labels);
        double weighted = purity.Sum(p => p.purity * p.size) / ids.Length;
        var domainPurity = ClusterMetrics.Purity(ids, domains).ToDictionary(p => p.cluster);
        double domainWeighted = domainPurity.Values.Sum(p => p.purity * p.size) / ids.Length;
        var md = new StringBuilder();
        md.AppendLine($"# Clustering of {ids.Length} training images");
        md.AppendLine();
        md.AppendLine($"Features: dense MAE checkpoint `{sha[..16]}…`, mean of unmasked patch tokens. Labels are used only for this report.");
        md.AppendLine();
        md.AppendLine(string.Create(CultureInfo.InvariantCulture, $"NMI with the labels: **{nmi:F3}**; ARI: {ari:F3}; size-weighted purity: {weighted:F3}."));
        if (data.DomainNames.Count > 1)
            md.AppendLine(string.Create(CultureInfo.InvariantCulture, $"Sources {string.Join(", ", data.DomainNames)}: size-weighted domain purity **{domainWeighted:F3}**."));
        md.AppendLine();
        md.AppendLine("| cluster | images | majority class | purity | majority source | source purity |");
        md.AppendLine("|---:|---:|---|---:|---|---:|");
        foreach (var p in purity)
            md.AppendLine(string.Create(CultureInfo.InvariantCulture, $"| {p.cluster} | {p.size} | {data.ClassNames[(int)p.majorityLabel]} | {p.purity:F3} | {data.DomainNames[(int)domainPurity[p.cluster].majorityLabel]} | {domainPurity[p.cluster].purity:F3} |"));
        File.WriteAllText(Path.Combine(dir, "report.md"), md.ToString());
        File.WriteAllText(Path.Combine(dir, "report.json"), JsonSerializer.Serialize(new
        {
            images = ids.Length, nmi, ari, weighted_purity = weighted, domain_weighted_purity = domainWeighted,
            clusters = purity.Select(p => new { p.cluster, p.size, majority = data.ClassNames[(int)p.majorityLabel], p.purity,
                source = data.DomainNames[(int)domainPurity[p.cluster].majorityLabel], source_purity = domainPurity[p.cluster].purity }),
        }, new JsonSerializerOptions { WriteIndented = true }));
        Log.Information("Cluster report: NMI {Nmi:F3}, ARI {Ari:F3}, weighted purity {Purity:F3}, sizes {Sizes} → {Path}",
            nmi, ari, weighted, string.Join(",", purity.Select(p => p.size)), Path.Combine(dir, "report.md"));
    }
}
