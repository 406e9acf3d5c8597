using System.Runtime.InteropServices;
using SkiaSharp;

namespace MoCE.Core.Data;

/// <summary>An image decoded to 8-bit RGBA with its alpha dropped (set opaque), width × height × 4 bytes, rows top down.</summary>
public sealed record RgbaImage(byte[] Pixels, int Width, int Height)
{
    /// <summary>A grey or planar RGB image [C, H, W] as RGBA.</summary>
    public static RgbaImage FromPlanar(ReadOnlySpan<byte> chw, int channels, int height, int width)
    {
        int n = height * width;
        var px = new byte[n * 4];
        for (int i = 0; i < n; i++)
        {
            px[4 * i] = chw[i];
            px[4 * i + 1] = chw[channels == 3 ? n + i : i];
            px[4 * i + 2] = chw[channels == 3 ? 2 * n + i : i];
            px[4 * i + 3] = 255;
        }
        return new RgbaImage(px, width, height);
    }

    /// <summary>Writes the image as [C, H, W]: RGB for 3 channels, luma (ITU-R 601, as PIL's "L") for 1.</summary>
    public void ToPlanar(Span<byte> chw, int channels)
    {
        int n = Width * Height;
        if (chw.Length != n * channels) throw new ArgumentException($"{chw.Length} bytes for {channels}×{Height}×{Width}");
        for (int i = 0; i < n; i++)
        {
            byte r = Pixels[4 * i], g = Pixels[4 * i + 1], b = Pixels[4 * i + 2];
            if (channels == 3) { chw[i] = r; chw[n + i] = g; chw[2 * n + i] = b; }
            else chw[i] = (byte)((r * 299 + g * 587 + b * 114 + 500) / 1000);
        }
    }
}

/// <summary>JPEG and PNG decoding and bicubic resampling through SkiaSharp (libjpeg-turbo and libpng inside Skia; the
/// version ScottPlot already ships). Decoding converts what it meets: grey, palette, 16-bit and CMYK images become 8-bit
/// RGB; an alpha channel is dropped, as PIL's convert("RGB") does. EXIF orientation is not applied (nor is it by
/// torchvision's folder loader).</summary>
public static class ImageCodec
{
    /// <summary>Catmull–Rom (a = −0.5), the cubic of PIL's and torchvision's BICUBIC.</summary>
    public static readonly SKSamplingOptions Bicubic = new(SKCubicResampler.CatmullRom);

    /// <summary>Decodes an encoded image; a file that is not an image, or is truncated, is a <see cref="DataFormatException"/>
    /// naming <paramref name="name"/>.</summary>
    public static RgbaImage Decode(byte[] encoded, string name)
    {
        using var stream = new SKMemoryStream(encoded);
        using var codec = SKCodec.Create(stream, out var created);
        if (codec is null) throw new DataFormatException(name, $"not a readable image ({Describe(created)})");
        var info = codec.Info;
        if (info.Width <= 0 || info.Height <= 0 || (long)info.Width * info.Height > 1L << 28)
            throw new DataFormatException(name, $"image of {info.Width}×{info.Height} pixels is out of range");
        var px = new byte[info.Width * info.Height * 4];
        var target = new SKImageInfo(info.Width, info.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
        var handle = GCHandle.Alloc(px, GCHandleType.Pinned);
        try
        {
            var result = codec.GetPixels(target, handle.AddrOfPinnedObject());
            if (result != SKCodecResult.Success)
                throw new DataFormatException(name, $"{Describe(result)} ({info.Width}×{info.Height} {codec.EncodedFormat})");
        }
        finally { handle.Free(); }
        for (int i = 3; i < px.Length; i += 4) px[i] = 255;
        return new RgbaImage(px, info.Width, info.Height);
    }

    /// <summary>The rectangle (<paramref name="x"/>, <paramref name="y"/>, <paramref name="w"/>, <paramref name="h"/>) of
    /// <paramref name="img"/> resampled to <paramref name="size"/>×<paramref name="size"/> by <see cref="Bicubic"/>, mirrored
    /// left to right if <paramref name="flip"/>. The identity rectangle at the same size is returned as is.</summary>
    public static RgbaImage CropResize(RgbaImage img, int x, int y, int w, int h, int size, bool flip)
    {
        if (x < 0 || y < 0 || w <= 0 || h <= 0 || x + w > img.Width || y + h > img.Height)
            throw new ArgumentOutOfRangeException(nameof(x), $"crop {w}×{h}+{x}+{y} outside a {img.Width}×{img.Height} image");
        RgbaImage res;
        if (x == 0 && y == 0 && w == img.Width && h == img.Height && w == size && h == size) res = img;
        else
        {
            var dst = new byte[size * size * 4];
            var hs = GCHandle.Alloc(img.Pixels, GCHandleType.Pinned);
            var hd = GCHandle.Alloc(dst, GCHandleType.Pinned);
            try
            {
                using var src = new SKPixmap(new SKImageInfo(img.Width, img.Height, SKColorType.Rgba8888, SKAlphaType.Opaque), hs.AddrOfPinnedObject(), img.Width * 4);
                using var crop = src.ExtractSubset(new SKRectI(x, y, x + w, y + h)) ?? throw new InvalidOperationException($"Skia could not crop {w}×{h}+{x}+{y}");
                using var to = new SKPixmap(new SKImageInfo(size, size, SKColorType.Rgba8888, SKAlphaType.Opaque), hd.AddrOfPinnedObject(), size * 4);
                if (!crop.ScalePixels(to, Bicubic)) throw new InvalidOperationException($"Skia could not resample {w}×{h} to {size}×{size}");
            }
            finally { hs.Free(); hd.Free(); }
            res = new RgbaImage(dst, size, size);
        }
        if (!flip) return res;
        var f = new byte[res.Pixels.Length];
        for (int r = 0; r < res.Height; r++)
            for (int c = 0; c < res.Width; c++)
                Buffer.BlockCopy(res.Pixels, (r * res.Width + c) * 4, f, (r * res.Width + res.Width - 1 - c) * 4, 4);
        return new RgbaImage(f, res.Width, res.Height);
    }

    private static string Describe(SKCodecResult r) => r switch
    {
        SKCodecResult.IncompleteInput or SKCodecResult.ErrorInInput => "truncated or corrupt image data",
        SKCodecResult.Unimplemented => "an image format or variant that cannot be decoded",
        SKCodecResult.InvalidInput => "not an image",
        _ => $"decoding failed: {r}",
    };
}
