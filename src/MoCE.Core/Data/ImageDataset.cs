using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Core.Data;

/// <summary>Pixel normalisation of a source: (x / 255 − Mean) / Std. NaN: not configured, measured from the source's
/// training images (<see cref="Datasets.Complete"/>).</summary>
public sealed record Normalization(double Mean, double Std)
{
    /// <summary>Fashion-MNIST's training-set statistics.</summary>
    public static readonly Normalization FashionMnist = new(0.2860, 0.3530);
    /// <summary>Neither configured: both measured.</summary>
    public static readonly Normalization Measured = new(double.NaN, double.NaN);

    public bool IsSet => double.IsFinite(Mean) && double.IsFinite(Std);

    /// <summary>This, with what is not configured taken from <paramref name="measured"/>.</summary>
    public Normalization Or(Normalization measured) => new(double.IsFinite(Mean) ? Mean : measured.Mean, double.IsFinite(Std) ? Std : measured.Std);
}

/// <summary>Images as uint8 [N, C, H, W] with optional labels, from one or more sources (domains), each with its
/// own normalisation. Labels are for evaluation only, never for training. A mix of sources numbers its classes
/// source after source (<see cref="Mix"/>).</summary>
public sealed class ImageDataset : IDisposable
{
    private readonly Tensor images; // [N, C, H, W] uint8
    private readonly Normalization[] norms;    // per domain
    private readonly int[] domains;            // per image; empty when there is one domain
    public int[] Labels { get; }
    public string Source { get; }
    /// <summary>The class names, indexed by label.</summary>
    public IReadOnlyList<string> ClassNames { get; }
    /// <summary>The sources' names, indexed by domain.</summary>
    public IReadOnlyList<string> DomainNames { get; }
    public int Count => (int)images.shape[0];
    public int Channels => (int)images.shape[1];
    public int Height => (int)images.shape[2];
    public int Width => (int)images.shape[3];

    public ImageDataset(byte[] pixels, int count, int channels, int height, int width, int[] labels, string source,
                        Normalization? norm = null, IReadOnlyList<string>? classNames = null, string name = "")
        : this(pixels, count, channels, height, width, labels, source, [norm ?? Normalization.FashionMnist], [],
               classNames ?? Enumerable.Range(0, labels.Length == 0 ? 0 : labels.Max() + 1).Select(i => i.ToString(System.Globalization.CultureInfo.InvariantCulture)).ToArray(), [name])
    { }

    private ImageDataset(byte[] pixels, int count, int channels, int height, int width, int[] labels, string source,
                         Normalization[] norms, int[] domains, IReadOnlyList<string> classNames, IReadOnlyList<string> domainNames)
    {
        if (pixels.Length != (long)count * channels * height * width)
            throw new ArgumentException($"{source}: {pixels.Length} pixels do not make {count}×{channels}×{height}×{width}");
        if (labels.Length != 0 && labels.Length != count)
            throw new ArgumentException($"{source}: {labels.Length} labels for {count} images");
        images = torch.tensor(pixels, new long[] { count, channels, height, width }, ScalarType.Byte);
        Labels = labels;
        Source = source;
        this.norms = norms;
        this.domains = domains;
        ClassNames = classNames;
        DomainNames = domainNames;
    }

    /// <summary>The mean and (population) standard deviation of every pixel scaled to [0, 1], all channels together: the
    /// normalisation a source gets when its configuration gives none.</summary>
    public Normalization PixelStatistics()
    {
        var counts = new long[256];                                   // a histogram of the bytes: no float copy of the images
        foreach (var b in images.bytes) counts[b]++;
        double n = counts.Sum(), mean = Enumerable.Range(0, 256).Sum(v => counts[v] * (v / 255.0)) / n;
        return new Normalization(mean, Math.Sqrt(Enumerable.Range(0, 256).Sum(v => counts[v] * Math.Pow(v / 255.0 - mean, 2)) / n));
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
        return new ImageDataset(img.Data, img.Count, 1, img.Shape[1], img.Shape[2], labels, imagesPath, norm, classNames, name);
    }

    /// <summary>Images of several sources in one set: part p contributes its images at its indices (in that order),
    /// keeps its normalisation as domain p, and its labels are offset by the class counts of the parts before it.</summary>
    public static ImageDataset Mix(IReadOnlyList<(ImageDataset data, int[] indices)> parts)
    {
        if (parts.Count == 0) throw new ArgumentException("a mix needs at least one part");
        if (parts.Count == 1) return parts[0].data.Subset(parts[0].indices);
        var first = parts[0].data;
        var pix = new List<Tensor>();
        var labels = new List<int>();
        var doms = new List<int>();
        var names = new List<string>();
        int offset = 0;
        for (int p = 0; p < parts.Count; p++)
        {
            var (d, idx) = parts[p];
            if (d.Channels != first.Channels || d.Height != first.Height || d.Width != first.Width)
                throw new ArgumentException($"{d.Source}: images of {d.Channels}×{d.Height}×{d.Width} cannot mix with {first.Channels}×{first.Height}×{first.Width}");
            using var it = torch.tensor(idx.Select(i => (long)i).ToArray());
            pix.Add(d.images.index_select(0, it));
            labels.AddRange(idx.Select(i => d.Labels[i] + offset));
            doms.AddRange(Enumerable.Repeat(p, idx.Length));
            names.AddRange(d.ClassNames.Select(c => $"{d.DomainNames[0]}:{c}"));
            offset += d.ClassNames.Count;
        }
        using var all = torch.cat(pix, 0);
        foreach (var t in pix) t.Dispose();
        return new ImageDataset(all.bytes.ToArray(), labels.Count, first.Channels, first.Height, first.Width, labels.ToArray(),
            string.Join(" + ", parts.Select(p => $"{p.data.DomainNames[0]}×{p.indices.Length}")),
            parts.Select(p => p.data.norms[0]).ToArray(), doms.ToArray(), names, parts.Select(p => p.data.DomainNames[0]).ToArray());
    }

    /// <summary>The source (domain) of each image: 0 for a single source.</summary>
    public int DomainOf(int index) => domains.Length == 0 ? 0 : domains[index];

    /// <summary>The images at <paramref name="indices"/> (and their labels) as a new single-source dataset.</summary>
    public ImageDataset Subset(IReadOnlyList<int> indices)
    {
        if (domains.Length != 0) throw new InvalidOperationException("a mix cannot be subset");
        using var it = torch.tensor(indices.Select(i => (long)i).ToArray());
        using var sel = images.index_select(0, it);
        return new ImageDataset(sel.bytes.ToArray(), indices.Count, Channels, Height, Width, Labels.Length == 0 ? [] : indices.Select(i => Labels[i]).ToArray(),
            Source, norms, [], ClassNames, DomainNames);
    }

    /// <summary>The first <paramref name="n"/> images (and labels) as a new dataset.</summary>
    public ImageDataset Take(int n)
    {
        if (n <= 0 || n > Count) throw new ArgumentOutOfRangeException(nameof(n), $"take {n} of {Count} images");
        using var head = images.narrow(0, 0, n).contiguous();
        return new ImageDataset(head.bytes.ToArray(), n, Channels, Height, Width, Labels.Length == 0 ? [] : Labels[..n], $"{Source}[0..{n})",
            norms, domains.Length == 0 ? [] : domains[..n], ClassNames, DomainNames);
    }

    /// <summary>The images at <paramref name="indices"/>, scaled to [0,1] and normalized by their source: [B, C, H, W] float32.</summary>
    public Tensor Batch(ReadOnlySpan<int> indices)
    {
        var ix = indices.ToArray();
        using var idx = torch.tensor(ix.Select(i => (long)i).ToArray(), ScalarType.Int64);
        using var raw = images.index_select(0, idx);
        var x = raw.to_type(ScalarType.Float32).div_(255.0);
        if (norms.Length == 1) return x.sub_(norms[0].Mean).div_(norms[0].Std);
        using var mean = torch.tensor(ix.Select(i => (float)norms[domains[i]].Mean).ToArray()).view(-1, 1, 1, 1);
        using var std = torch.tensor(ix.Select(i => (float)norms[domains[i]].Std).ToArray()).view(-1, 1, 1, 1);
        return x.sub_(mean).div_(std);
    }

    public int[] LabelsAt(ReadOnlySpan<int> indices)
    {
        var res = new int[indices.Length];
        for (int i = 0; i < res.Length; i++) res[i] = Labels[indices[i]];
        return res;
    }

    public void Dispose() => images.Dispose();
}
