namespace MoCE.Core.Data;

public enum Split { Train, Test }

/// <summary>Finds and loads Fashion-MNIST (MIT licence, Zalando Research). Search order: an explicit
/// directory, the MOCE_DATA environment variable, Debian's dataset-fashion-mnist at
/// /usr/share/datasets/fashion-mnist, and last, if allowed, the small sample shipped with the build.</summary>
public static class FashionMnist
{
    public const string DebianDir = "/usr/share/datasets/fashion-mnist";
    public const string EnvVar = "MOCE_DATA";

    /// <summary>The committed sample (data/fashion-mnist-sample in the repo), copied next to the binaries.</summary>
    public static string SampleDir => System.IO.Path.Combine(AppContext.BaseDirectory, "data", "fashion-mnist-sample");

    public static readonly string[] ClassNames =
        ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"];

    /// <summary>Where the data will be read from, and whether that is the small sample.</summary>
    public sealed record Location(string Directory, bool IsSample);

    public static Location Locate(string? explicitDir, bool fallbackToSample)
    {
        if (!string.IsNullOrEmpty(explicitDir))
        {
            if (!HasSplit(explicitDir, Split.Train))
                throw new DataFormatException(explicitDir, "no Fashion-MNIST train files (train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz]) in this directory");
            return new Location(explicitDir, false);
        }
        var env = Environment.GetEnvironmentVariable(EnvVar);
        if (!string.IsNullOrEmpty(env))
        {
            if (!HasSplit(env, Split.Train))
                throw new DataFormatException(env, $"{EnvVar} points here, but there are no Fashion-MNIST train files");
            return new Location(env, false);
        }
        if (HasSplit(DebianDir, Split.Train)) return new Location(DebianDir, false);
        if (fallbackToSample && HasSplit(SampleDir, Split.Train)) return new Location(SampleDir, true);
        throw new DataFormatException(DebianDir,
            "Fashion-MNIST not found: install it with 'apt-get install -y dataset-fashion-mnist', set MOCE_DATA, or set moce.data.path");
    }

    public static ImageDataset Load(string dir, Split split)
    {
        string prefix = split == Split.Train ? "train" : "t10k";
        return ImageDataset.FromIdx(Find(dir, $"{prefix}-images-idx3-ubyte"), Find(dir, $"{prefix}-labels-idx1-ubyte"));
    }

    private static bool HasSplit(string dir, Split split)
    {
        string prefix = split == Split.Train ? "train" : "t10k";
        return Directory.Exists(dir) && TryFind(dir, $"{prefix}-images-idx3-ubyte") is not null && TryFind(dir, $"{prefix}-labels-idx1-ubyte") is not null;
    }

    private static string Find(string dir, string stem) =>
        TryFind(dir, stem) ?? throw new DataFormatException(System.IO.Path.Combine(dir, stem + "[.gz]"), "file not found");

    private static string? TryFind(string dir, string stem)
    {
        foreach (var name in new[] { stem + ".gz", stem })
        {
            var p = System.IO.Path.Combine(dir, name);
            if (File.Exists(p)) return p;
        }
        return null;
    }
}
