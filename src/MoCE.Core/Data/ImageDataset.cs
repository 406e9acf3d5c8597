using System.Globalization;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Core.Data;

/// <summary>Pixel normalisation of a source, per channel: (x / 255 − Mean[c]) / Std[c]; one value stands for every
/// channel. NaN: not configured, measured from the source's training images (<see cref="Datasets.Complete"/>).</summary>
public sealed record Normalization(IReadOnlyList<double> Mean, IReadOnlyList<double> Std)
{
    public Normalization(double mean, double std) : this([mean], [std]) { }

    /// <summary>Fashion-MNIST's training-set statistics.</summary>
    public static readonly Normalization FashionMnist = new(0.2860, 0.3530);
    /// <summary>Neither configured: both measured.</summary>
    public static readonly Normalization Measured = new(double.NaN, double.NaN);

    public bool IsSet => Mean.All(double.IsFinite) && Std.All(double.IsFinite);

    /// <summary>This, with what is not configured taken from <paramref name="measured"/>: a mean or std left out is
    /// measured, channel by channel.</summary>
    public Normalization Or(Normalization measured) => new(
        Mean.All(double.IsFinite) ? Mean : measured.Mean, Std.All(double.IsFinite) ? Std : measured.Std);

    /// <summary>The mean and std of each of <paramref name="channels"/> channels.</summary>
    public Normalization For(int channels, string key)
    {
        IReadOnlyList<double> Expand(IReadOnlyList<double> v, string which) =>
            v.Count == channels ? v : v.Count == 1 ? Enumerable.Repeat(v[0], channels).ToArray()
                : throw new Config.ConfigException($"{key}.{which}", $"has {v.Count} values for {channels} channels (give one, or one per channel)");
        return new Normalization(Expand(Mean, "mean"), Expand(Std, "std"));
    }

    public bool Equals(Normalization? other) => other is not null && Mean.SequenceEqual(other.Mean) && Std.SequenceEqual(other.Std);
    public override int GetHashCode() => HashCode.Combine(Mean.Count, Mean.FirstOrDefault(), Std.FirstOrDefault());
    public override string ToString() => $"mean {Describe(Mean)}, std {Describe(Std)}";
    private static string Describe(IReadOnlyList<double> v) => v.Count == 1 ? v[0].ToString("G4", CultureInfo.InvariantCulture)
        : "[" + string.Join(", ", v.Select(x => x.ToString("G4", CultureInfo.InvariantCulture))) + "]";
}

/// <summary>Images with optional labels, from one or more sources (domains), each with its own normalisation, as a
/// view: rows that point into the sources' images, which are held decoded (IDX) or read and decoded per use (folders,
/// tar shards). Subsets and mixes share their sources. Labels are for evaluation only, never for training. A mix of
/// sources numbers its classes source after source (<see cref="Mix"/>). Training batches may be augmented
/// (<see cref="Augment"/>), each image's draw a function of (seed, step, row), and are decoded by
/// <see cref="Workers"/> threads, the next one ahead of the step (<see cref="Prefetch"/>).</summary>
public sealed class ImageDataset : IDisposable
{
    private readonly PixelSource[] sources;    // per domain
    private readonly Normalization[] norms;    // per domain, one value per channel
    private readonly int[] domains;            // per row; empty when there is one domain
    private readonly int[] local;              // per row, the image in its source
    public int[] Labels { get; }
    public string Source { get; }
    /// <summary>The class names, indexed by label.</summary>
    public IReadOnlyList<string> ClassNames { get; }
    /// <summary>The sources' names, indexed by domain.</summary>
    public IReadOnlyList<string> DomainNames { get; }
    public int Count => local.Length;
    public int Channels { get; }
    public int Height { get; }
    public int Width { get; }
    /// <summary>MAE's augmentation for training batches (<see cref="TrainBatch"/>); null: none.</summary>
    public Augmentation? Augment { get; init; }
    /// <summary>Threads that decode and augment a batch.</summary>
    public int Workers { get; init; } = 1;

    private ImageDataset(PixelSource[] sources, Normalization[] norms, int[] domains, int[] local, int[] labels, string source,
                         IReadOnlyList<string> classNames, IReadOnlyList<string> domainNames, int channels, int height, int width)
    {
        if (labels.Length != 0 && labels.Length != local.Length)
            throw new ArgumentException($"{source}: {labels.Length} labels for {local.Length} images");
        this.sources = sources;
        this.norms = norms.Select((n, d) => n.For(channels, $"moce.datasets.{domainNames[d]}")).ToArray();
        this.domains = domains;
        this.local = local;
        Labels = labels;
        Source = source;
        ClassNames = classNames;
        DomainNames = domainNames;
        Channels = channels;
        Height = height;
        Width = width;
    }

    /// <summary>A single source's images, all of them, in order.</summary>
    public static ImageDataset Create(PixelSource pixels, int channels, int height, int width, int[] labels, string source,
                                      Normalization? norm = null, IReadOnlyList<string>? classNames = null, string name = "") =>
        new([pixels], [norm ?? Normalization.FashionMnist], [], Enumerable.Range(0, pixels.Count).ToArray(), labels, source,
            classNames ?? Enumerable.Range(0, labels.Length == 0 ? 0 : labels.Max() + 1).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToArray(),
            [name], channels, height, width);

    /// <summary>Decoded grey or RGB images [N, C, H, W] in memory.</summary>
    public static ImageDataset FromPixels(byte[] pixels, int count, int channels, int height, int width, int[] labels, string source,
                                          Normalization? norm = null, IReadOnlyList<string>? classNames = null, string name = "") =>
        Create(new RawPixels(pixels, count, channels, height, width), channels, height, width, labels, source, norm, classNames, name);

    /// <summary>The mean and (population) standard deviation of every channel of every image scaled to [0, 1]: the
    /// normalisation a source gets when its configuration gives none. IDX images are counted as stored; encoded images as
    /// decoded, at their own size.</summary>
    public Normalization PixelStatistics()
    {
        var counts = new long[Channels, 256];                          // a histogram of the bytes: no float copy of the images
        var buf = new byte[Channels * Height * Width];
        for (int i = 0; i < Count; i++)
        {
            var src = sources[DomainOf(i)];
            if (src.TryPlanar(local[i], Channels, Height, Width, buf)) Tally(counts, buf, Height * Width);
            else { var img = src.Rgba(local[i]); var b = new byte[Channels * img.Width * img.Height]; img.ToPlanar(b, Channels); Tally(counts, b, img.Width * img.Height); }
        }
        return Histogram(counts);
    }

    /// <summary>Counts the bytes of a planar image of <paramref name="n"/> pixels per channel into <paramref name="counts"/>[c, v].</summary>
    public static void Tally(long[,] counts, ReadOnlySpan<byte> planar, int n)
    {
        for (int c = 0; c < counts.GetLength(0); c++) foreach (var v in planar.Slice(c * n, n)) counts[c, v]++;
    }

    /// <summary>Per channel, the mean and std of values v/255 counted in <paramref name="counts"/>[c, v].</summary>
    public static Normalization Histogram(long[,] counts)
    {
        int channels = counts.GetLength(0);
        var mean = new double[channels];
        var std = new double[channels];
        for (int c = 0; c < channels; c++)
        {
            double n = 0, m = 0;
            for (int v = 0; v < 256; v++) { n += counts[c, v]; m += counts[c, v] * (v / 255.0); }
            m /= n;
            double s = 0;
            for (int v = 0; v < 256; v++) s += counts[c, v] * Math.Pow(v / 255.0 - m, 2);
            (mean[c], std[c]) = (m, Math.Sqrt(s / n));
        }
        return new Normalization(mean, std);
    }

    /// <summary>Reads an IDX image file and its label file; counts must agree.</summary>
    public static ImageDataset FromIdx(string imagesPath, string labelsPath, Normalization? norm = null, IReadOnlyList<string>? classNames = null, string name = "")
    {
        var img = IdxArray.Read(imagesPath, expectedDims: 3);
        var lab = IdxArray.Read(labelsPath, expectedDims: 1);
        if (img.Count != lab.Count)
            throw new DataFormatException(labelsPath, $"{lab.Count} labels but {imagesPath} has {img.Count} images");
        var labels = lab.Data.Select(b => (int)b).ToArray();
        if (classNames is not null && labels.Length > 0 && labels.Max() >= classNames.Count)
            throw new DataFormatException(labelsPath, $"label {labels.Max()} but the dataset has {classNames.Count} classes");
        return FromPixels(img.Data, img.Count, 1, img.Shape[1], img.Shape[2], labels, imagesPath, norm, classNames, name);
    }

    /// <summary>Images of several sources in one set: part p contributes its images at its indices (in that order),
    /// keeps its normalisation as domain p, and its labels are offset by the class counts of the parts before it.</summary>
    public static ImageDataset Mix(IReadOnlyList<(ImageDataset data, int[] indices)> parts)
    {
        if (parts.Count == 0) throw new ArgumentException("a mix needs at least one part");
        if (parts.Count == 1) return parts[0].data.Subset(parts[0].indices);
        var first = parts[0].data;
        var labels = new List<int>();
        var doms = new List<int>();
        var rows = new List<int>();
        var names = new List<string>();
        int offset = 0;
        bool labelled = parts.All(p => p.data.Labels.Length > 0);
        for (int p = 0; p < parts.Count; p++)
        {
            var (d, idx) = parts[p];
            if (d.domains.Length != 0) throw new ArgumentException($"{d.Source}: a mix cannot be part of a mix");
            if (d.Channels != first.Channels || d.Height != first.Height || d.Width != first.Width)
                throw new ArgumentException($"{d.Source}: images of {d.Channels}×{d.Height}×{d.Width} cannot mix with {first.Channels}×{first.Height}×{first.Width}");
            if (labelled) labels.AddRange(idx.Select(i => d.Labels[i] + offset));
            doms.AddRange(Enumerable.Repeat(p, idx.Length));
            rows.AddRange(idx.Select(i => d.local[i]));
            names.AddRange(d.ClassNames.Select(c => $"{d.DomainNames[0]}:{c}"));
            offset += d.ClassNames.Count;
        }
        return new ImageDataset(parts.Select(p => p.data.sources[0]).ToArray(), parts.Select(p => p.data.norms[0]).ToArray(), doms.ToArray(), rows.ToArray(),
            labels.ToArray(), string.Join(" + ", parts.Select(p => $"{p.data.DomainNames[0]}×{p.indices.Length}")), labelled ? names : [],
            parts.Select(p => p.data.DomainNames[0]).ToArray(), first.Channels, first.Height, first.Width)
        { Augment = first.Augment, Workers = parts.Max(p => p.data.Workers) };
    }

    /// <summary>The source (domain) of each image: 0 for a single source.</summary>
    public int DomainOf(int index) => domains.Length == 0 ? 0 : domains[index];

    /// <summary>The images at <paramref name="indices"/> (and their labels) as a new single-source dataset.</summary>
    public ImageDataset Subset(IReadOnlyList<int> indices)
    {
        if (domains.Length != 0) throw new InvalidOperationException("a mix cannot be subset");
        return new ImageDataset(sources, norms, [], indices.Select(i => local[i]).ToArray(), Labels.Length == 0 ? [] : indices.Select(i => Labels[i]).ToArray(),
            Source, ClassNames, DomainNames, Channels, Height, Width) { Augment = Augment, Workers = Workers };
    }

    /// <summary>The first <paramref name="n"/> images (and labels) as a new dataset.</summary>
    public ImageDataset Take(int n)
    {
        if (n <= 0 || n > Count) throw new ArgumentOutOfRangeException(nameof(n), $"take {n} of {Count} images");
        return new ImageDataset(sources, norms, domains.Length == 0 ? [] : domains[..n], local[..n], Labels.Length == 0 ? [] : Labels[..n], $"{Source}[0..{n})",
            ClassNames, DomainNames, Channels, Height, Width) { Augment = Augment, Workers = Workers };
    }

    /// <summary>The same images, with training batches augmented by <paramref name="augment"/> (null: none) and decoded by
    /// <paramref name="workers"/> threads.</summary>
    public ImageDataset WithLoading(Augmentation? augment, int workers) =>
        new(sources, norms, domains, local, Labels, Source, ClassNames, DomainNames, Channels, Height, Width) { Augment = augment, Workers = Math.Max(1, workers) };

    /// <summary>The images at <paramref name="indices"/>, scaled to [0,1] and normalized by their source: [B, C, H, W]
    /// float32. Never augmented: what evaluation sees.</summary>
    public Tensor Batch(ReadOnlySpan<int> indices) => Normalize(Pixels(indices.ToArray(), null), indices);

    /// <summary>The training batch of <paramref name="step"/>: <see cref="Batch"/>, augmented when <see cref="Augment"/> is
    /// set, image i's crop and flip drawn from (<paramref name="seed"/>, step, i). Decoded once however many ask for it
    /// (the trainer and the teacher build the same batch), and ahead of the step when <see cref="Prefetch"/> asked.</summary>
    public Tensor TrainBatch(ReadOnlySpan<int> indices, long step, long seed) => Normalize(Decoded(indices, step, seed).Result, indices);

    /// <summary>The bytes [B, C, H, W] of the training batch of <paramref name="step"/>, before normalisation: what the
    /// loader's workers make (measured by <see cref="Training.LoaderBench"/>).</summary>
    public byte[] TrainPixels(ReadOnlySpan<int> indices, long step, long seed) => Pixels(indices.ToArray(), Augment is null ? null : (step, seed));

    /// <summary>Starts decoding (and augmenting) the training batch of <paramref name="step"/> on the thread pool, for
    /// <see cref="TrainBatch"/> to take.</summary>
    public void Prefetch(ReadOnlySpan<int> indices, long step, long seed) => Decoded(indices, step, seed);

    private readonly Dictionary<(long step, long seed), (int[] indices, Task<byte[]> pixels)> decoded = [];
    /// <summary>Batches kept: the current step's (for its second reader) and the next one, decoded ahead.</summary>
    private const int Kept = 3;

    private Task<byte[]> Decoded(ReadOnlySpan<int> indices, long step, long seed)
    {
        var ix = indices.ToArray();
        lock (decoded)
        {
            if (decoded.TryGetValue((step, seed), out var d) && d.indices.AsSpan().SequenceEqual(ix)) return d.pixels;
            decoded.Remove((step, seed));
            while (decoded.Count >= Kept) decoded.Remove(decoded.Keys.Min());
            var task = Task.Run(() => Pixels(ix, Augment is null ? null : (step, seed)));
            decoded[(step, seed)] = (ix, task);
            return task;
        }
    }

    /// <summary>The batch's bytes [B, C, H, W], images decoded and cropped by up to <see cref="Workers"/> threads.</summary>
    private byte[] Pixels(int[] ix, (long step, long seed)? draw)
    {
        int n = Channels * Height * Width;
        var buf = new byte[(long)ix.Length * n];
        void One(int b)
        {
            int row = ix[b];
            var src = sources[DomainOf(row)];
            Func<int, int, Crop>? crop = draw is var (step, seed) && Augment is { } a ? (w, h) => a.Draw(seed, step, row, w, h) : null;
            try { src.Planar(local[row], Channels, Height, Width, crop, buf.AsSpan(b * n, n)); }
            catch (DataFormatException) { throw; }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new DataFormatException(src.Name(local[row]), e.Message); }
        }
        if (Workers <= 1 || ix.Length == 1) for (int b = 0; b < ix.Length; b++) One(b);
        else Parallel.For(0, ix.Length, new ParallelOptions { MaxDegreeOfParallelism = Workers }, One);
        return buf;
    }

    private Tensor Normalize(byte[] px, ReadOnlySpan<int> indices)
    {
        using var raw = torch.tensor(px, new long[] { indices.Length, Channels, Height, Width }, ScalarType.Byte);
        var x = raw.to_type(ScalarType.Float32).div_(Runtime.Scalars.Of(255.0));
        if (norms.Length == 1 && norms[0].Mean.Distinct().Count() == 1 && norms[0].Std.Distinct().Count() == 1)
            return x.sub_(Runtime.Scalars.Of(norms[0].Mean[0])).div_(Runtime.Scalars.Of(norms[0].Std[0]));
        var mean = new float[indices.Length * Channels];
        var std = new float[indices.Length * Channels];
        for (int b = 0; b < indices.Length; b++)
            for (int c = 0; c < Channels; c++)
            {
                var nm = norms[DomainOf(indices[b])];
                (mean[b * Channels + c], std[b * Channels + c]) = ((float)nm.Mean[c], (float)nm.Std[c]);
            }
        using var m = torch.tensor(mean).view(-1, Channels, 1, 1);
        using var s = torch.tensor(std).view(-1, Channels, 1, 1);
        return x.sub_(m).div_(s);
    }

    public int[] LabelsAt(ReadOnlySpan<int> indices)
    {
        var res = new int[indices.Length];
        for (int i = 0; i < res.Length; i++) res[i] = Labels[indices[i]];
        return res;
    }

    /// <summary>Drops the batches it keeps. The images themselves are managed arrays or files read per use.</summary>
    public void Dispose()
    {
        lock (decoded) decoded.Clear();
    }
}
