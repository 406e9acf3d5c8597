namespace MoCE.Core.Data;

/// <summary>Where one source's images come from: decoded arrays in memory (IDX), or encoded files read and decoded on
/// demand (folders, tar shards), so that memory does not grow with the dataset.</summary>
public abstract class PixelSource
{
    public abstract int Count { get; }
    /// <summary>Where image <paramref name="i"/> is, for messages.</summary>
    public abstract string Name(int i);
    /// <summary>Image <paramref name="i"/> as RGBA.</summary>
    public abstract RgbaImage Rgba(int i);
    /// <summary>Copies image <paramref name="i"/> as [C, H, W] if it is stored with exactly that shape; false otherwise.</summary>
    public virtual bool TryPlanar(int i, int channels, int height, int width, Span<byte> dst) => false;

    /// <summary>Image <paramref name="i"/> as [C, H, W] bytes: as stored when the shape matches and there is no crop, else
    /// the crop (the central square when null) resampled bicubically to <paramref name="height"/>×<paramref name="width"/>.</summary>
    public void Planar(int i, int channels, int height, int width, Func<int, int, Crop>? crop, Span<byte> dst)
    {
        if (crop is null && TryPlanar(i, channels, height, width, dst)) return;
        if (height != width) throw new ArgumentException($"images are resampled to a square, not {height}×{width}");
        var img = Rgba(i);
        var c = crop?.Invoke(img.Width, img.Height) ?? Augmentation.Center(img.Width, img.Height);
        ImageCodec.CropResize(img, c.X, c.Y, c.Width, c.Height, height, c.Flip).ToPlanar(dst, channels);
    }
}

/// <summary>Decoded images of one shape in memory, [N, C, H, W] bytes (IDX files).</summary>
public sealed class RawPixels(byte[] data, int count, int channels, int height, int width) : PixelSource
{
    private readonly int stride = channels * height * width;
    public byte[] Data { get; } = data.Length == (long)count * channels * height * width ? data
        : throw new ArgumentException($"{data.Length} pixels do not make {count}×{channels}×{height}×{width}");
    public int Channels => channels;
    public int Height => height;
    public int Width => width;
    public override int Count => count;
    public override string Name(int i) => $"image {i}";
    public override RgbaImage Rgba(int i) => RgbaImage.FromPlanar(Data.AsSpan(i * stride, stride), channels, height, width);

    public override bool TryPlanar(int i, int c, int h, int w, Span<byte> dst)
    {
        if (c != channels || h != height || w != width) return false;
        Data.AsSpan(i * stride, stride).CopyTo(dst);
        return true;
    }
}

/// <summary>Encoded JPEG/PNG images, read from their files and decoded each time they are used.</summary>
public sealed class EncodedPixels(IReadOnlyList<EncodedRef> images) : PixelSource
{
    public IReadOnlyList<EncodedRef> Images { get; } = images;
    public override int Count => Images.Count;
    public override string Name(int i) => Images[i].Name;
    public override RgbaImage Rgba(int i) => ImageCodec.Decode(ImageFiles.Read(Images[i]), Images[i].Name);
}
