using MoCE.Core.Model;
using static TorchSharp.torch;

namespace MoCE.Core.Tests;

/// <summary>Splitting an expert's gate row: the clusters it held divide between it and the new expert, decisively,
/// and every other cluster keeps its expert and its logits.</summary>
public class ExpertSplitTests
{
    [Fact]
    public void A_split_divides_the_source_s_clusters_in_two_halves_and_leaves_the_others_alone()
    {
        var g = new Generator(5);
        const int clusters = 12, gateDim = 16, experts = 3, source = 1;
        var emb = randn(clusters, gateDim, generator: g, dtype: ScalarType.Float64);
        var w = randn(experts, gateDim, generator: g, dtype: ScalarType.Float64);
        var before = emb.matmul(w.t());
        var owner = before.argmax(1);
        var mine = Enumerable.Range(0, clusters).Where(c => owner[c].item<long>() == source).ToList();
        Assert.True(mine.Count >= 2, $"the seed should give expert {source} at least two clusters, it has {mine.Count}");

        const double margin = 3.0;
        var delta = ExpertSplit.Direction(w, emb, source, margin);
        var grown = ExpertSplit.SplitRows(w, delta, source);
        Assert.Equal(new long[] { experts + 1, gateDim }, grown.shape);
        var after = emb.matmul(grown.t());

        // the source's clusters: ⌊n/2⌋ now lead with the new expert by 2m, the rest stay with the source by 2m
        var gap = mine.Select(c => (after[c, experts] - after[c, source]).item<double>()).ToList();
        Assert.Equal(mine.Count / 2, gap.Count(d => Math.Abs(d - 2 * margin) < 1e-9));
        Assert.Equal(mine.Count - mine.Count / 2, gap.Count(d => Math.Abs(d + 2 * margin) < 1e-9));
        // every other cluster: the other experts' logits unchanged, and the new and the source rows tie on it
        for (int c = 0; c < clusters; c++)
        {
            for (int e = 0; e < experts; e++)
                if (e != source) Assert.Equal(before[c, e].item<double>(), after[c, e].item<double>(), 12);
            if (!mine.Contains(c)) Assert.Equal(after[c, source].item<double>(), after[c, experts].item<double>(), 9);
        }
        for (int e = 0; e < experts; e++)                                         // the other rows are untouched, bit for bit
            if (e != source) Assert.Equal(w[e].data<double>().ToArray(), grown[e].data<double>().ToArray());
        // the moments of the new row are the source row's
        var m = randn(experts, gateDim, generator: g);
        Assert.Equal(m[source].data<float>().ToArray(), ExpertSplit.CopyRow(m, source)[experts].data<float>().ToArray());
    }

    [Fact]
    public void Without_clusters_or_with_a_single_one_the_rows_are_copied_and_the_mass_divides_evenly()
    {
        var g = new Generator(6);
        var w = randn(3, 8, generator: g);
        Assert.Equal(0.0, ExpertSplit.Direction(w, null, 0, 2.0).abs().sum().item<float>());        // TokenMoE: no clusters
        var emb = w[2].unsqueeze(0).clone() * 10;                                                 // one cluster, held by expert 2
        Assert.Equal(0.0, ExpertSplit.Direction(w, emb, 2, 2.0).abs().sum().item<float>());
        var grown = ExpertSplit.SplitRows(w, zeros(8), 2);
        Assert.Equal(w[2].data<float>().ToArray(), grown[3].data<float>().ToArray());
    }
}
