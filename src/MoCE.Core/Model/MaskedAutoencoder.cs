using MoCE.Core.Config;
using MoCE.Core.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace MoCE.Core.Model;

#pragma warning disable IDE1006 // reference MAE field names

/// <summary>The output of one MAE forward pass. The mask is 1 = masked (removed), 0 = visible. Loss is the
/// masked-patch MSE, PerImage its per-image terms [N]; Routes holds each MoE layer's routing.</summary>
public sealed record MaeOutput(Tensor Loss, Tensor PerImage, Tensor Pred, Tensor Mask, Tensor Latent, IReadOnlyList<RouteStats> Routes) : IDisposable
{
    public void Dispose()
    {
        Loss.Dispose(); PerImage.Dispose(); Pred.Dispose(); Mask.Dispose(); Latent.Dispose();
        foreach (var r in Routes) { r.Probs.Dispose(); r.Choice.Dispose(); r.Weights.Dispose(); r.Aux.Dispose(); }
    }
}

/// <summary>Masked autoencoder with a ViT encoder (He et al. 2022), after facebookresearch/mae models_mae.py.
/// Shapes: N batch, C channels, L = (H/p)² patches, L_vis = round(L·(1−r)) visible patches, D encoder width,
/// Dd decoder width, P = p²·C pixels per patch.</summary>
public sealed class MaskedAutoencoder : Module<Tensor, Tensor, MaeOutput>
{
    public MaeConfig Config { get; }
    public MoeConfig? Moe { get; }

    // encoder
    private readonly PatchEmbed patch_embed;
    private readonly Parameter cls_token;
    private readonly Parameter pos_embed;      // fixed sin-cos, requires_grad = false
    private readonly ModuleList<Block> blocks;
    private readonly LayerNorm norm;
    // decoder
    private readonly Linear decoder_embed;
    private readonly Parameter mask_token;
    private readonly Parameter decoder_pos_embed; // fixed sin-cos
    private readonly ModuleList<Block> decoder_blocks;
    private readonly LayerNorm decoder_norm;
    private readonly Linear decoder_pred;

    /// <summary>A dense MAE, or with <paramref name="moe"/> a MoE MAE whose configured blocks hold MoE layers
    /// over <paramref name="clusters"/> clusters. With <paramref name="remoteExperts"/> those blocks hold no experts or gate: they are computed elsewhere
    /// (the actor runtime), and the model holds only the trunk.</summary>
    public MaskedAutoencoder(MaeConfig config, MoeConfig? moe = null, int clusters = 0, bool remoteExperts = false) : base(nameof(MaskedAutoencoder))
    {
        Config = config.Validate();
        Moe = moe?.Validate(config.Depth);
        bool IsMoe(int b) => moe is not null && moe.Method != MoeMethod.Dense && moe.Layers.Contains(b);
        int d = config.Dim, dd = config.DecoderDim, l = config.NumPatches, hidden = (int)(d * config.MlpRatio);
        int shared = moe is null ? 0 : moe.SplitHidden(hidden).shared;
        patch_embed = new PatchEmbed(config.InChans, d, config.PatchSize);
        cls_token = Parameter(zeros(1, 1, d));
        pos_embed = Parameter(zeros(1, l + 1, d), requires_grad: false);
        blocks = ModuleList(Enumerable.Range(0, config.Depth).Select(b => new Block(d, config.Heads, config.MlpRatio,
            !IsMoe(b) ? null : remoteExperts ? new RemoteMlp(shared > 0 ? new Mlp(d, shared) : null) : new MoeLayer(moe!, b, d, hidden, clusters))).ToArray());
        norm = LayerNorm(d, eps: 1e-6);

        decoder_embed = Linear(d, dd);
        mask_token = Parameter(zeros(1, 1, dd));
        decoder_pos_embed = Parameter(zeros(1, l + 1, dd), requires_grad: false);
        decoder_blocks = ModuleList(Enumerable.Range(0, config.DecoderDepth).Select(_ => new Block(dd, config.DecoderHeads, config.MlpRatio)).ToArray());
        decoder_norm = LayerNorm(dd, eps: 1e-6);
        decoder_pred = Linear(dd, config.PatchPixels);
        RegisterComponents();
    }

    public ModuleList<Block> Blocks => blocks;

    /// <summary>Initializes the weights as the reference MAE does, from a generator seeded by the caller.</summary>
    public void InitializeWeights(Generator gen)
    {
        using var _ = no_grad();
        var grid = Config.GridSize;
        pos_embed.copy_(tensor(PosEmbed.SinCos2D(Config.Dim, grid)).unsqueeze(0));
        decoder_pos_embed.copy_(tensor(PosEmbed.SinCos2D(Config.DecoderDim, grid)).unsqueeze(0));
        // patch_embed like nn.Linear: xavier_uniform on the weight viewed as [D, C·p·p]
        var w = patch_embed.Weight;
        XavierUniform(w.view(w.shape[0], -1), gen);
        // tokens: normal(std = .02), as timm's trunc_normal_ is effectively normal at that std
        Normal(cls_token, 0.02, gen);
        Normal(mask_token, 0.02, gen);
        // xavier_uniform on linear layers, zero biases; LayerNorm weight 1, bias 0 (as the reference MAE)
        foreach (var (_, m) in named_modules())
        {
            if (m is Linear lin)
            {
                XavierUniform(lin.weight!, gen);
                if (lin.bias is not null) init.zeros_(lin.bias);
            }
            else if (m is Conv2d conv && conv.bias is not null) init.zeros_(conv.bias);
            else if (m is LayerNorm ln)
            {
                init.ones_(ln.weight!);
                init.zeros_(ln.bias!);
            }
        }
    }

    // Draws go through rand/randn with the generator: TorchSharp 0.107's init.*_ ignore their generator argument.
    private static void XavierUniform(Tensor w, Generator gen)
    {
        double bound = Math.Sqrt(6.0 / (w.shape[0] + w.shape[1]));
        using var u = rand(w.shape, generator: gen);
        w.copy_(u.mul_(2 * bound).sub_(bound));
    }

    private static void Normal(Tensor w, double std, Generator gen)
    {
        using var n = randn(w.shape, generator: gen);
        w.copy_(n.mul_(std));
    }

    // ---- pipeline ---------------------------------------------------------------------------------

    /// <summary>[N, C, H, W] → [N, L, P], each patch flattened as (p, q, c) like the reference.</summary>
    public Tensor Patchify(Tensor imgs)
    {
        int p = Config.PatchSize, c = Config.InChans;
        long n = imgs.shape[0], h = imgs.shape[2] / p, w = imgs.shape[3] / p;
        return imgs.reshape(n, c, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(n, h * w, p * p * c);
    }

    /// <summary>[N, L, P] → [N, C, H, W].</summary>
    public Tensor Unpatchify(Tensor x)
    {
        int p = Config.PatchSize, c = Config.InChans, g = Config.GridSize;
        long n = x.shape[0];
        return x.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, g * p, g * p);
    }

    /// <summary>Keeps the L_vis patches with the smallest noise. Returns the kept tokens [N, L_vis, D], the mask
    /// [N, L] (1 = masked, 0 = visible) and ids_restore [N, L] that undoes the shuffle.</summary>
    public (Tensor kept, Tensor mask, Tensor idsRestore) RandomMasking(Tensor x, Tensor noise)
    {
        long n = x.shape[0], l = x.shape[1], d = x.shape[2];
        int keep = Config.NumVisible;
        var idsShuffle = noise.argsort(dim: 1);            // ascending: small noise is kept
        var idsRestore = idsShuffle.argsort(dim: 1);
        var idsKeep = idsShuffle[.., ..keep];              // [N, L_vis]
        var kept = x.gather(1, idsKeep.unsqueeze(-1).expand(n, keep, d));
        var mask = ones(n, l, device: x.device);
        mask[.., ..keep] = zeros(1, device: x.device);
        return (kept, mask.gather(1, idsRestore), idsRestore);
    }

    /// <summary>The mask noise of one step: uniform [N, L], a pure function of the generator's seed.</summary>
    public Tensor MaskNoise(long batch, Generator gen, Device? device = null) =>
        rand(new[] { batch, (long)Config.NumPatches }, generator: gen).to(device ?? CPU);

    /// <summary>Patch embedding + position, masking, prepended class token: [N, 1 + L_vis, D].</summary>
    public (Tensor x, Tensor mask, Tensor idsRestore) EmbedAndMask(Tensor imgs, Tensor noise)
    {
        var x = patch_embed.forward(imgs).Plus(pos_embed[.., 1..]);             // [N, L, D]
        var (kept, mask, idsRestore) = RandomMasking(x, noise);
        var cls = cls_token.Plus(pos_embed[.., ..1]).expand(kept.shape[0], -1, -1); // [N, 1, D]
        return (cat(new[] { cls, kept }, 1), mask, idsRestore);
    }

    /// <summary>Encoder on the visible patches: latent [N, 1 + L_vis, D] after the final norm. MoE blocks route
    /// with <paramref name="gate"/> and append their statistics to <paramref name="routes"/>.</summary>
    public (Tensor latent, Tensor mask, Tensor idsRestore) ForwardEncoder(Tensor imgs, Tensor noise, GateInput? gate = null, List<RouteStats>? routes = null)
    {
        var (x, mask, idsRestore) = EmbedAndMask(imgs, noise);
        return (ForwardBlocks(x, gate, routes), mask, idsRestore);
    }

    /// <summary>The encoder blocks and the final norm on a token sequence [N, T, D].</summary>
    public Tensor ForwardBlocks(Tensor x, GateInput? gate = null, List<RouteStats>? routes = null)
    {
        foreach (var blk in blocks) x = blk.Forward(x, gate, routes);
        return norm.forward(x);
    }

    /// <summary>Features for clustering and evaluation: encoder on all patches (no masking), mean of the
    /// patch tokens after the final norm: [N, D].</summary>
    public Tensor ForwardFeatures(Tensor imgs, GateInput? gate = null, List<RouteStats>? routes = null)
    {
        var x = patch_embed.forward(imgs).Plus(pos_embed[.., 1..]);
        var cls = cls_token.Plus(pos_embed[.., ..1]).expand(x.shape[0], -1, -1);
        return ForwardBlocks(cat(new[] { cls, x }, 1), gate, routes)[.., 1..].mean(new long[] { 1 });
    }

    /// <summary>Decoder: mask tokens fill the removed positions, then unshuffle. Returns [N, L, P].</summary>
    public Tensor ForwardDecoder(Tensor latent, Tensor idsRestore)
    {
        var x = decoder_embed.forward(latent);                                         // [N, 1 + L_vis, Dd]
        long n = x.shape[0], l = idsRestore.shape[1], dd = x.shape[2];
        var maskTokens = mask_token.expand(n, l + 1 - x.shape[1], dd);
        var x_ = cat(new[] { x[.., 1..], maskTokens }, 1);                             // [N, L, Dd] shuffled
        x_ = x_.gather(1, idsRestore.unsqueeze(-1).expand(n, l, dd));                   // unshuffled
        x = cat(new[] { x[.., ..1], x_ }, 1).Plus(decoder_pos_embed);                      // [N, 1 + L, Dd]
        foreach (var blk in decoder_blocks) x = blk.forward(x);
        return decoder_pred.forward(decoder_norm.forward(x))[.., 1..];                  // [N, L, P]
    }

    /// <summary>Mean squared error on the masked patches only. With norm_pix_loss each target patch is
    /// normalized: t̂ = (t − mean(t)) / sqrt(var(t) + 1e-6).</summary>
    public Tensor ForwardLoss(Tensor imgs, Tensor pred, Tensor mask) => PerPatchLoss(imgs, pred, mask).loss;

    private (Tensor loss, Tensor perImage) PerPatchLoss(Tensor imgs, Tensor pred, Tensor mask)
    {
        var target = Patchify(imgs);                                                   // [N, L, P]
        if (Config.NormPixLoss)
        {
            var mean = target.mean(new long[] { -1 }, keepdim: true);
            var variance = target.var(-1, unbiased: true, keepdim: true);
            target = (target - mean) / (variance + Runtime.Scalars.Of(1e-6)).sqrt();
        }
        var perPatch = (pred - target).pow(Runtime.Scalars.Two).mean(new long[] { -1 });                  // [N, L]
        // loss = Σ (perPatch · mask) / Σ mask
        var masked = perPatch * mask;
        return (masked.sum() / mask.sum(), masked.sum(1) / mask.sum(1).clamp_min(Runtime.Scalars.Of(1)));
    }

    public override MaeOutput forward(Tensor imgs, Tensor noise) => Forward(imgs, noise, null);

    /// <summary>One MoE block's cut in the segmented forward: the residual x1 and h = norm2(x1) end the segment
    /// before it; the next segment starts from leaves: the residual's copy, y = moe(h), and with a universal expert
    /// the copy of h it reads.</summary>
    public sealed record Boundary(int Block, Tensor Residual, Tensor Hidden, Tensor ResidualLeaf, Tensor Output, Tensor? HiddenLeaf = null);

    /// <summary>The forward pass with the MoE blocks computed by <paramref name="moe"/>(block, h) → y, where h is
    /// norm2's output (detached) and y must be a leaf that requires grad. Each MoE block cuts the graph, so the
    /// backward (<see cref="BackwardRemote"/>) visits every segment exactly once, like one backward through the
    /// whole model. Returns the output and the cuts in forward order.</summary>
    public (MaeOutput output, List<Boundary> boundaries) ForwardRemote(Tensor imgs, Tensor noise, Func<int, Tensor, Tensor> moe)
    {
        var boundaries = new List<Boundary>();
        var (x, mask, idsRestore) = EmbedAndMask(imgs, noise);
        for (int b = 0; b < blocks.Count; b++)
        {
            var blk = blocks[b];
            if (blk.MlpModule is not RemoteMlp remote) { x = blk.Forward(x, null, null); continue; }
            var x1 = blk.Attend(x);
            var h = blk.Norm2(x1);
            var y = moe(b, h.detach());
            var x1Leaf = x1.detach().requires_grad_(true);
            var hLeaf = remote.Shared is null ? null : h.detach().requires_grad_(true);
            boundaries.Add(new Boundary(b, x1, h, x1Leaf, y, hLeaf));
            x = x1Leaf.Plus(hLeaf is null ? y : y.Plus(remote.Shared!.forward(hLeaf)));  // x = x1 + Σ_e g_e·E_e(h) + shared(h)
        }
        var latent = norm.forward(x);
        var pred = ForwardDecoder(latent, idsRestore);
        var (loss, perImage) = PerPatchLoss(imgs, pred, mask);
        return (new MaeOutput(loss, perImage, pred, mask, latent, []), boundaries);
    }

    /// <summary>The backward pass of <see cref="ForwardRemote"/>, segment by segment from the last: the segment after
    /// a cut leaves dL/dy and dL/dx1 on its leaves; <paramref name="moeBackward"/>(block, dL/dy) → dL/dh goes
    /// through the routed experts, the universal expert's dL/dh is added, and both gradients continue into the
    /// segment before it.</summary>
    public static void BackwardRemote(Tensor loss, IReadOnlyList<Boundary> boundaries, Func<int, Tensor, Tensor> moeBackward)
    {
        loss.backward();
        for (int i = boundaries.Count - 1; i >= 0; i--)
        {
            var c = boundaries[i];
            var dy = c.Output.grad ?? zeros_like(c.Output);
            var dx1 = c.ResidualLeaf.grad ?? zeros_like(c.ResidualLeaf);
            var dh = moeBackward(c.Block, dy);
            if (c.HiddenLeaf?.grad is { } ds) dh = dh.Plus(ds);
            autograd.backward([c.Residual, c.Hidden], [dx1, dh]);
        }
    }

    public MaeOutput Forward(Tensor imgs, Tensor noise, GateInput? gate)
    {
        var routes = new List<RouteStats>();
        var (latent, mask, idsRestore) = ForwardEncoder(imgs, noise, gate, routes);
        var pred = ForwardDecoder(latent, idsRestore);
        var (loss, perImage) = PerPatchLoss(imgs, pred, mask);
        return new MaeOutput(loss, perImage, pred, mask, latent, routes);
    }

    // ---- mixture of experts ----------------------------------------------------------------------

    /// <summary>The MoE layers by block index.</summary>
    public IReadOnlyDictionary<int, MoeLayer> MoeLayers =>
        Enumerable.Range(0, blocks.Count).Where(i => blocks[i].MlpModule is MoeLayer).ToDictionary(i => i, i => (MoeLayer)blocks[i].MlpModule);

    /// <summary>Upcycling: copies a dense MAE's weights (names as in its state_dict); each MoE layer's experts
    /// start from that block's dense MLP plus noise, and its gate is freshly initialized.</summary>
    public void UpcycleFrom(IReadOnlyDictionary<string, Tensor> dense, Generator gen)
    {
        using var _ = no_grad();
        var moe = MoeLayers;
        foreach (var (name, p) in state_dict())
        {
            var parts = name.Split('.');
            if (parts[0] == "blocks" && moe.ContainsKey(int.Parse(parts[1])) && parts[2] == "mlp") continue;
            if (!dense.TryGetValue(name, out var w) || !w.shape.SequenceEqual(p.shape))
                throw new InvalidDataException($"dense weights lack '{name}' or have another shape");
            p.copy_(w);
        }
        foreach (var (b, layer) in moe.OrderBy(kv => kv.Key))
        {
            var prefix = $"blocks.{b}.mlp.";
            layer.Upcycle(dense.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal))
                .ToDictionary(kv => kv.Key[prefix.Length..], kv => kv.Value), Moe!.UpcycleNoise, gen);
        }
    }

    /// <summary>A dense MAE with, in each MoE block, the chosen expert's weights; fc2 is scaled by the given
    /// combination weight, so the dense model computes exactly what this model computes when every image is
    /// routed to those experts with those weights. A universal expert's hidden units come first, then the routed
    /// expert's: the MLP of a block is shared(h) + w·expert(h), still the dense MAE's width.</summary>
    public MaskedAutoencoder ExtractDense(IReadOnlyDictionary<int, (int expert, double weight)> choice)
    {
        var dense = new MaskedAutoencoder(Config);
        var src = state_dict();
        using var _ = no_grad();
        foreach (var (name, p) in dense.state_dict())
        {
            var parts = name.Split('.');
            // blocks.{b}.mlp.{fc1|fc2}.{weight|bias} ← blocks.{b}.mlp.experts.{e}.{...}
            if (parts[0] == "blocks" && parts[2] == "mlp" && choice.TryGetValue(int.Parse(parts[1]), out var c))
            {
                var w = src[$"blocks.{parts[1]}.mlp.experts.{c.expert}.{parts[3]}.{parts[4]}"];
                var routed = parts[3] == "fc2" ? w * c.weight : w;
                if (!src.TryGetValue($"blocks.{parts[1]}.mlp.shared.{parts[3]}.{parts[4]}", out var s)) p.copy_(routed);
                else p.copy_(parts[3] == "fc1" ? cat([s, routed], 0) : parts[4] == "weight" ? cat([s, routed], 1) : s + routed);
            }
            else p.copy_(src[name]);
        }
        return dense;
    }
}
