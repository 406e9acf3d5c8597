using MoCE.Core.Model;
using MoCE.Core.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Core.Tests;

public class MaeTests
{
    [Theory]
    [InlineData(28, 1, 4)]
    [InlineData(28, 1, 7)]
    [InlineData(32, 3, 8)]
    public void Unpatchify_inverts_patchify(int image, int chans, int patch)
    {
        var cfg = Tiny.Model with { ImageSize = image, InChans = chans, PatchSize = patch };
        using var model = new MaskedAutoencoder(cfg);
        using var scope = NewDisposeScope();
        var x = randn(3, chans, image, image);
        var patches = model.Patchify(x);
        Assert.Equal(new long[] { 3, cfg.NumPatches, cfg.PatchPixels }, patches.shape);
        Assert.True(Tiny.Same(model.Unpatchify(patches), x));
    }

    [Fact]
    public void Patchify_puts_each_patch_in_its_own_row()
    {
        var cfg = Tiny.Model with { PatchSize = 14 }; // 2×2 grid
        using var model = new MaskedAutoencoder(cfg);
        using var scope = NewDisposeScope();
        var x = zeros(1, 1, 28, 28);
        x[0, 0, 14.., ..14] = tensor(1f); // bottom-left patch = row-major index 2
        var p = model.Patchify(x);
        Assert.Equal(new[] { 0f, 0f, 196f, 0f }, p.sum(-1)[0].data<float>().ToArray());
    }

    [Theory]
    [InlineData(4, 0.75, 12)]   // 49 patches: round(12.25) = 12
    [InlineData(7, 0.75, 4)]    // 16 patches
    [InlineData(4, 0.5, 25)]    // round(24.5) = 25
    [InlineData(4, 0.9, 5)]     // round(4.9) = 5
    public void Keeps_exactly_round_L_times_one_minus_ratio_patches(int patch, double ratio, int expectedVisible)
    {
        var cfg = Tiny.Model with { PatchSize = patch, MaskRatio = ratio };
        Assert.Equal(expectedVisible, cfg.NumVisible);
        using var model = new MaskedAutoencoder(cfg);
        using var scope = NewDisposeScope();
        using var gen = Seeds.Generator(1, Seeds.Stream.Mask, 0);
        var x = randn(5, cfg.NumPatches, 8);
        var (kept, mask, idsRestore) = model.RandomMasking(x, model.MaskNoise(5, gen));
        Assert.Equal(new long[] { 5, expectedVisible, 8 }, kept.shape);
        // 1 = masked: every row masks exactly L − L_vis patches
        Assert.All(mask.sum(1).data<float>().ToArray(), m => Assert.Equal(cfg.NumPatches - expectedVisible, m));
        // the kept tokens are exactly the rows of x where mask == 0, in shuffle order
        var visible = x[mask.eq(0)].reshape(5, expectedVisible, 8).sort(1).Values;
        Assert.True(Tiny.Same(kept.sort(1).Values, visible));
        Assert.Equal(new long[] { 5, cfg.NumPatches }, idsRestore.shape);
    }

    [Fact]
    public void Masks_are_a_pure_function_of_seed_and_step()
    {
        using var model = new MaskedAutoencoder(Tiny.Model);
        Tensor Mask(long seed, long step)
        {
            using var gen = Seeds.Generator(seed, Seeds.Stream.Mask, step);
            using var x = zeros(4, Tiny.Model.NumPatches, 2);
            var (kept, mask, ids) = model.RandomMasking(x, model.MaskNoise(4, gen));
            kept.Dispose(); ids.Dispose();
            return mask;
        }
        using var a = Mask(3, 10);
        using var b = Mask(3, 10);
        using var c = Mask(3, 11);
        using var d = Mask(4, 10);
        Assert.True(Tiny.Same(a, b));
        Assert.False(Tiny.Same(a, c));
        Assert.False(Tiny.Same(a, d));
    }

    [Fact]
    public void Loss_is_zero_when_prediction_equals_normalized_target()
    {
        using var model = new MaskedAutoencoder(Tiny.Model);
        using var scope = NewDisposeScope();
        var imgs = randn(2, 1, 28, 28);
        var target = model.Patchify(imgs);
        target = (target - target.mean(new long[] { -1 }, keepdim: true)) / (target.var(-1, keepdim: true) + 1e-6).sqrt();
        var mask = (rand(2, Tiny.Model.NumPatches) > 0.5).to_type(ScalarType.Float32);
        mask[0, 0] = tensor(1f);
        Assert.Equal(0.0, model.ForwardLoss(imgs, target, mask).item<float>(), 6);
        // and it is the mean over masked patches only: corrupting a visible patch changes nothing
        mask[1, 0] = tensor(0f);
        var pred = target.clone();
        pred[1, 0] += 5;
        Assert.Equal(0.0, model.ForwardLoss(imgs, pred, mask).item<float>(), 6);
    }

    [Fact]
    public void Initialization_is_a_pure_function_of_the_seed()
    {
        MaskedAutoencoder Make(long seed)
        {
            var m = new MaskedAutoencoder(Tiny.Model);
            using var g = Seeds.Generator(seed, Seeds.Stream.Init, 0);
            m.InitializeWeights(g);
            return m;
        }
        using var a = Make(1);
        using var b = Make(1);
        using var c = Make(2);
        var sb = b.state_dict();
        var sc = c.state_dict();
        foreach (var (name, w) in a.state_dict())
        {
            Assert.True(Tiny.Same(w, sb[name]), $"{name} differs for the same seed");
            if (name.EndsWith("weight") && w.dim() > 1) Assert.False(Tiny.Same(w, sc[name]), $"{name} equal for different seeds");
        }
    }

    [Fact]
    public void Position_embedding_matches_the_reference_formula()
    {
        var table = PosEmbed.SinCos2D(8, 3);
        Assert.Equal(10, table.GetLength(0));
        for (int j = 0; j < 8; j++) Assert.Equal(0f, table[0, j]); // class token row
        // patch (h=1, w=2) → row 1 + 1·3 + 2 = 6; quarter = 2, ω = [1, 1/100]
        Assert.Equal((float)Math.Sin(2.0), table[6, 0], 6);
        Assert.Equal((float)Math.Cos(2.0 / 100), table[6, 3], 6);
        Assert.Equal((float)Math.Sin(1.0), table[6, 4], 6);
        Assert.Equal((float)Math.Cos(1.0 / 100), table[6, 7], 6);
    }

    [Fact]
    public void Loss_falls_when_overfitting_one_tiny_batch()
    {
        using var data = Tiny.TrainSample();
        var cfg = Tiny.Train(steps: 200) with { BaseLr = 0.16 /* peak 1e-2 at batch 16 */, WarmupSteps = 10, WeightDecay = 0 };
        using var model = new MaskedAutoencoder(Tiny.Model);
        using (var g = Seeds.Generator(0, Seeds.Stream.Init, 0)) model.InitializeWeights(g);
        using var opt = new AdamW(model.named_parameters(), cfg);
        using var imgs = data.Batch([0, 1, 2, 3, 4, 5, 6, 7]);
        using var gen = Seeds.Generator(0, Seeds.Stream.Mask, 0);
        using var noise = model.MaskNoise(8, gen); // the same batch and mask every step
        var losses = new List<double>();
        for (long s = 0; s < cfg.Steps; s++)
        {
            using var scope = NewDisposeScope();
            using var o = model.forward(imgs, noise);
            opt.ZeroGrad();
            o.Loss.backward();
            opt.Step(LrSchedule.At(s, cfg), AdamW.ClipScale(s, Math.Sqrt(opt.SquaredGradNorm()), 1.0));
            losses.Add(o.Loss.item<float>());
        }
        double first = losses.Take(5).Average(), last = losses.TakeLast(5).Average();
        Assert.True(last < 0.25 * first, $"loss {first:F4} → {last:F4}: expected to fall below 25%");
        Console.WriteLine($"overfit {first:F4} -> {last:F4}");
    }

    [Theory]
    [InlineData(double.NaN)]
    [InlineData(double.PositiveInfinity)]
    public void A_gradient_norm_that_is_not_finite_is_refused_naming_the_step(double norm)
    {
        var e = Assert.Throws<NonFiniteStepException>(() => AdamW.ClipScale(7, norm, 1.0, "expert-2's share"));
        Assert.Equal(7, e.Step);
        Assert.Contains($"step 7: the gradient norm is {norm} (expert-2's share)", e.Message);
        Assert.Equal(0.5, AdamW.ClipScale(7, 2.0 - 1e-6, 1.0), 12);
    }

    [Fact]
    public void Forward_features_are_the_mean_of_unmasked_patch_tokens()
    {
        using var model = new MaskedAutoencoder(Tiny.Model);
        using (var g = Seeds.Generator(0, Seeds.Stream.Init, 0)) model.InitializeWeights(g);
        model.eval();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var imgs = randn(3, 1, 28, 28);
        var f = model.ForwardFeatures(imgs);
        Assert.Equal(new long[] { 3, Tiny.Model.Dim }, f.shape);
        // with mask ratio 0 the encoder sees every patch (in noise order); the mean is order-invariant
        var full = new MaskedAutoencoder(Tiny.Model with { MaskRatio = 0 });
        full.load_state_dict(model.state_dict());
        using var gen = Seeds.Generator(0, Seeds.Stream.Mask, 0);
        var (latent, _, _) = full.ForwardEncoder(imgs, full.MaskNoise(3, gen));
        Assert.True(latent[.., 1..].mean(new long[] { 1 }).allclose(f, rtol: 1e-4, atol: 1e-5));
    }
}
