using MoCE.Core.Runtime;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;
using static TorchSharp.torch.nn;

namespace MoCE.Core.Model;

// Field names follow the reference MAE / timm ViT (norm1, attn.qkv, mlp.fc1, ...) so saved weight
// names match the PyTorch checkpoints key by key.
#pragma warning disable IDE1006

/// <summary>Multi-head self-attention with fused scaled_dot_product_attention.</summary>
public sealed class Attention : Module<Tensor, Tensor>
{
    private readonly int heads;
    private readonly Linear qkv;
    private readonly Linear proj;

    public Attention(int dim, int heads) : base(nameof(Attention))
    {
        this.heads = heads;
        qkv = Linear(dim, dim * 3);
        proj = Linear(dim, dim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) // [N, T, D]
    {
        long n = x.shape[0], t = x.shape[1], d = x.shape[2];
        // The key bias adds q·b_k to every logit of a query's row, which softmax cancels: its true gradient is 0,
        // and AdamW would turn the rounding noise in that gradient into real steps (lr·g/ε). It is pinned to 0
        // here; the stored qkv.bias keeps the reference MAE's [3D] shape.
        var b = qkv.bias!;
        using var bias = cat(new[] { b[..(int)d], zeros(d, dtype: b.dtype, device: b.device), b[(int)(2 * d)..] });
        using var qkvT = functional.linear(x, qkv.weight!, bias).reshape(n, t, 3, heads, d / heads).permute(2, 0, 3, 1, 4); // [3, N, H, T, Dh]
        using var q = qkvT[0];
        using var k = qkvT[1];
        using var v = qkvT[2];
        using var o = functional.scaled_dot_product_attention(q, k, v); // [N, H, T, Dh]
        using var merged = o.transpose(1, 2).reshape(n, t, d);
        return proj.forward(merged);
    }
}

/// <summary>The transformer MLP: fc2(gelu(fc1(x))).</summary>
public sealed class Mlp : Module<Tensor, Tensor>
{
    private readonly Linear fc1;
    private readonly GELU act;
    private readonly Linear fc2;

    public Mlp(int dim, int hidden) : base(nameof(Mlp))
    {
        fc1 = Linear(dim, hidden);
        act = GELU();
        fc2 = Linear(hidden, dim);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        using var h = act.forward(fc1.forward(x));
        return fc2.forward(h);
    }
}

/// <summary>A pre-norm transformer block: x = x + attn(norm1(x)); x = x + mlp(norm2(x)). Its <c>mlp</c> is a dense
/// <see cref="Mlp"/> or a <see cref="MoeLayer"/>; a MoCE block differs only in which one it holds.</summary>
public sealed class Block : Module<Tensor, Tensor>
{
    private readonly LayerNorm norm1;
    private readonly Attention attn;
    private readonly LayerNorm norm2;
    private readonly nn.Module mlp;

    public Block(int dim, int heads, double mlpRatio, nn.Module? moe = null) : base(nameof(Block))
    {
        norm1 = LayerNorm(dim, eps: 1e-6);
        attn = new Attention(dim, heads);
        norm2 = LayerNorm(dim, eps: 1e-6);
        mlp = moe ?? (nn.Module)new Mlp(dim, (int)(dim * mlpRatio));
        RegisterComponents();
    }

    public nn.Module MlpModule => mlp;

    /// <summary>The attention half: x + attn(norm1(x)).</summary>
    public Tensor Attend(Tensor x)
    {
        using var a = attn.forward(norm1.forward(x));
        return x.Plus(a);
    }

    /// <summary>norm2(x): the input of the MLP half.</summary>
    public Tensor Norm2(Tensor x) => norm2.forward(x);

    public override Tensor forward(Tensor x) => Forward(x, null, null);

    /// <summary>The block with routing for a MoE mlp; its route statistics are appended to <paramref name="routes"/>.</summary>
    public Tensor Forward(Tensor x, GateInput? gate, List<RouteStats>? routes)
    {
        using var x1 = Attend(x);
        using var h = Norm2(x1);
        if (mlp is MoeLayer moe)
        {
            var (y, stats) = moe.forward(h, gate ?? throw new InvalidOperationException("a MoE block needs the images' cluster ids"));
            routes?.Add(stats);
            using (y) return x1.Plus(y);
        }
        using var m = ((Module<Tensor, Tensor>)mlp).forward(h);
        return x1.Plus(m);
    }
}

/// <summary>Marks a block whose routed experts and gate are owned elsewhere (the actor runtime's router and experts):
/// it holds only the universal expert, if the layer has one, and the block must be run through
/// <see cref="MaskedAutoencoder.ForwardRemote"/>.</summary>
public sealed class RemoteMlp : Module<Tensor, Tensor>
{
    private readonly Mlp? shared;

    public RemoteMlp(Mlp? shared = null) : base(nameof(RemoteMlp))
    {
        this.shared = shared;
        RegisterComponents();
    }

    /// <summary>The layer's universal expert (moe.shared-fraction), computed with the trunk.</summary>
    public Mlp? Shared => shared;
    public override Tensor forward(Tensor x) => throw new InvalidOperationException("this block's experts are owned by other actors");
}

/// <summary>Image to patch tokens with a strided convolution: [N, C, H, W] → [N, L, D].</summary>
public sealed class PatchEmbed : Module<Tensor, Tensor>
{
    private readonly Conv2d proj;

    public PatchEmbed(int inChans, int dim, int patch) : base(nameof(PatchEmbed))
    {
        proj = Conv2d(inChans, dim, patch, stride: patch);
        RegisterComponents();
    }

    public Tensor Weight => proj.weight!;

    public override Tensor forward(Tensor x)
    {
        using var y = proj.forward(x); // [N, D, h, w]
        return y.flatten(2).transpose(1, 2); // [N, L, D]
    }
}

public static class PosEmbed
{
    /// <summary>Fixed 2-D sin-cos position embedding, [1 + L, D] with a zero row for the class token, as in
    /// MAE's get_2d_sincos_pos_embed: half the channels encode the row, half the column, each as
    /// [sin(p·ω_k), cos(p·ω_k)] with ω_k = 1 / 10000^(k / (D/4)).</summary>
    public static float[,] SinCos2D(int dim, int grid)
    {
        if (dim % 4 != 0) throw new ArgumentException($"sin-cos position embedding needs a width divisible by 4, got {dim}");
        int quarter = dim / 4;
        var table = new float[1 + grid * grid, dim];
        for (int h = 0; h < grid; h++)
        for (int w = 0; w < grid; w++)
        {
            int row = 1 + h * grid + w;
            for (int k = 0; k < quarter; k++)
            {
                double omega = 1.0 / Math.Pow(10000, k / (double)quarter);
                // the reference meshes (w, h): the first half of the channels encodes w, the second h
                table[row, k] = (float)Math.Sin(w * omega);
                table[row, quarter + k] = (float)Math.Cos(w * omega);
                table[row, 2 * quarter + k] = (float)Math.Sin(h * omega);
                table[row, 3 * quarter + k] = (float)Math.Cos(h * omega);
            }
        }
        return table;
    }
}
