using MoCE.Core.Config;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace MoCE.Core.Model;

#pragma warning disable IDE1006 // module field names are the saved weight names

/// <summary>What a MoE layer needs besides its input: each image's cluster id [N] (int64), the generator for
/// this step's gate noise (null in evaluation), and optionally a forced route (customization checks).</summary>
public sealed record GateInput(Tensor ClusterIds, Generator? Noise = null, ForcedRoute? Forced = null);

/// <summary>Send every image to one expert with a fixed combination weight.</summary>
public sealed record ForcedRoute(IReadOnlyDictionary<int, (int expert, double weight)> PerBlock);

/// <summary>One MoE layer's routing in a forward pass. Rows are images (MoCE) or tokens (TokenMoE):
/// gate probabilities [R, E], chosen experts [R, k], their weights [R, k], and the layer's auxiliary loss
/// (routing regularizer or load balance).</summary>
public sealed record RouteStats(int Block, Tensor Probs, Tensor Choice, Tensor Weights, Tensor Aux, long TokensPerRow);

/// <summary>A mixture-of-experts MLP. For MoCE the gate reads the image's cluster:
/// g(c) = softmax((W·emb[c] + noise) / τ), and every token of an image follows that image's top-k choice.
/// For TokenMoE the gate reads each token. The output is Σ_{e ∈ top-k} g_e · expert_e(x).</summary>
public sealed class MoeLayer : Module<Tensor, GateInput, (Tensor output, RouteStats stats)>
{
    private readonly MoeConfig cfg;
    private readonly int blockIndex;
    private readonly ModuleList<Mlp> experts;
    private readonly Parameter? emb;   // [C, Dg] cluster embeddings (MoCE)
    private readonly Linear w_gate;    // MoCE: Dg → E; TokenMoE: D → E

    public MoeLayer(MoeConfig cfg, int blockIndex, int dim, int hidden, int clusters) : base(nameof(MoeLayer))
    {
        this.cfg = cfg;
        this.blockIndex = blockIndex;
        experts = ModuleList(Enumerable.Range(0, cfg.Experts).Select(_ => new Mlp(dim, hidden)).ToArray());
        if (cfg.Method == MoeMethod.Moce) emb = Parameter(zeros(clusters, cfg.GateDim));
        w_gate = Linear(cfg.Method == MoeMethod.Moce ? cfg.GateDim : dim, cfg.Experts, hasBias: false);
        RegisterComponents();
    }

    public ModuleList<Mlp> Experts => experts;
    public int Clusters => emb is null ? 0 : (int)emb.shape[0];

    /// <summary>Upcycling: every expert = the dense MLP + relative noise; gate: emb ~ N(0, 1), W xavier.</summary>
    public void Upcycle(IReadOnlyDictionary<string, Tensor> src, Generator gen)
    {
        using var _ = no_grad();
        foreach (var expert in experts)
            foreach (var (name, p) in expert.state_dict())
            {
                var w = src.TryGetValue(name, out var t) ? t : throw new InvalidDataException($"dense MLP weights lack '{name}'");
                using var n = randn(w.shape, generator: gen);
                p.copy_(w + n * (cfg.UpcycleNoise * (w.numel() > 1 ? w.std().item<float>() : 0)));
            }
        if (emb is not null) { using var e = randn(emb.shape, generator: gen); emb.copy_(e); }
        double bound = Math.Sqrt(6.0 / (w_gate.weight!.shape[0] + w_gate.weight.shape[1]));
        using var u = rand(w_gate.weight.shape, generator: gen);
        w_gate.weight.copy_(u * (2 * bound) - bound);
    }

    /// <summary>Gate probabilities of every cluster without noise: [C, E] (MoCE only).</summary>
    public Tensor ClusterGate()
    {
        if (emb is null) throw new InvalidOperationException("only a MoCE layer has a cluster gate");
        return softmax(w_gate.forward(emb) / cfg.Temperature, 1);
    }

    public override (Tensor output, RouteStats stats) forward(Tensor x, GateInput gate) => // x: [N, T, D]
        cfg.Method == MoeMethod.TokenMoe ? ForwardTokens(x, gate) : ForwardImages(x, gate);

    private (Tensor, RouteStats) ForwardImages(Tensor x, GateInput gate)
    {
        // g(c) = softmax((W·emb[c] + noise) / τ), one row per image
        var logits = w_gate.forward(emb!.index_select(0, gate.ClusterIds));                    // [N, E]
        if (gate.Noise is not null && cfg.GateNoise > 0)
            logits = logits + randn(logits.shape, generator: gate.Noise).to(logits.device) * cfg.GateNoise;
        var probs = softmax(logits / cfg.Temperature, 1);                                       // [N, E]
        var (weights, choice) = Choose(probs, gate);                                            // [N, k]
        var aux = RoutingRegularizer(probs);
        var y = Dispatch(x, choice, weights);
        return (y, new RouteStats(blockIndex, probs, choice, weights, aux, x.shape[1]));
    }

    private (Tensor, RouteStats) ForwardTokens(Tensor x, GateInput gate)
    {
        long n = x.shape[0], t = x.shape[1], d = x.shape[2];
        var flat = x.reshape(n * t, 1, d);                                                      // each token a "row"
        var logits = w_gate.forward(flat.squeeze(1));                                           // [N·T, E]
        if (gate.Noise is not null && cfg.GateNoise > 0)
            logits = logits + randn(logits.shape, generator: gate.Noise).to(logits.device) * cfg.GateNoise;
        var probs = softmax(logits / cfg.Temperature, 1);
        var (weights, choice) = Choose(probs, gate);
        // load balance (Switch Transformer): E · Σ_e f_e · P_e, f_e = share of tokens whose top-1 is e
        var f = functional.one_hot(choice[.., 0], cfg.Experts).to_type(probs.dtype).mean(new long[] { 0 });
        var aux = cfg.Experts * (f * probs.mean(new long[] { 0 })).sum();
        var y = Dispatch(flat, choice, weights).reshape(n, t, d);
        return (y, new RouteStats(blockIndex, probs, choice, weights, aux, 1));
    }

    /// <summary>Top-k experts per row; the combination weights are their gate probabilities (not renormalized),
    /// so they sum to the gate mass of the chosen experts.</summary>
    private (Tensor weights, Tensor choice) Choose(Tensor probs, GateInput gate)
    {
        if (gate.Forced is not null && gate.Forced.PerBlock.TryGetValue(blockIndex, out var f))
        {
            long r = probs.shape[0];
            return (full(r, 1, f.weight, dtype: probs.dtype, device: probs.device), full(r, 1, (long)f.expert, dtype: ScalarType.Int64, device: probs.device));
        }
        var (v, i) = probs.topk(cfg.TopK, dim: 1);
        return (v, i);
    }

    /// <summary>y_r = Σ_j weights[r, j] · expert_{choice[r, j]}(x_r), each expert run once on its rows.</summary>
    private Tensor Dispatch(Tensor x, Tensor choice, Tensor weights)
    {
        var y = zeros_like(x);
        for (int e = 0; e < experts.Count; e++)
        {
            var hit = choice.eq(e);                                                             // [R, k]
            var rows = hit.any(1).nonzero().flatten();
            if (rows.numel() == 0) continue;
            var we = (weights * hit).sum(1).index_select(0, rows);                              // [R_e]
            var out_e = experts[e].forward(x.index_select(0, rows));                            // [R_e, T, D]
            y = y.index_add(0, rows, out_e * we.view(-1, 1, 1), 1.0);
        }
        return y;
    }

    /// <summary>Routing regularizer: mean_c H(g(c)) − H(mean_c g(c)) over the batch's images [N, E] (each row is
    /// its image's g(c), so clusters count by their images). Confident per cluster, balanced overall; minimizing
    /// it maximizes the mutual information between cluster and expert. Its range is [−log E, 0].</summary>
    public static Tensor RoutingRegularizer(Tensor probs) => Entropy(probs).mean() - Entropy(probs.mean(new long[] { 0 }));

    private static Tensor Entropy(Tensor p) => -(p * p.clamp_min(1e-12).log()).sum(-1);
}
