using MoCE.Cli.Commands;
using MoCE.Runs.Configuration;
using MoCE.Core.Checkpoints;
using MoCE.Core.Data;
using MoCE.Core.Training;
using static TorchSharp.torch;

namespace MoCE.Cli.Tests;

/// <summary>The ViT presets at 224 (hocon/vit-*.conf): their shapes, and one real optimizer step of ViT-B/16 on the CPU
/// whose checkpoint round-trips.</summary>
public class VitPresetTests
{
    [Theory]
    [InlineData("vit-tiny", 192, 3, 5_524_416L)]       // timm's vit_*_patch16_224 with num_classes=0: 5.72M, 22.05M and
    [InlineData("vit-small", 384, 6, 21_665_664L)]     // 86.57M parameters less the 1000-class head (dim·1000 + 1000);
    [InlineData("vit-base", 768, 12, 85_798_656L)]     // the position embedding counted, as MAE keeps its fixed one
    public void Presets_are_mae_vits_at_224_with_mae_s_decoder(string preset, int dim, int heads, long timm)
    {
        var m = ConfigLoader.Load(new ConfigLoader.Sources(preset)).Model;
        Assert.Equal((224, 3, 16, dim, 12, heads), (m.ImageSize, m.InChans, m.PatchSize, m.Dim, m.Depth, m.Heads));
        Assert.Equal((512, 8, 16), (m.DecoderDim, m.DecoderDepth, m.DecoderHeads));
        using var model = new Core.Model.MaskedAutoencoder(m);
        long encoder = model.state_dict().Where(p => !p.Key.StartsWith("decoder_", StringComparison.Ordinal) && p.Key != "mask_token").Sum(p => p.Value.numel());
        Assert.Equal(timm, encoder);
    }

    [Fact]
    public void One_vit_base_16_step_at_224_runs_on_the_cpu_and_its_checkpoint_round_trips()
    {
        var cfg = ConfigLoader.Load(new ConfigLoader.Sources("vit-base", Overrides: ["pretrain.batch-size=8", "pretrain.accum-steps=2", "threads=0"]));
        using var data = new DataSources(cfg.Data, cfg.Model, cfg.Seed).PretrainSet();                   // the RGB sample, resampled and augmented to 224
        var store = new CheckpointStore(Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N")));
        try
        {
            using var a = new DenseTrainer(cfg.Model, cfg.Pretrain, data);
            var first = a.TrainStep();
            Assert.True(double.IsFinite(first.Loss) && first.Images == 8, $"step 0: loss {first.Loss}, {first.Images} images");
            var parts = a.SaveCheckpoint(store);
            Assert.True(new FileInfo(store.PathOf(parts[0])).Length > 3 * 4 * 100_000_000L, "a ViT-B MAE with its AdamW moments is over 1.2 GB");

            using var b = new DenseTrainer(cfg.Model, cfg.Pretrain, data);
            b.Restore(new CheckpointCommit(1, parts, DateTime.UtcNow), store);
            Assert.Equal(1, b.NextStep);
            var wa = a.Model.state_dict();
            var wb = b.Model.state_dict();
            foreach (var (name, t) in wa) Assert.True(t.shape.SequenceEqual(wb[name].shape) && t.eq(wb[name]).all().item<bool>(), $"{name} differs after the round trip");
            var oa = a.Optimizer.StateTensors().ToDictionary(x => x.name, x => x.tensor);
            foreach (var (name, t) in b.Optimizer.StateTensors()) Assert.True(t.shape.SequenceEqual(oa[name].shape) && t.eq(oa[name]).all().item<bool>(), $"{name} differs after the round trip");

            var second = a.TrainStep();                                        // and the restored trainer goes on identically
            var again = b.TrainStep();
            Assert.Equal(second.Loss, again.Loss);
            Assert.Equal(second.GradNorm, again.GradNorm);
        }
        finally { Directory.Delete(store.Directory, true); }
    }
}
