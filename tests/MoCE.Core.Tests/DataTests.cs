using System.IO.Compression;
using MoCE.Core.Data;

namespace MoCE.Core.Tests;

public class DataTests
{
    private static string Write(string name, byte[] bytes, bool gzip = false)
    {
        var path = Path.Combine(Tiny.TempDir(), name);
        if (!gzip) { File.WriteAllBytes(path, bytes); return path; }
        using var f = File.Create(path);
        using var gz = new GZipStream(f, CompressionLevel.Fastest);
        gz.Write(bytes);
        return path;
    }

    private static byte[] Idx(byte type, int[] shape, int dataBytes)
    {
        var ms = new MemoryStream();
        ms.Write([0, 0, type, (byte)shape.Length]);
        foreach (var d in shape) ms.Write([(byte)(d >> 24), (byte)(d >> 16), (byte)(d >> 8), (byte)d]);
        ms.Write(new byte[dataBytes]);
        return ms.ToArray();
    }

    [Fact]
    public void Reads_the_sample_gzipped_and_raw_identically()
    {
        var gz = IdxArray.Read(Path.Combine(Tiny.SampleDir, "t10k-images-idx3-ubyte.gz"), 3);
        Assert.Equal(new[] { 1000, 28, 28 }, gz.Shape);
        var raw = Path.Combine(Tiny.TempDir(), "t10k-images-idx3-ubyte");
        gz.Write(raw);
        Assert.Equal(gz.Data, IdxArray.Read(raw, 3).Data);
        using var ds = Datasets.Load(Tiny.Fashion, Tiny.SampleDir, Split.Test);
        Assert.Equal(1000, ds.Count);
        Assert.Equal(Enumerable.Range(0, 10), ds.Labels.Distinct().Order());
    }

    [Fact]
    public void Wrong_magic_is_named()
    {
        var p = Write("bad-magic", [0x1f, 0x00, 0x08, 0x03, 0, 0, 0, 0]);
        var e = Assert.Throws<DataFormatException>(() => IdxArray.Read(p, 3));
        Assert.Equal($"{p}: wrong magic 0x1F000803: not an IDX file", e.Message);
    }

    [Fact]
    public void Truncated_file_is_named_with_sizes()
    {
        var p = Write("trunc.gz", Idx(0x08, [10, 28, 28], 10 * 784 - 100), gzip: true);
        var e = Assert.Throws<DataFormatException>(() => IdxArray.Read(p, 3));
        Assert.StartsWith(p, e.Message);
        Assert.Contains("truncated: shape [10, 28, 28] needs 7840 data bytes, file has 7740", e.Message);
    }

    [Fact]
    public void Truncated_header_is_named()
    {
        var p = Write("trunc-header", Idx(0x08, [10, 28, 28], 0)[..9]);
        var e = Assert.Throws<DataFormatException>(() => IdxArray.Read(p, 3));
        Assert.Contains("truncated: header needs 16 bytes", e.Message);
    }

    [Fact]
    public void Unsupported_dimensions_and_types_are_named()
    {
        var dims = Write("dims", Idx(0x08, [10, 28, 28, 3], 10 * 784 * 3));
        Assert.Contains("unsupported dimensions: 4, expected 3", Assert.Throws<DataFormatException>(() => IdxArray.Read(dims, 3)).Message);
        var type = Write("float", Idx(0x0D, [10, 28, 28], 10 * 784 * 4));
        Assert.Contains("unsupported IDX element type 0x0D", Assert.Throws<DataFormatException>(() => IdxArray.Read(type, 3)).Message);
    }

    [Fact]
    public void Image_and_label_counts_must_agree()
    {
        var images = Write("train-images-idx3-ubyte", Idx(0x08, [10, 28, 28], 10 * 784));
        var labels = Write("train-labels-idx1-ubyte", Idx(0x08, [9], 9));
        var e = Assert.Throws<DataFormatException>(() => ImageDataset.FromIdx(images, labels));
        Assert.Equal($"{labels}: 9 labels but {images} has 10 images", e.Message);
    }

    [Fact]
    public void Corrupt_gzip_is_named()
    {
        var good = File.ReadAllBytes(Path.Combine(Tiny.SampleDir, "t10k-labels-idx1-ubyte.gz"));
        var p = Write("bad.gz", good[..(good.Length / 2)]);
        var e = Assert.Throws<DataFormatException>(() => IdxArray.Read(p, 1));
        Assert.StartsWith(p, e.Message);
    }

    [Fact]
    public void Explicit_data_path_without_files_is_an_error_not_a_silent_fallback()
    {
        var dir = Tiny.TempDir();
        var e = Assert.Throws<DataFormatException>(() => Datasets.Locate(Tiny.Fashion with { Path = dir }, fallbackToSample: true));
        Assert.StartsWith(dir, e.Message);
        Assert.Contains("moce.datasets.fashion-mnist.path", e.Message);
        Assert.Equal(new Datasets.Location(Tiny.SampleDir, false), Datasets.Locate(Tiny.Fashion with { Path = Tiny.SampleDir }, fallbackToSample: false));
        Assert.Equal(new Datasets.Location(Tiny.SampleDir, true), Datasets.Locate(Tiny.Fashion with { Search = [dir] }, fallbackToSample: true));
    }

    [Fact]
    public void Sampler_is_seeded_and_covers_each_epoch_once()
    {
        var a = new EpochSampler(100, 10, seed: 5);
        var b = new EpochSampler(100, 10, seed: 5);
        var c = new EpochSampler(100, 10, seed: 6);
        var epoch0 = Enumerable.Range(0, 10).SelectMany(s => a.Batch(s).ToArray()).ToList();
        Assert.Equal(Enumerable.Range(0, 100), epoch0.Order());
        var epoch1 = Enumerable.Range(10, 10).SelectMany(s => a.Batch(s).ToArray()).ToList();
        Assert.NotEqual(epoch0, epoch1);
        Assert.Equal(a.Batch(37).ToArray(), b.Batch(37).ToArray());
        Assert.NotEqual(a.Batch(37).ToArray(), c.Batch(37).ToArray());
    }

    [Fact]
    public void Sampler_position_is_the_global_step_alone()
    {
        var straight = new EpochSampler(103, 10, seed: 1); // 10 steps per epoch, 3 images dropped
        var seq = Enumerable.Range(0, 35).Select(s => straight.Batch(s).ToArray()).ToList();
        var resumed = new EpochSampler(103, 10, seed: 1);   // a fresh process resuming at step 23
        for (int s = 23; s < 35; s++) Assert.Equal(seq[s], resumed.Batch(s).ToArray());
        Assert.Equal(2, straight.EpochOf(23));
    }
}
