using MoCE.Core.Config;
using MoCE.Core.Training;

namespace MoCE.Core.Tests;

/// <summary>pretrain.precision = bf16: bfloat16 compute on a copy of the float32 master weights.</summary>
public class Bf16Tests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public void A_bf16_run_follows_the_fp32_loss_curve_for_200_steps()
    {
        using var data = Tiny.TrainSample();
        var cfg = Tiny.Train(steps: 200) with { BatchSize = 32, BaseLr = 4e-3, WarmupSteps = 20 };
        using var fp32 = new DenseTrainer(Tiny.Model, cfg, data);
        using var bf16 = new DenseTrainer(Tiny.Model, cfg with { Precision = Precision.Bf16 }, data);
        var a = Enumerable.Range(0, 200).Select(_ => fp32.TrainStep().Loss).ToArray();
        var b = Enumerable.Range(0, 200).Select(_ => bf16.TrainStep().Loss).ToArray();
        Assert.Equal(TorchSharp.torch.ScalarType.Float32, bf16.Model.parameters().First().dtype);     // the master stays fp32
        Assert.NotEqual(a, b);                                                  // bf16 really computed something else
        Assert.True(Math.Abs(a[0] - b[0]) < 0.01 * a[0], $"step 0: {a[0]} vs {b[0]}");
        // the curves, as means over windows of 20 steps, stay within 1% of each other (measured: at most 0.1%), and both learn
        for (int w = 0; w < 200; w += 20)
        {
            double ma = a[w..(w + 20)].Average(), mb = b[w..(w + 20)].Average();
            output.WriteLine($"steps {w,3}..{w + 19,3}: fp32 {ma:F4}, bf16 {mb:F4} ({(mb - ma) / ma:+0.00%;-0.00%})");
            Assert.True(Math.Abs(ma - mb) <= 0.01 * ma, $"steps {w}..{w + 19}: fp32 {ma:F4}, bf16 {mb:F4} ({(mb - ma) / ma:P1})");
        }
        Assert.True(b[180..].Average() < 0.8 * b[..20].Average(), $"bf16 did not learn: {b[..20].Average():F4} → {b[180..].Average():F4}");
    }
}
