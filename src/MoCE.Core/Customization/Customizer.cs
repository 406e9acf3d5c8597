using MoCE.Core.Model;
using static TorchSharp.torch;

namespace MoCE.Core.Customization;

/// <summary>The experts a task gets: per MoE block, the chosen expert, its combination weight, and every expert's
/// score Σ_c h(c)·g(c)_e.</summary>
public sealed record ExpertChoice(int Block, int Expert, double Weight, double[] Scores);

/// <summary>Task customization: the task's cluster histogram h picks, in each MoE layer,
/// e* = argmax_e Σ_c h(c)·g(c)_e, and those experts are written into a dense ViT of the dense MAE's size.</summary>
public static class Customizer
{
    /// <summary>h(c): the share of the task's images in cluster c.</summary>
    public static double[] Histogram(IEnumerable<long> clusterIds, int clusters)
    {
        var h = new double[clusters];
        long n = 0;
        foreach (var c in clusterIds)
        {
            if (c < 0 || c >= clusters) throw new ArgumentOutOfRangeException(nameof(clusterIds), $"cluster id {c} outside [0, {clusters})");
            h[c]++;
            n++;
        }
        if (n == 0) throw new ArgumentException("the task has no images");
        for (int c = 0; c < clusters; c++) h[c] /= n;
        return h;
    }

    /// <summary>Chooses each MoE layer's expert. With <paramref name="foldGateWeight"/> the combination weight is
    /// the chosen expert's expected gate mass on the task, Σ_c h(c)·g(c)_e*, folded into the extracted fc2 (as
    /// the full model scales an expert's output by its gate weight); otherwise 1.</summary>
    public static IReadOnlyList<ExpertChoice> Choose(MaskedAutoencoder model, double[] h, bool foldGateWeight)
    {
        var choices = new List<ExpertChoice>();
        using var _ = no_grad();
        foreach (var (block, layer) in model.MoeLayers.OrderBy(kv => kv.Key))
        {
            if (layer.Clusters != h.Length)
                throw new ArgumentException($"histogram over {h.Length} clusters, block {block}'s gate has {layer.Clusters}");
            using var g = layer.ClusterGate();                                   // [C, E]
            using var hist = tensor(h).to_type(g.dtype);
            var scores = hist.matmul(g).to_type(ScalarType.Float64).data<double>().ToArray(); // Σ_c h(c)·g(c)_e
            int best = Array.IndexOf(scores, scores.Max());
            choices.Add(new ExpertChoice(block, best, foldGateWeight ? scores[best] : 1.0, scores));
        }
        if (choices.Count == 0) throw new ArgumentException("the model has no MoCE layers to customize");
        return choices;
    }

    public static IReadOnlyDictionary<int, (int expert, double weight)> AsRoute(IEnumerable<ExpertChoice> choices) =>
        choices.ToDictionary(c => c.Block, c => (c.Expert, c.Weight));

    public static long ParameterCount(nn.Module m) => m.parameters().Sum(p => p.numel());
}
