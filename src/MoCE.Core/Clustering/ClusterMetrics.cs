namespace MoCE.Core.Clustering;

/// <summary>Agreement between a clustering and reference labels. Labels are for reports and tests only; they
/// never enter training.</summary>
public static class ClusterMetrics
{
    private static Dictionary<(long, long), long> Contingency(IReadOnlyList<long> a, IReadOnlyList<long> b)
    {
        if (a.Count != b.Count) throw new ArgumentException($"{a.Count} cluster ids but {b.Count} labels");
        var t = new Dictionary<(long, long), long>();
        for (int i = 0; i < a.Count; i++) t[(a[i], b[i])] = t.GetValueOrDefault((a[i], b[i])) + 1;
        return t;
    }

    /// <summary>Per cluster: its size, its most frequent label and that label's share (purity).</summary>
    public static IReadOnlyList<(long cluster, long size, long majorityLabel, double purity)> Purity(IReadOnlyList<long> clusters, IReadOnlyList<long> labels)
    {
        return Contingency(clusters, labels).GroupBy(kv => kv.Key.Item1).OrderBy(g => g.Key).Select(g =>
        {
            long size = g.Sum(kv => kv.Value);
            var top = g.MaxBy(kv => kv.Value);
            return (g.Key, size, top.Key.Item2, top.Value / (double)size);
        }).ToList();
    }

    /// <summary>Normalized mutual information, I(A;B) / ((H(A) + H(B)) / 2), as sklearn's default.</summary>
    public static double Nmi(IReadOnlyList<long> a, IReadOnlyList<long> b)
    {
        double n = a.Count;
        var pa = a.GroupBy(x => x).ToDictionary(g => g.Key, g => g.Count() / n);
        var pb = b.GroupBy(x => x).ToDictionary(g => g.Key, g => g.Count() / n);
        double mi = Contingency(a, b).Sum(kv =>
        {
            double p = kv.Value / n;
            return p * Math.Log(p / (pa[kv.Key.Item1] * pb[kv.Key.Item2]));
        });
        double ha = -pa.Values.Sum(p => p * Math.Log(p)), hb = -pb.Values.Sum(p => p * Math.Log(p));
        return ha + hb == 0 ? 1.0 : mi / ((ha + hb) / 2);
    }

    /// <summary>Adjusted Rand index (Hubert &amp; Arabie 1985).</summary>
    public static double AdjustedRand(IReadOnlyList<long> a, IReadOnlyList<long> b)
    {
        static double C2(double x) => x * (x - 1) / 2;
        double n = a.Count;
        double sumCells = Contingency(a, b).Values.Sum(v => C2(v));
        double sumA = a.GroupBy(x => x).Sum(g => C2(g.Count()));
        double sumB = b.GroupBy(x => x).Sum(g => C2(g.Count()));
        double expected = sumA * sumB / C2(n);
        double max = (sumA + sumB) / 2;
        return max == expected ? 1.0 : (sumCells - expected) / (max - expected);
    }
}
