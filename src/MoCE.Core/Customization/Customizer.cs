using MoCE.Core.Model;
using static TorchSharp.torch;

namespace MoCE.Core.Customization;

/// <summary>The experts a task gets: per MoE block, the chosen expert, its combination weight, and every expert's
/// score Σ_c h(c)·g(c)_e.</summary>
public sealed record ExpertChoice(int Block, int Expert, double Weight, double[] Scores);

/// <summary>The weight the extracted expert's fc2 is scaled by (moce.customize.fold-gate-weight). The full model scales
/// an image's expert output by its gate weight g(c)_e for the image's cluster c.
/// <list type="bullet">
/// <item><see cref="Routed"/>: the weight the task's images routed to e* used, Σ_{c→e*} h(c)·g(c)_e* / Σ_{c→e*} h(c) over
/// the clusters whose top expert is e* (all of the task's clusters when none is).</item>
/// <item><see cref="Expected"/>: the expected gate mass Σ_c h(c)·g(c)_e* over all of the task's clusters, including those routed
/// elsewhere. With a hard gate and a task whose clusters span several experts it is far below any weight the model
/// applied (0.45 where every routed image used ≈ 1).</item>
/// <item><see cref="Off"/>: 1.</item>
/// </list></summary>
public enum GateFold { Routed, Expected, Off }

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

    /// <summary>Chooses each MoE layer's expert, e* = argmax_e Σ_c h(c)·g(c)_e, and its combination weight as
    /// <paramref name="fold"/> says.</summary>
    public static IReadOnlyList<ExpertChoice> Choose(MaskedAutoencoder model, double[] h, GateFold fold)
    {
        var choices = new List<ExpertChoice>();
        using var _ = no_grad();
        foreach (var (block, layer) in model.MoeLayers.OrderBy(kv => kv.Key))
        {
            if (layer.Clusters != h.Length)
                throw new ArgumentException($"histogram over {h.Length} clusters, block {block}'s gate has {layer.Clusters}");
            using var g = layer.ClusterGate();                                   // [C, E]
            var gate = g.to_type(ScalarType.Float64).data<double>().ToArray();
            int experts = (int)g.shape[1];
            var scores = new double[experts];                                     // Σ_c h(c)·g(c)_e
            for (int c = 0; c < h.Length; c++)
                for (int e = 0; e < experts; e++) scores[e] += h[c] * gate[c * experts + e];
            int best = Array.IndexOf(scores, scores.Max());
            double weight = fold switch
            {
                GateFold.Off => 1.0,
                GateFold.Expected => scores[best],
                _ => RoutedWeight(h, gate, experts, best) ?? scores[best],
            };
            choices.Add(new ExpertChoice(block, best, weight, scores));
        }
        if (choices.Count == 0) throw new ArgumentException("the model has no MoCE layers to customize");
        return choices;
    }

    /// <summary>Σ_{c→e} h(c)·g(c)_e / Σ_{c→e} h(c) over the task's clusters whose top expert is e (ties: the first);
    /// null when none is (then the mass over all of them, the expected weight, is used).</summary>
    private static double? RoutedWeight(double[] h, double[] gate, int experts, int e)
    {
        double mass = 0, weighted = 0;
        for (int c = 0; c < h.Length; c++)
        {
            if (h[c] == 0) continue;
            var row = new ReadOnlySpan<double>(gate, c * experts, experts);
            int top = 0;
            for (int k = 1; k < experts; k++) if (row[k] > row[top]) top = k;
            if (top != e) continue;
            mass += h[c];
            weighted += h[c] * row[e];
        }
        return mass > 0 ? weighted / mass : null;
    }

    public static IReadOnlyDictionary<int, (int expert, double weight)> AsRoute(IEnumerable<ExpertChoice> choices) =>
        choices.ToDictionary(c => c.Block, c => (c.Expert, c.Weight));

    public static long ParameterCount(nn.Module m) => m.parameters().Sum(p => p.numel());
}
