namespace MoCE.Core.Config;

/// <summary>How the MLPs of the configured encoder blocks become experts.</summary>
public enum MoeMethod
{
    /// <summary>No experts: the dense MAE (the baseline, trained further for the same number of steps).</summary>
    Dense,
    /// <summary>Mixture of Cluster-conditional Experts: the gate reads the image's cluster.</summary>
    Moce,
    /// <summary>The TokenMoE baseline: the gate reads each token, with a load-balancing loss.</summary>
    TokenMoe,
}

/// <summary>The mixture-of-experts layers and the losses that go with them. E experts, C clusters.</summary>
public sealed record MoeConfig
{
    /// <summary>Which model to train: dense, moce or token-moe.</summary>
    public MoeMethod Method { get; init; } = MoeMethod.Moce;
    /// <summary>Experts E per MoE layer.</summary>
    public int Experts { get; init; } = 4;
    /// <summary>Experts chosen per image (MoCE) or per token (TokenMoE).</summary>
    public int TopK { get; init; } = 1;
    /// <summary>0-based encoder blocks whose MLP becomes a MoE layer.</summary>
    public IReadOnlyList<int> Layers { get; init; } = [1, 3];
    /// <summary>Width of the learned cluster-embedding table emb[C, gate-dim].</summary>
    public int GateDim { get; init; } = 16;
    /// <summary>Softmax temperature τ of the gate.</summary>
    public double Temperature { get; init; } = 1.0;
    /// <summary>Standard deviation of the Gaussian noise added to gate logits during training.</summary>
    public double GateNoise { get; init; } = 1.0;
    /// <summary>Upcycling noise: each expert starts as the dense MLP plus N(0, (noise·std(w))²) per weight.</summary>
    public double UpcycleNoise { get; init; } = 0.01;
    /// <summary>λ_route: weight of mean_c H(g(c)) − H(mean_c g(c)) (MoCE).</summary>
    public double LambdaRoute { get; init; } = 0.1;
    /// <summary>λ_distill: weight of the feature distillation from the frozen dense teacher.</summary>
    public double LambdaDistill { get; init; } = 1.0;
    /// <summary>The dense arm of the MoE phase is distilled too (λ_distill, same teacher): the same regulariser on every arm.</summary>
    public bool DistillDense { get; init; }
    /// <summary>λ_balance: weight of the TokenMoE load-balancing loss E·Σ_e f_e·P_e.</summary>
    public double LambdaBalance { get; init; } = 0.01;
    /// <summary>MoCE gate at step 0: random, or from the k-means centroids (similar clusters on the same expert).</summary>
    public bool GateFromCentroids { get; init; }
    /// <summary>The share of each MoE layer's MLP hidden units that forms a universal expert every row uses, beside the
    /// routed ones (MoCLE's universal expert). The routed experts keep the rest, so a row still uses the dense MLP's
    /// width and a customized encoder keeps the dense MAE's size (the split of DeepSeekMoE's shared experts). 0: none.</summary>
    public double SharedFraction { get; init; }

    /// <summary>The hidden units of a MoE layer whose dense MLP has <paramref name="hidden"/>: the universal expert's
    /// (0 without one) and each routed expert's.</summary>
    public (int shared, int routed) SplitHidden(int hidden)
    {
        int s = Method == MoeMethod.Dense ? 0 : (int)Math.Round(hidden * SharedFraction);
        if (hidden - s < 1) throw new ConfigException("moce.moe.shared-fraction", $"leaves the routed experts no hidden unit of {hidden}");
        return (s, hidden - s);
    }

    public MoeConfig Validate(int depth)
    {
        void Require(bool ok, string key, string why) { if (!ok) throw new ConfigException($"moce.moe.{key}", why); }
        Require(Experts >= 1, "experts", "must be at least 1");
        Require(TopK >= 1 && TopK <= Experts, "top-k", $"must be in [1, experts = {Experts}]");
        Require(Method == MoeMethod.Dense || Layers.Count > 0, "layers", "must name at least one block");
        Require(Layers.All(l => l >= 0 && l < depth), "layers", $"blocks must be in [0, depth = {depth})");
        Require(Layers.Distinct().Count() == Layers.Count, "layers", "lists a block twice");
        Require(GateDim >= 1, "gate-dim", "must be positive");
        Require(Temperature > 0, "temperature", "must be positive");
        Require(GateNoise >= 0, "gate-noise", "must be non-negative");
        Require(UpcycleNoise >= 0, "upcycle-noise", "must be non-negative");
        Require(LambdaRoute >= 0, "lambda-route", "must be non-negative");
        Require(LambdaDistill >= 0, "lambda-distill", "must be non-negative");
        Require(LambdaBalance >= 0, "lambda-balance", "must be non-negative");
        Require(SharedFraction >= 0 && SharedFraction < 1, "shared-fraction", "must be in [0, 1)");
        return this;
    }
}
