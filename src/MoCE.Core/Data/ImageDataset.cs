using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Core.Data;

/// <summary>Images as uint8 [N, C, H, W] with optional labels. Labels are for evaluation only, never for
/// training.</summary>
public sealed class ImageDataset : IDisposable
{
    private readonly Tensor images; // [N, C, H, W] uint8
    public int[] Labels { get; }
    public string Source { get; }
    public int Count => (int)images.shape[0];
    public int Channels => (int)images.shape[1];
    public int Height => (int)images.shape[2];
    public int Width => (int)images.shape[3];

    public ImageDataset(byte[] pixels, int count, int channels, int height, int width, int[] labels, string source)
    {
        if (pixels.Length != (long)count * channels * height * width)
            throw new ArgumentException($"{source}: {pixels.Length} pixels do not make {count}×{channels}×{height}×{width}");
        if (labels.Length != 0 && labels.Length != count)
            throw new ArgumentException($"{source}: {labels.Length} labels for {count} images");
        images = torch.tensor(pixels, new long[] { count, channels, height, width }, ScalarType.Byte);
        Labels = labels;
        Source = source;
    }

    /// <summary>Reads an IDX image file and its label file; counts must agree.</summary>
    public static ImageDataset FromIdx(string imagesPath, string labelsPath)
    {
        var img = IdxArray.Read(imagesPath, expectedDims: 3);
        var lab = IdxArray.Read(labelsPath, expectedDims: 1);
        if (img.Count != lab.Count)
            throw new DataFormatException(labelsPath, $"{lab.Count} labels but {imagesPath} has {img.Count} images");
        var labels = lab.Data.Select(b => (int)b).ToArray();
        return new ImageDataset(img.Data, img.Count, 1, img.Shape[1], img.Shape[2], labels, imagesPath);
    }

    /// <summary>The first <paramref name="n"/> images (and labels) as a new dataset.</summary>
    public ImageDataset Take(int n)
    {
        if (n <= 0 || n > Count) throw new ArgumentOutOfRangeException(nameof(n), $"take {n} of {Count} images");
        using var head = images.narrow(0, 0, n).contiguous();
        return new ImageDataset(head.bytes.ToArray(), n, Channels, Height, Width, Labels.Length == 0 ? [] : Labels[..n], $"{Source}[0..{n})");
    }

    /// <summary>The images at <paramref name="indices"/>, scaled to [0,1] and normalized: [B, C, H, W] float32.</summary>
    public Tensor Batch(ReadOnlySpan<int> indices, double mean, double std)
    {
        using var idx = torch.tensor(indices.ToArray().Select(i => (long)i).ToArray(), ScalarType.Int64);
        using var raw = images.index_select(0, idx);
        return raw.to_type(ScalarType.Float32).div_(255.0).sub_(mean).div_(std);
    }

    public int[] LabelsAt(ReadOnlySpan<int> indices)
    {
        var res = new int[indices.Length];
        for (int i = 0; i < res.Length; i++) res[i] = Labels[indices[i]];
        return res;
    }

    public void Dispose() => images.Dispose();
}
