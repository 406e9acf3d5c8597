using MoCE.Core.Customization;
using MoCE.Core.Evaluation;

namespace MoCE.Core.Tests;

/// <summary>End-to-end fine-tuning (the paper's evaluation) against the frozen linear probe.</summary>
public class FineTuneTests(MoceFixture fx, Xunit.Abstractions.ITestOutputHelper output) : IClassFixture<MoceFixture>
{
    [Fact]
    public void Fine_tuning_a_customized_encoder_beats_the_linear_probe_on_its_frozen_features()
    {
        using var t = fx.Trainer(MoceFixture.Moe with { Layers = [0, 1] }, Tiny.Train(steps: 5));
        for (int i = 0; i < 5; i++) t.TrainStep();
        var h = Customizer.Histogram(fx.Clustering.TrainIds.Take(700), MoceFixture.Clusters);
        using var customized = t.Model.ExtractDense(Customizer.AsRoute(Customizer.Choose(t.Model, h, GateFold.Off)));
        int[] train = [.. Enumerable.Range(0, 700)], test = [.. Enumerable.Range(700, 300)];
        var labels = fx.Data.Labels.Select(l => (long)l).ToArray();
        long[] ytr = [.. train.Select(i => labels[i])], yte = [.. test.Select(i => labels[i])];

        using var ftr = Features.Extract(customized, fx.Data, train);
        using var fte = Features.Extract(customized, fx.Data, test);
        var probe = Probes.LinearProbe(ftr, ytr, fte, yte, 10, epochs: 300, lr: 1e-2, weightDecay: 0, batch: 256, seed: 0);
        Assert.True(probe.Converged, "the probe is compared at convergence");

        var cfg = new FineTuneConfig { Epochs = 20, BatchSize = 64, BaseLr = 5e-3, WarmupEpochs = 2 }.Validate();
        var ft = FineTune.Run(customized, fx.Data, train, ytr, fx.Data, test, yte, 10, cfg, seed: 0);
        Assert.Equal(20L * 11, ft.Steps);
        output.WriteLine($"fine-tuned {ft.Accuracy:P1} (last epoch's loss {ft.TrainLoss:F3}); linear probe {probe.Accuracy:P1} after {probe.Epochs} epochs");
        Assert.True(ft.Accuracy > probe.Accuracy + 0.03, $"fine-tuned {ft.Accuracy:P1} vs linear probe {probe.Accuracy:P1} on the same weights");
        using var after = Features.Extract(customized, fx.Data, test);
        Assert.False(after.eq(fte).all().item<bool>(), "fine-tuning trains the encoder, not only the head");
    }

    /// <summary>Ctrl-C stops a fine-tuning between steps (a study's fine-tunes take minutes each; it waited them out).</summary>
    [Fact]
    public void A_cancelled_fine_tuning_stops_between_steps()
    {
        using var dense = new MoCE.Core.Model.MaskedAutoencoder(Tiny.Model);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        int[] train = [.. Enumerable.Range(0, 64)];
        long[] y = [.. train.Select(i => (long)fx.Data.Labels[i])];
        Assert.ThrowsAny<OperationCanceledException>(() => FineTune.Run(dense, fx.Data, train, y, fx.Data, train, y, 10, new FineTuneConfig { Epochs = 2, WarmupEpochs = 1 }, 0, ct: cts.Token));
    }

    [Fact]
    public void Fine_tuning_refuses_a_model_with_experts_and_bad_settings_name_their_key()
    {
        using var t = fx.Trainer(MoceFixture.Moe, Tiny.Train(steps: 1));
        Assert.Throws<ArgumentException>(() => FineTune.Run(t.Model, fx.Data, [0], [0], fx.Data, [1], [0], 10, new FineTuneConfig(), 0));
        Assert.Equal("moce.finetune.layer-decay", Assert.Throws<Config.ConfigException>(() => new FineTuneConfig { LayerDecay = 1.5 }.Validate()).Key);
        Assert.Equal("moce.finetune.warmup-epochs", Assert.Throws<Config.ConfigException>(() => new FineTuneConfig { Epochs = 2, WarmupEpochs = 2 }.Validate()).Key);
    }
}
