using MoCE.Core.Config;
using MoCE.Core.Training;
using MoCE.Core.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace MoCE.Core.Model;

#pragma warning disable IDE1006 // module field names are the saved weight names

/// <summary>Training-time gate noise of step <c>Step</c>: block b draws from (seed, "gate", step·64 + b), so each
/// layer's noise is a pure function of (seed, step, block), whichever process computes it.</summary>
public sealed record GateNoise(long Seed, long Step)
{
    public Generator For(int block) => Seeds.Generator(Seed, Seeds.Stream.Gate, Step * 64 + block);
}

/// <summary>What a MoE layer needs besides its input: each image's cluster id [N] (int64), this step's gate noise
/// (null in evaluation), and optionally a forced route (customization checks).</summary>
public sealed record GateInput(Tensor ClusterIds, GateNoise? Noise = null, ForcedRoute? Forced = null);

/// <summary>Send every row to one expert with a fixed combination weight, per block.</summary>
public sealed record ForcedRoute(IReadOnlyDictionary<int, (int expert, double weight)> PerBlock);

/// <summary>One MoE layer's routing in a forward pass. Rows are images (MoCE) or tokens (TokenMoE):
/// gate probabilities [R, E], chosen experts [R, k], their weights [R, k], and the layer's auxiliary loss
/// (routing regularizer or load balance).</summary>
public sealed record RouteStats(int Block, Tensor Probs, Tensor Choice, Tensor Weights, Tensor Aux, long TokensPerRow);

/// <summary>The rows of one expert in a dispatch: their indices [R_e] and combination weights [R_e].</summary>
public sealed record ExpertRows(int Expert, Tensor Rows, Tensor Weights);

/// <summary>The gate of one MoE layer. MoCE: g(c) = softmax((W·emb[c] + noise) / τ), one row per image.
/// TokenMoE: g(x_t) = softmax((W·x_t + noise) / τ), one row per token.</summary>
public sealed class MoeGate : Module<Tensor, GateInput, Tensor>
{
    private readonly MoeConfig cfg;
    private readonly int block;
    private readonly Parameter? emb;   // [C, Dg] cluster embeddings (MoCE)
    private readonly Linear w_gate;    // MoCE: Dg → E; TokenMoE: D → E

    public MoeGate(MoeConfig cfg, int block, int dim, int clusters) : base(nameof(MoeGate))
    {
        this.cfg = cfg;
        this.block = block;
        if (cfg.Method == MoeMethod.Moce) emb = Parameter(zeros(clusters, cfg.GateDim));
        w_gate = Linear(cfg.Method == MoeMethod.Moce ? cfg.GateDim : dim, cfg.Experts, hasBias: false);
        RegisterComponents();
    }

    public int Clusters => emb is null ? 0 : (int)emb.shape[0];
    public bool PerToken => cfg.Method == MoeMethod.TokenMoe;

    /// <summary>emb ~ N(0, 1), W xavier-uniform.</summary>
    public void Initialize(Generator gen)
    {
        using var _ = no_grad();
        if (emb is not null) { using var e = randn(emb.shape, generator: gen); emb.copy_(e); }
        double bound = Math.Sqrt(6.0 / (w_gate.weight!.shape[0] + w_gate.weight.shape[1]));
        using var u = rand(w_gate.weight.shape, generator: gen);
        w_gate.weight.copy_(u * (2 * bound) - bound);
    }

    /// <summary>The C centroids, centred and scaled to unit length, grouped into E by average-linkage agglomeration on
    /// their cosine similarity (deterministic): the two most similar groups merge until E remain, so a tight family
    /// of clusters (one domain's) stays together. Groups are numbered in the order of their first cluster. Returns
    /// each cluster's group.</summary>
    public static long[] GroupCentroids(Tensor centroids, int experts)
    {
        int c = (int)centroids.shape[0];
        if (experts > c) throw new ArgumentException($"gate-init = centroids groups {c} clusters into {experts} experts: needs at least as many clusters as experts");
        float[] sim;
        using (NewDisposeScope())
        {
            var u = Unit(centroids);
            sim = u.matmul(u.t()).cpu().data<float>().ToArray();
        }
        var groups = Enumerable.Range(0, c).Select(i => new List<int> { i }).ToList();
        while (groups.Count > experts)
        {
            double best = double.NegativeInfinity;
            int bi = 0, bj = 1;
            for (int i = 0; i < groups.Count; i++)
                for (int j = i + 1; j < groups.Count; j++)
                {
                    double mean = groups[i].Sum(a => groups[j].Sum(b => (double)sim[a * c + b])) / (groups[i].Count * groups[j].Count);
                    if (mean > best) { best = mean; bi = i; bj = j; }
                }
            groups[bi].AddRange(groups[bj]);
            groups.RemoveAt(bj);
        }
        var res = new long[c];
        foreach (var (g, e) in groups.OrderBy(g => g.Min()).Select((g, e) => (g, e)))
            foreach (var k in g) res[k] = e;
        return res;
    }

    /// <summary>emb = the centred unit centroids; W_e = the unit mean of group e's, so logit(c, e) = cos(emb_c, W_e)
    /// and each cluster starts on its group's expert (decisively at a small τ).</summary>
    public void InitializeFromCentroids(Tensor centroids, long[] groups)
    {
        if (emb is null) throw new InvalidOperationException("only a MoCE gate reads clusters");
        if (centroids.shape[0] != emb.shape[0] || centroids.shape[1] != emb.shape[1])
            throw new ArgumentException($"centroids [{string.Join(", ", centroids.shape)}] do not fit the cluster embedding [{string.Join(", ", emb.shape)}]");
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var u = Unit(centroids).to(emb.device);
        emb.copy_(u);
        var w = zeros_like(w_gate.weight!);
        for (int e = 0; e < w.shape[0]; e++)
        {
            var members = Enumerable.Range(0, groups.Length).Where(c => groups[c] == e).Select(c => (long)c).ToArray();
            if (members.Length == 0) continue;
            w[e] = nn.functional.normalize(u.index_select(0, tensor(members).to(u.device)).mean([0L]), p: 2, dim: 0);
        }
        w_gate.weight!.copy_(w);
    }

    private static Tensor Unit(Tensor centroids) =>
        nn.functional.normalize(centroids.to_type(ScalarType.Float32) - centroids.to_type(ScalarType.Float32).mean([0L], keepdim: true), p: 2, dim: 1);

    /// <summary>Gate probabilities of every cluster without noise: [C, E] (MoCE only).</summary>
    public Tensor ClusterGate()
    {
        if (emb is null) throw new InvalidOperationException("only a MoCE layer has a cluster gate");
        return softmax(w_gate.forward(emb) / Runtime.Scalars.Of(cfg.Temperature), 1);
    }

    /// <summary>Gate probabilities [R, E]; x is [N, T, D] (read by TokenMoE only).</summary>
    public override Tensor forward(Tensor x, GateInput gate)
    {
        var logits = PerToken
            ? w_gate.forward(x.reshape(-1, x.shape[2]))                           // [N·T, E]
            : w_gate.forward(emb!.index_select(0, gate.ClusterIds));              // [N, E]
        if (gate.Noise is not null && cfg.GateNoise > 0)
        {
            using var gen = gate.Noise.For(block);
            logits = logits.Plus(randn(logits.shape, generator: gen).to(logits.device) * Runtime.Scalars.Of(cfg.GateNoise));
        }
        return softmax(logits / Runtime.Scalars.Of(cfg.Temperature), 1);
    }

    /// <summary>Top-k experts per row; the combination weights are their gate probabilities (not renormalized),
    /// so they sum to the gate mass of the chosen experts. A forced route overrides the choice.</summary>
    public (Tensor weights, Tensor choice) Choose(Tensor probs, GateInput gate)
    {
        if (gate.Forced is not null && gate.Forced.PerBlock.TryGetValue(block, out var f))
        {
            long r = probs.shape[0];
            return (full(r, 1, f.weight, dtype: probs.dtype, device: probs.device), full(r, 1, (long)f.expert, dtype: ScalarType.Int64, device: probs.device));
        }
        var (v, i) = probs.topk(cfg.TopK, dim: 1);
        return (v, i);
    }

    /// <summary>MoCE: the routing regularizer; TokenMoE: the load-balancing loss.</summary>
    public Tensor Aux(Tensor probs, Tensor choice) => PerToken ? MoeLayer.LoadBalance(probs, choice, cfg.Experts) : MoeLayer.RoutingRegularizer(probs);
}

/// <summary>A mixture-of-experts MLP: a <see cref="MoeGate"/>, E expert MLPs and, with moe.shared-fraction, a universal
/// expert. Every token of an image follows that image's top-k choice (MoCE), or each token its own (TokenMoE). The
/// output is Σ_{e ∈ top-k} g_e·expert_e(x) + shared(x). <see cref="Plan"/> and <see cref="Combine"/> are the dispatch
/// math shared with the actor runtime's router; the universal expert is the trunk's there.</summary>
public sealed class MoeLayer : Module<Tensor, GateInput, (Tensor output, RouteStats stats)>
{
    private readonly int blockIndex;
    private readonly MoeGate gate;
    private readonly ModuleList<Mlp> experts;
    private readonly Mlp? shared;

    /// <summary><paramref name="hidden"/>: the dense MLP's width, split between the universal and the routed experts.</summary>
    public MoeLayer(MoeConfig cfg, int blockIndex, int dim, int hidden, int clusters) : base(nameof(MoeLayer))
    {
        this.blockIndex = blockIndex;
        var (s, routed) = cfg.SplitHidden(hidden);
        gate = new MoeGate(cfg, blockIndex, dim, clusters);
        experts = ModuleList(Enumerable.Range(0, cfg.Experts).Select(_ => new Mlp(dim, routed)).ToArray());
        if (s > 0) shared = new Mlp(dim, s);
        RegisterComponents();
    }

    public MoeGate Gate => gate;
    public ModuleList<Mlp> Experts => experts;
    public Mlp? Shared => shared;
    public int Clusters => gate.Clusters;
    public Tensor ClusterGate() => gate.ClusterGate();

    /// <summary>Upcycling: every expert = the dense MLP (its state_dict, fc1/fc2) + N(0, (noise·std(w))²) per
    /// weight; then the gate is initialized. With a universal expert, it takes the dense MLP's first hidden units and
    /// fc2's bias exactly, and every routed expert the other units (plus noise) with a zero fc2 bias: at a gate weight
    /// of 1 the layer starts as the dense MLP.</summary>
    public void Upcycle(IReadOnlyDictionary<string, Tensor> src, double noise, Generator gen)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        Tensor Dense(string name) => src.TryGetValue(name, out var t) ? t : throw new InvalidDataException($"dense MLP weights lack '{name}'");
        long hs = shared is null ? 0 : shared.state_dict()["fc1.bias"].shape[0], h = Dense("fc1.bias").shape[0];
        if (hs + experts[0].state_dict()["fc1.bias"].shape[0] != h)
            throw new InvalidDataException($"the dense MLP has {h} hidden units, this layer's experts {hs} universal and the rest routed");
        Tensor Units(string name, long from, long to) => name switch
        {
            "fc1.weight" or "fc1.bias" => Dense(name).narrow(0, from, to - from),
            "fc2.weight" => Dense(name).narrow(1, from, to - from),
            "fc2.bias" => from == 0 ? Dense(name) : zeros_like(Dense(name)),
            _ => throw new InvalidDataException($"unexpected MLP weight '{name}'"),
        };
        if (shared is not null)
            foreach (var (name, p) in shared.state_dict()) p.copy_(Units(name, 0, hs));
        foreach (var expert in experts)
            foreach (var (name, p) in expert.state_dict())
            {
                var w = Units(name, hs, h);
                using var n = randn(w.shape, generator: gen);
                p.copy_(w + n * (noise * (w.numel() > 1 ? w.std().item<float>() : 0)));
            }
        gate.Initialize(gen);
    }

    public override (Tensor output, RouteStats stats) forward(Tensor x, GateInput input) // x: [N, T, D]
    {
        long n = x.shape[0], t = x.shape[1], d = x.shape[2];
        var rows = gate.PerToken ? x.reshape(n * t, 1, d) : x;                     // a row is a token or an image
        var probs = gate.forward(x, input);                                         // [R, E]
        var (weights, choice) = gate.Choose(probs, input);                          // [R, k]
        var plan = Plan(choice, weights, experts.Count);
        var outputs = plan.Select(p => experts[p.Expert].forward(rows.index_select(0, p.Rows))).ToList();
        var y = Combine(rows, plan, outputs).reshape(n, t, d);
        if (shared is not null) y = y.Plus(shared.forward(x));                          // as ForwardRemote adds the trunk's
        return (y, new RouteStats(blockIndex, probs, choice, weights, gate.Aux(probs, choice), gate.PerToken ? 1 : t));
    }

    /// <summary>For each expert with work: the rows routed to it and their combination weights.</summary>
    public static List<ExpertRows> Plan(Tensor choice, Tensor weights, int experts)
    {
        var plan = new List<ExpertRows>();
        for (int e = 0; e < experts; e++)
        {
            var hit = choice.eq(e);                                                 // [R, k]
            var rows = hit.any(1).nonzero().flatten();
            if (rows.numel() == 0) continue;
            plan.Add(new ExpertRows(e, rows, (weights * hit).sum(1).index_select(0, rows)));
        }
        return plan;
    }

    /// <summary>y_r = Σ_e w_{r,e}·out_e[r]: the experts' outputs scattered back with their gate weights, folded
    /// in plan order from y = 0 (the router folds each output as it arrives, in the same order).</summary>
    public static Tensor Combine(Tensor rows, IReadOnlyList<ExpertRows> plan, IReadOnlyList<Tensor> outputs)
    {
        var y = zeros_like(rows);
        for (int i = 0; i < plan.Count; i++) y = CombineOne(y, plan[i], outputs[i]);
        return y;
    }

    /// <summary>One term of <see cref="Combine"/>: y + scatter(w_e·out_e).</summary>
    public static Tensor CombineOne(Tensor y, ExpertRows e, Tensor output) => y.index_add(0, e.Rows, output * e.Weights.view(-1, 1, 1), Runtime.Scalars.One);

    /// <summary>Routing regularizer: mean_c H(g(c)) − H(mean_c g(c)) over the batch's images [N, E] (each row is
    /// its image's g(c), so clusters count by their images). Confident per cluster, balanced overall; minimizing
    /// it maximizes the mutual information between cluster and expert. Its range is [−log E, 0].</summary>
    public static Tensor RoutingRegularizer(Tensor probs) => Entropy(probs).mean() - Entropy(probs.mean(new long[] { 0 }));

    /// <summary>Load balance (Switch Transformer): E · Σ_e f_e · P_e, f_e = share of rows whose top-1 is e.</summary>
    public static Tensor LoadBalance(Tensor probs, Tensor choice, int experts)
    {
        var f = functional.one_hot(choice[.., 0], experts).to_type(probs.dtype).mean(new long[] { 0 });
        return Runtime.Scalars.Of(experts) * (f * probs.mean(new long[] { 0 })).sum();
    }

    private static Tensor Entropy(Tensor p) => -(p * p.clamp_min(Runtime.Scalars.Of(1e-12)).log()).sum(-1);
}
