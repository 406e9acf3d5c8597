using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Core.Training;
using static TorchSharp.torch;

namespace MoCE.Core.Tests;

/// <summary>Weights in safetensors and .pt: written, and imported as the initial weights of a pre-training.</summary>
public class WeightFilesTests
{
    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Fact]
    public void A_pre_training_starts_from_an_exported_encoder_and_seeds_the_rest()
    {
        using var data = Tiny.TrainSample();
        using var source = new DenseTrainer(Tiny.Model, Tiny.Train(seed: 1), data);
        for (int i = 0; i < 3; i++) source.TrainStep();
        var encoder = source.Model.state_dict().Where(kv => !kv.Key.StartsWith("decoder_", StringComparison.Ordinal) && kv.Key != "mask_token").ToDictionary();
        var file = Path.Combine(Tiny.TempDir(), "encoder.safetensors");
        WeightFiles.SaveSafetensors(file, encoder);

        using var fresh = new DenseTrainer(Tiny.Model, Tiny.Train(seed: 2), data);
        using var started = new DenseTrainer(Tiny.Model, Tiny.Train(seed: 2) with { InitFrom = file }, data);
        var got = started.Model.state_dict();
        foreach (var (name, t) in encoder) Assert.True(Same(t, got[name]), $"{name} was not imported");
        foreach (var (name, t) in fresh.Model.state_dict().Where(kv => !encoder.ContainsKey(kv.Key)))
            Assert.True(Same(t, got[name]), $"{name} is not in the file and must keep the seeded init");
        Assert.Contains(encoder.Keys, k => !Same(encoder[k], fresh.Model.state_dict()[k]));   // the import changed something

        var pt = Path.Combine(Tiny.TempDir(), "encoder.pt");                              // PyTorch's format too
        TorchSharp.PyBridge.PyBridgeModuleExtensions.save_py(source.Model, pt);
        using var fromPt = new DenseTrainer(Tiny.Model, Tiny.Train(seed: 2) with { InitFrom = pt }, data);
        foreach (var (name, t) in source.Model.state_dict()) Assert.True(Same(t, fromPt.Model.state_dict()[name]), name);
    }

    [Fact]
    public void A_file_with_another_shape_or_an_unknown_tensor_is_an_error_naming_the_key_and_the_tensor()
    {
        using var data = Tiny.TrainSample();
        var dir = Tiny.TempDir();
        var wrong = Path.Combine(dir, "wrong.safetensors");
        WeightFiles.SaveSafetensors(wrong, new Dictionary<string, Tensor> { ["cls_token"] = zeros(1, 1, 64) });
        var e = Assert.Throws<ConfigException>(() => new DenseTrainer(Tiny.Model, Tiny.Train() with { InitFrom = wrong }, data));
        Assert.Equal("moce.pretrain.init-from", e.Key);
        Assert.Contains("'cls_token' is [1, 1, 64], the model's is [1, 1, 32]", e.Message);

        var unknown = Path.Combine(dir, "unknown.safetensors");
        WeightFiles.SaveSafetensors(unknown, new Dictionary<string, Tensor> { ["head.weight"] = zeros(10, 32) });
        e = Assert.Throws<ConfigException>(() => new DenseTrainer(Tiny.Model, Tiny.Train() with { InitFrom = unknown }, data));
        Assert.Contains("'head.weight'", e.Message);

        var garbage = Path.Combine(dir, "garbage.safetensors");
        File.WriteAllBytes(garbage, [1, 2, 3]);
        e = Assert.Throws<ConfigException>(() => new DenseTrainer(Tiny.Model, Tiny.Train() with { InitFrom = garbage }, data));
        Assert.Contains("not a readable weights file", e.Message);
        e = Assert.Throws<ConfigException>(() => new DenseTrainer(Tiny.Model, Tiny.Train() with { InitFrom = Path.Combine(dir, "missing.pt") }, data));
        Assert.Contains("no such file", e.Message);
    }
}
