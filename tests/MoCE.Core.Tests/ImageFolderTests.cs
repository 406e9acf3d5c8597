using MoCE.Core.Data;
using static TorchSharp.torch;

namespace MoCE.Core.Tests;

/// <summary>Image folders and WebDataset shards (the committed RGB sample data/shapes-sample, its shards
/// data/shapes-shards), decoding and conversion, MAE's augmentation, the batch loader, and bad input.</summary>
public class ImageFolderTests
{
    private static readonly string Folder = Datasets.SampleDir("shapes-sample"), Shards = Datasets.SampleDir("shapes-shards");
    private const int Size = 32;

    private static DatasetSpec Spec(string dir, DatasetFormat format, BadImages bad = BadImages.Skip) =>
        new("shapes", dir, [], "", "", Normalization.Measured, [], format, bad);

    private static ImageDataset Load(string dir, DatasetFormat format, Split split = Split.Train, int workers = 1, Augmentation? aug = null, BadImages bad = BadImages.Skip) =>
        Datasets.Load(Spec(dir, format, bad), dir, split, Size, 3).WithLoading(aug, workers);

    private static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Fact]
    public void Folder_and_tar_shards_give_bit_identical_batches_with_and_without_augmentation()
    {
        foreach (var split in new[] { Split.Train, Split.Test })
        {
            using var folder = Load(Folder, DatasetFormat.Folder, split, aug: new Augmentation());
            using var tar = Load(Shards, DatasetFormat.Tar, split, workers: 3, aug: new Augmentation());
            Assert.Equal(split == Split.Train ? 240 : 60, folder.Count);
            Assert.Equal(folder.Count, tar.Count);
            Assert.Equal(folder.Labels, tar.Labels);
            Assert.Equal(["checker", "disc", "gradient", "plasma", "radial", "stripes"], folder.ClassNames);
            Assert.Equal(folder.ClassNames, tar.ClassNames);
            var all = Enumerable.Range(0, folder.Count).ToArray();
            using (var a = folder.Batch(all))
            using (var b = tar.Batch(all))
            {
                Assert.Equal(new long[] { folder.Count, 3, Size, Size }, a.shape);
                Assert.True(Same(a, b), $"{split}: evaluation batches differ");
            }
            var sampler = new EpochSampler(folder.Count, 32, seed: 3);
            for (long step = 0; step < 4; step++)
            {
                using var a = folder.TrainBatch(sampler.Batch(step), step, 3);
                using var b = tar.TrainBatch(sampler.Batch(step), step, 3);
                Assert.True(Same(a, b), $"{split} step {step}: augmented batches differ");
            }
        }
        Assert.Equal(Datasets.Complete(Spec(Folder, DatasetFormat.Folder), Folder, 3).Norm, Datasets.Complete(Spec(Shards, DatasetFormat.Tar), Shards, 3).Norm);
    }

    [Fact]
    public void The_committed_shards_are_the_committed_folder_as_moce_shard_writes_it()
    {
        var dir = Tiny.TempDir();
        var written = ImageFiles.WriteShards(Folder, dir, "shapes", 128);
        Assert.Equal(3, written.Count);
        foreach (var f in written)
        {
            var committed = Path.Combine(Shards, Path.GetRelativePath(dir, f));
            Assert.True(File.ReadAllBytes(committed).AsSpan().SequenceEqual(File.ReadAllBytes(f)), $"{committed} is not what `moce shard` writes from {Folder}");
        }
        Assert.Equal(File.ReadAllLines(Path.Combine(Shards, ImageFiles.ClassesFile)), File.ReadAllLines(Path.Combine(dir, ImageFiles.ClassesFile)));
    }

    [Fact]
    public void An_augmented_batch_depends_only_on_seed_step_and_index_not_on_workers_or_prefetch()
    {
        var aug = new Augmentation();
        using var one = Load(Folder, DatasetFormat.Folder, workers: 1, aug: aug);
        using var four = Load(Folder, DatasetFormat.Folder, workers: 4, aug: aug);
        int[] ix = [0, 5, 17, 63, 64, 100, 101, 239];
        using var a = one.TrainBatch(ix, 5, 7);
        using var b = four.TrainBatch(ix, 5, 7);
        Assert.True(Same(a, b), "4 workers give other pixels than 1");
        four.Prefetch(ix, 6, 7);
        using var c = four.TrainBatch(ix, 6, 7);
        using var d = one.TrainBatch(ix, 6, 7);
        Assert.True(Same(c, d), "a prefetched batch differs from one made on the spot");
        Assert.False(Same(a, c), "step 6 drew the same crops as step 5");
        using var e = one.TrainBatch(ix, 5, 8);
        Assert.False(Same(a, e), "another seed drew the same crops");
        using var again = Load(Folder, DatasetFormat.Folder, aug: aug);        // a replay, from a fresh load
        using var f = again.TrainBatch(ix, 5, 7);
        Assert.True(Same(a, f));
        // a prefetch for other indices under the same step is not used
        four.Prefetch([1, 2], 9, 7);
        using var g = four.TrainBatch(ix, 9, 7);
        using var h = one.TrainBatch(ix, 9, 7);
        Assert.True(Same(g, h));

        using var plain = Load(Folder, DatasetFormat.Folder);                  // no augmentation: training sees what evaluation sees
        using var p = plain.TrainBatch(ix, 5, 7);
        using var q = plain.Batch(ix);
        Assert.True(Same(p, q));
        Assert.False(Same(a, q));
    }

    [Fact]
    public void RandomResizedCrop_draws_stay_in_the_image_within_scale_and_aspect_and_flip_half_the_time()
    {
        var aug = new Augmentation(ScaleMin: 0.2, ScaleMax: 1.0);
        int flips = 0, n = 4000;
        var areas = new List<double>();
        for (int i = 0; i < n; i++)
        {
            var c = aug.Draw(11, i / 64, i % 64, 80, 60);
            Assert.InRange(c.X, 0, 80 - c.Width);
            Assert.InRange(c.Y, 0, 60 - c.Height);
            double area = (double)c.Width * c.Height / (80 * 60), ratio = (double)c.Width / c.Height;
            Assert.InRange(area, 0.2 * 0.9, 1.0);                              // rounding of the sides
            Assert.InRange(ratio, 3.0 / 4 * 0.9, 4.0 / 3 / 0.9);
            areas.Add(area);
            if (c.Flip) flips++;
        }
        Assert.InRange(flips, n * 0.46, n * 0.54);
        // torchvision's get_params, simulated with 200,000 draws, averages 0.5006 of an 80×60 image (large crops are
        // rejected more often); the standard error of 4000 draws is about 0.004
        Assert.True(areas.Average() is > 0.485 and < 0.515, $"mean area {areas.Average():F3}, torchvision's 0.5006");
        Assert.Equal(aug.Draw(11, 3, 5, 80, 60), aug.Draw(11, 3, 5, 80, 60));
        var whole = new Augmentation(1.0, 1.0, Flip: false).Draw(1, 0, 0, 64, 64);
        Assert.True(whole is { Width: <= 64, Height: <= 64, Flip: false });
        Assert.Throws<Config.ConfigException>(() => new Augmentation(0.5, 0.2).Validate());
    }

    [Theory]
    [InlineData("radial/radial-031.jpg", 40, 54, 84.64, 32.39, 144.69)]      // CMYK JPEG
    [InlineData("plasma/plasma-030.png", 49, 56, 79.00, 79.00, 79.00)]       // 16-bit grey PNG
    [InlineData("stripes/stripes-031.png", 64, 64, 159.32, 159.32, 159.32)]  // 16-bit grey PNG with alpha
    [InlineData("checker/checker-021.png", 46, 76, 178.15, 110.72, 138.66)]  // 16-bit RGB PNG
    [InlineData("stripes/stripes-035.png", 54, 62, 160.14, 168.62, 135.63)]  // 16-bit RGBA PNG
    public void Cmyk_16_bit_grey_and_alpha_images_decode_to_the_colours_imagemagick_gives(string file, int w, int h, double r, double g, double b)
    {
        // expected: ImageMagick 6.9, convert FILE -alpha off -colorspace sRGB -depth 8 -format '%[fx:mean.r*255] …' info:
        var img = ImageCodec.Decode(File.ReadAllBytes(Path.Combine(Folder, "train", file)), file);
        Assert.Equal((w, h), (img.Width, img.Height));
        double[] sum = new double[3];
        for (int i = 0; i < w * h; i++)
        {
            for (int c = 0; c < 3; c++) sum[c] += img.Pixels[4 * i + c];
            Assert.Equal(255, img.Pixels[4 * i + 3]);                          // alpha dropped
            if (r == g && g == b) Assert.True(img.Pixels[4 * i] == img.Pixels[4 * i + 1] && img.Pixels[4 * i + 1] == img.Pixels[4 * i + 2], "grey stays grey");
        }
        var mean = sum.Select(s => s / (w * h)).ToArray();
        Assert.True(Math.Abs(mean[0] - r) < 2.5 && Math.Abs(mean[1] - g) < 2.5 && Math.Abs(mean[2] - b) < 2.5,
            $"{file}: mean RGB {mean[0]:F2} {mean[1]:F2} {mean[2]:F2}, ImageMagick {r} {g} {b}");
    }

    [Fact]
    public void Images_of_other_sizes_are_resampled_to_the_model_size_from_their_central_square()
    {
        using var d = Load(Folder, DatasetFormat.Folder);
        var src = new EncodedPixels(ImageFiles.ListFolder(Path.Combine(Folder, "train")).Images);
        int i = src.Images.ToList().FindIndex(r => r.File.EndsWith("radial-031.jpg", StringComparison.Ordinal));  // 40×54
        var img = src.Rgba(i);
        var expected = new byte[3 * Size * Size];
        ImageCodec.CropResize(img, 0, 7, 40, 40, Size, false).ToPlanar(expected, 3);
        var got = new byte[expected.Length];
        src.Planar(i, 3, Size, Size, null, got);
        Assert.Equal(expected, got);
        var grey = new byte[Size * Size];
        src.Planar(i, 1, Size, Size, null, grey);                              // one channel: luma
        Assert.Equal((byte)((expected[0] * 299 + expected[Size * Size] * 587 + expected[2 * Size * Size] * 114 + 500) / 1000), grey[0]);
    }

    [Fact]
    public void Per_channel_statistics_are_measured_from_the_decoded_training_images_and_normalise_batches()
    {
        var norm = Datasets.Complete(Spec(Folder, DatasetFormat.Folder), Folder, 3).Norm;
        var listing = ImageFiles.ListFolder(Path.Combine(Folder, "train"));
        double[] s = new double[3], s2 = new double[3];
        long n = 0;
        foreach (var r in listing.Images)
        {
            var img = ImageCodec.Decode(ImageFiles.Read(r), r.Name);
            for (int p = 0; p < img.Width * img.Height; p++)
                for (int c = 0; c < 3; c++) { double v = img.Pixels[4 * p + c] / 255.0; s[c] += v; s2[c] += v * v; }
            n += img.Width * img.Height;
        }
        Assert.Equal(3, norm.Mean.Count);
        for (int c = 0; c < 3; c++)
        {
            double m = s[c] / n;
            Assert.Equal(m, norm.Mean[c], 1e-9);
            Assert.Equal(Math.Sqrt(s2[c] / n - m * m), norm.Std[c], 1e-9);
        }
        Assert.True(norm.Mean.Distinct().Count() == 3, "the channels' means differ in this sample: one value for all would be a bug");

        using var d = Load(Folder, DatasetFormat.Folder);
        var px = new byte[3 * Size * Size];
        new EncodedPixels(listing.Images).Planar(0, 3, Size, Size, null, px);
        using var batch = d.Batch([0]);
        var got = batch.data<float>().ToArray();
        for (int c = 0; c < 3; c++)
            for (int p = 0; p < Size * Size; p += 97)
                Assert.Equal((px[c * Size * Size + p] / 255f - (float)norm.Mean[c]) / (float)norm.Std[c], got[c * Size * Size + p], 1e-6f);
    }

    /// <summary>Two classes of the sample, copied, with some images broken.</summary>
    private static (string root, string[] bad) Broken()
    {
        var root = Tiny.TempDir();
        foreach (var cls in new[] { "disc", "plasma" })
        {
            Directory.CreateDirectory(Path.Combine(root, "train", cls));
            foreach (var f in Directory.GetFiles(Path.Combine(Folder, "train", cls)).Order(StringComparer.Ordinal).Take(12))
                File.Copy(f, Path.Combine(root, "train", cls, Path.GetFileName(f)));
        }
        var jpg = Directory.GetFiles(Path.Combine(root, "train", "disc"), "*.jpg").Order(StringComparer.Ordinal).First();
        var png = Directory.GetFiles(Path.Combine(root, "train", "plasma"), "*.png").Order(StringComparer.Ordinal).First();
        File.WriteAllBytes(jpg, File.ReadAllBytes(jpg)[..(int)(new FileInfo(jpg).Length / 2)]);   // truncated
        File.WriteAllBytes(png, File.ReadAllBytes(png)[..(int)(new FileInfo(png).Length / 2)]);
        var garbage = Path.Combine(root, "train", "plasma", "zz-not-an-image.jpg");
        File.WriteAllBytes(garbage, [.. Enumerable.Range(0, 3000).Select(i => (byte)(i * 7))]);
        var empty = Path.Combine(root, "train", "disc", "zz-empty.png");
        File.WriteAllBytes(empty, []);
        return (root, [jpg, png, garbage, empty]);
    }

    [Fact]
    public void Corrupt_truncated_and_empty_images_are_skipped_and_counted_or_are_an_error_naming_the_file()
    {
        var (root, bad) = Broken();
        var shards = Tiny.TempDir();
        ImageFiles.WriteShards(root, shards, "broken", 10);
        foreach (var (dir, format) in new[] { (root, DatasetFormat.Folder), (shards, DatasetFormat.Tar) })
        {
            using var d = Load(dir, format);
            Assert.Equal(26 - bad.Length, d.Count);
            var scan = Datasets.Scan(Spec(dir, format), dir, Split.Train, 3);
            Assert.Equal(bad.Length, scan.Bad.Count);
            if (format == DatasetFormat.Folder)
                foreach (var f in bad) Assert.Contains(scan.Bad, m => m.Contains(f, StringComparison.Ordinal));
            using var all = d.Batch(Enumerable.Range(0, d.Count).ToArray());    // what is left decodes

            var e = Assert.Throws<DataFormatException>(() => Load(dir, format, bad: BadImages.Error));
            Assert.Contains($"{bad.Length} of 26 images", e.Message);
            Assert.Contains("bad-images = skip", e.Message);
            if (format == DatasetFormat.Folder) Assert.Contains(e.Path, bad);
            else Assert.StartsWith(Path.Combine(shards, "train"), e.Path);
        }
    }

    [Fact]
    public void An_empty_class_folder_an_image_beside_class_folders_and_a_missing_split_are_errors_naming_the_path()
    {
        var (root, _) = Broken();
        var empty = Path.Combine(root, "train", "empty-class");
        Directory.CreateDirectory(empty);
        var e = Assert.Throws<DataFormatException>(() => ImageFiles.List(root, Split.Train, DatasetFormat.Folder));
        Assert.Equal(empty, e.Path);
        Assert.Contains("empty class folder", e.Message);
        Directory.Delete(empty);

        var loose = Path.Combine(root, "train", "loose.png");
        File.Copy(Directory.GetFiles(Path.Combine(root, "train", "disc"), "*.png")[0], loose);
        e = Assert.Throws<DataFormatException>(() => ImageFiles.List(root, Split.Train, DatasetFormat.Folder));
        Assert.Equal(loose, e.Path);
        File.Delete(loose);

        e = Assert.Throws<DataFormatException>(() => ImageFiles.List(root, Split.Test, DatasetFormat.Folder));
        Assert.Equal(root, e.Path);
        Assert.Contains("no val or test split", e.Message);
        var located = Assert.Throws<DataFormatException>(() => Datasets.Locate(Spec(root, DatasetFormat.Tar), fallbackToSample: false));
        Assert.Contains("format tar", located.Message);
    }

    [Fact]
    public void A_flat_folder_is_unlabelled_pre_training_data()
    {
        var root = Tiny.TempDir();
        foreach (var f in Directory.GetFiles(Path.Combine(Folder, "train", "gradient")).Take(20)) File.Copy(f, Path.Combine(root, Path.GetFileName(f)));
        using var d = Load(root, DatasetFormat.Folder, aug: new Augmentation());
        Assert.Equal(20, d.Count);
        Assert.Empty(d.Labels);
        Assert.Empty(d.ClassNames);
        using var t = d.TrainBatch([0, 1, 2, 3], 0, 0);
        Assert.Equal(new long[] { 4, 3, Size, Size }, t.shape);
        using var labelled = Load(Folder, DatasetFormat.Folder);
        using var mix = ImageDataset.Mix([(d, [0, 1]), (labelled, [0, 1, 2])]);
        Assert.Equal(5, mix.Count);
        Assert.Empty(mix.Labels);                                               // a mix is labelled only if every part is
    }
}
