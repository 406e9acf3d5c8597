using MoCE.Core.Training;

namespace MoCE.Core.Tests;

/// <summary>Gradient accumulation (pretrain.accum-steps): a step of 4 micro-batches of 32 is one batch of 128.</summary>
public class AccumulationTests
{
    [Fact]
    public void Four_micro_batches_of_32_give_the_gradient_and_loss_of_one_batch_of_128()
    {
        using var data = Tiny.TrainSample();
        var cfg = Tiny.Train(steps: 5) with { BatchSize = 128, ClipGrad = 0 };      // no clip: the moments are the raw gradient
        using var one = new DenseTrainer(Tiny.Model, cfg, data);
        using var four = new DenseTrainer(Tiny.Model, cfg with { AccumSteps = 4 }, data);
        var a = one.TrainStep();
        var b = four.TrainStep();
        Assert.Equal(128, b.Images);
        Assert.True(Math.Abs(a.Loss - b.Loss) < 1e-6, $"loss {a.Loss} vs {b.Loss}");
        Assert.True(Math.Abs(a.GradNorm - b.GradNorm) < 1e-6 * a.GradNorm, $"gradient norm {a.GradNorm} vs {b.GradNorm}");
        // after the first step AdamW's first moment is (1 − β1)·g and its second (1 − β2)·g²: the gradient itself
        var sa = one.Optimizer.StateTensors().ToDictionary(x => x.name, x => x.tensor);
        double worst = 0, largest = 0;
        foreach (var (name, t) in four.Optimizer.StateTensors().Where(x => x.name.StartsWith("exp_avg.", StringComparison.Ordinal)))
        {
            worst = Math.Max(worst, (t - sa[name]).abs().max().item<float>() / (1 - cfg.Beta1));
            largest = Math.Max(largest, sa[name].abs().max().item<float>() / (1 - cfg.Beta1));
        }
        Assert.True(largest > 1e-3, $"the gradients are too small ({largest}) for a 1e-6 bound to mean anything");
        Assert.True(worst < 1e-6, $"max |Δg| = {worst} (largest |g| {largest})");
    }

    [Fact]
    public void Accum_steps_must_divide_the_batch()
    {
        var e = Assert.Throws<Config.ConfigException>(() => (Tiny.Train() with { BatchSize = 30, AccumSteps = 4 }).Validate("moce.pretrain"));
        Assert.Equal("moce.pretrain.accum-steps", e.Key);
    }
}
