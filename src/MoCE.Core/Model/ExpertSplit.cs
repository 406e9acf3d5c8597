using static TorchSharp.torch;

namespace MoCE.Core.Model;

/// <summary>Growing a MoE layer by one expert, split from a source expert b: the new expert starts as a copy of b
/// (weights and AdamW moments), and b's gate row becomes two rows, w_b − δ (b) and w_b + δ (the new one).
/// MoCE: the clusters whose top gate choice is b are ordered along the first principal direction of their embeddings
/// and cut at the median; δ is the least-norm solution of emb[c]·δ = +m for the upper half, −m for the lower half and
/// 0 for every other cluster, so b's clusters divide between the two (the new expert's logit leads b's by 2m on its
/// half and trails by 2m on the other) while the other clusters' logits stay as they were. m = margin·τ.
/// With one cluster or none on b (and for TokenMoE, whose gate reads tokens, not clusters) δ = 0: the two rows are
/// equal, b's gate mass divides evenly, and the training gate noise breaks the tie.</summary>
public static class ExpertSplit
{
    /// <summary>δ for splitting expert <paramref name="source"/> of gate weight <paramref name="w"/> [E, G], given the
    /// cluster embeddings <paramref name="emb"/> [C, G] (null for TokenMoE). Float64 on the CPU; returns [G] in w's dtype.</summary>
    public static Tensor Direction(Tensor w, Tensor? emb, int source, double margin)
    {
        using var scope = NewDisposeScope();
        if (emb is null) return zeros(w.shape[1], dtype: w.dtype).MoveToOuterDisposeScope();
        var e = emb.detach().cpu().to_type(ScalarType.Float64);
        var owner = e.matmul(w.detach().cpu().to_type(ScalarType.Float64).t()).argmax(1);           // [C]: each cluster's top expert
        var mine = owner.eq(source).nonzero().flatten();
        if (mine.numel() < 2) return zeros(w.shape[1], dtype: w.dtype).MoveToOuterDisposeScope();
        var x = e.index_select(0, mine);
        var centred = x - x.mean([0], keepdim: true);
        var (_, _, vh) = linalg.svd(centred, fullMatrices: false);
        var u = vh[0];
        if (u.sum().item<double>() < 0) u = -u;                                     // the sign SVD leaves open, fixed
        var order = centred.matmul(u).sort(0, descending: false, stable: true).Indices; // ascending projection, ties in index order
        long n = mine.numel(), upper = n / 2;                                        // the upper half moves to the new expert
        var target = zeros(e.shape[0], dtype: ScalarType.Float64);
        target.index_put_(tensor(-1.0, dtype: ScalarType.Float64), mine.index_select(0, order[..(int)(n - upper)]));
        target.index_put_(tensor(1.0, dtype: ScalarType.Float64), mine.index_select(0, order[(int)(n - upper)..]));
        var delta = linalg.pinv(e).matmul(target) * margin;                        // least norm: emb·δ = target·m
        return delta.to_type(w.dtype).MoveToOuterDisposeScope();
    }

    /// <summary>The gate weight with expert <paramref name="source"/> split: row b becomes w_b − δ and a new last row
    /// w_b + δ is appended ([E+1, G]).</summary>
    public static Tensor SplitRows(Tensor w, Tensor delta, int source)
    {
        using var scope = NewDisposeScope();
        var row = w[source];
        var grown = cat([w, (row + delta).unsqueeze(0)], 0);
        grown[source] = row - delta;
        return grown.MoveToOuterDisposeScope();
    }

    /// <summary>A per-row state (an AdamW moment of the gate weight) grown with the new row a copy of the source's.</summary>
    public static Tensor CopyRow(Tensor state, int source) => cat([state, state[source].unsqueeze(0)], 0);
}
