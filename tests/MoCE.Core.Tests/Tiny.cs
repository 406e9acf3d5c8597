using MoCE.Core.Config;
using MoCE.Core.Data;

namespace MoCE.Core.Tests;

/// <summary>"Baby" configurations and the committed Fashion-MNIST sample, shared by the tests.</summary>
public static class Tiny
{
    public static MaeConfig Model => new()
    {
        ImageSize = 28, InChans = 1, PatchSize = 7, Dim = 32, Depth = 2, Heads = 2,
        DecoderDim = 16, DecoderDepth = 1, DecoderHeads = 2, MaskRatio = 0.75,
    };

    public static TrainConfig Train(long steps = 10, long seed = 7) => new()
    {
        Seed = seed, Steps = steps, BatchSize = 16, BaseLr = 1e-2, WarmupSteps = 2, CheckpointEvery = 1000, LogEvery = 1000,
    };


    public static string SampleDir => Datasets.SampleDir("fashion-mnist-sample");

    public static readonly DatasetSpec Fashion = new("fashion-mnist", "", [], "", "fashion-mnist-sample", Normalization.FashionMnist,
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]);

    private static readonly Lazy<(byte[] pixels, int[] labels)> Train1k = new(() =>
    {
        using var full = Datasets.Load(Fashion, SampleDir, Split.Train);
        var img = IdxArray.Read(Path.Combine(SampleDir, "train-images-idx3-ubyte.gz"), 3);
        return (img.Data[..(1000 * 784)], full.Labels[..1000]);
    });

    /// <summary>The first 1000 sample images (fresh tensor each call, so tests may dispose it).</summary>
    public static ImageDataset TrainSample() =>
        ImageDataset.FromPixels(Train1k.Value.pixels, 1000, 1, 28, 28, Train1k.Value.labels, "sample[0..1000)");

    /// <summary>Same shape and identical elements.</summary>
    public static bool Same(TorchSharp.torch.Tensor a, TorchSharp.torch.Tensor b) =>
        a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    public static string TempDir()
    {
        var d = Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(d);
        return d;
    }
}
