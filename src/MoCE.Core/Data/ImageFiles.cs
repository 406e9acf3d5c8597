using System.Formats.Tar;
using System.Globalization;

namespace MoCE.Core.Data;

/// <summary>How a dataset's files are laid out (moce.datasets.NAME.format).</summary>
public enum DatasetFormat
{
    /// <summary><c>{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]</c>, as MNIST ships.</summary>
    Idx,
    /// <summary>JPEG/PNG files: <c>train/</c> and <c>val/</c> (or <c>test/</c>) split folders, or the folder itself as the
    /// training split; in each, one folder per class, or the images directly (no labels).</summary>
    Folder,
    /// <summary>WebDataset tar shards (<c>KEY.jpg</c> or <c>KEY.png</c>, with <c>KEY.cls</c> for the label): <c>train/*.tar</c>
    /// and <c>val/*.tar</c> (or <c>test/</c>), or <c>*.tar</c> as the training split; optional <c>classes.txt</c> names the
    /// labels, one per line.</summary>
    Tar,
}

/// <summary>What to do with an image that cannot be decoded (moce.datasets.NAME.bad-images).</summary>
public enum BadImages
{
    /// <summary>Leave it out, count it, and log the first few by file.</summary>
    Skip,
    /// <summary>Stop with an error naming the file.</summary>
    Error,
}

/// <summary>One encoded image: bytes [Offset, Offset + Length) of File; Name says where it is in error messages.</summary>
public readonly record struct EncodedRef(string File, long Offset, long Length, string Name);

/// <summary>A split's images in order, with labels (empty: unlabelled) and class names.</summary>
public sealed record ImageListing(IReadOnlyList<EncodedRef> Images, int[] Labels, IReadOnlyList<string> Classes);

/// <summary>Lists, reads and writes image folders and WebDataset tar shards. Order is part of the data: classes and files
/// by ordinal name, shards by name and members as stored, so the same images give the same indices in either format.</summary>
public static class ImageFiles
{
    public static readonly IReadOnlySet<string> ImageExtensions = new HashSet<string>(StringComparer.OrdinalIgnoreCase) { ".jpg", ".jpeg", ".png" };
    public const string ClassesFile = "classes.txt";

    /// <summary>The directory of a split: <c>train</c>, and <c>val</c> or <c>test</c>; a root with neither train nor val
    /// folders is the training split itself. Null when the split is not there.</summary>
    public static string? SplitDir(string root, Split split, DatasetFormat format)
    {
        if (!Directory.Exists(root)) return null;
        bool hasTrain = Directory.Exists(Path.Combine(root, "train"));
        string? dir = split == Split.Train
            ? hasTrain ? Path.Combine(root, "train") : Directory.Exists(Path.Combine(root, "val")) ? null : root
            : new[] { "val", "test" }.Select(d => Path.Combine(root, d)).FirstOrDefault(Directory.Exists);
        if (dir is null) return null;
        bool any = format == DatasetFormat.Tar
            ? Directory.EnumerateFiles(dir, "*.tar").Any()
            : Directory.EnumerateFileSystemEntries(dir).Any(e => Directory.Exists(e) || ImageExtensions.Contains(Path.GetExtension(e)));
        return any ? dir : null;
    }

    public static ImageListing List(string root, Split split, DatasetFormat format)
    {
        var dir = SplitDir(root, split, format)
            ?? throw new DataFormatException(root, $"no {(split == Split.Train ? "training" : "val or test")} split here ({Layout(format)})");
        return format == DatasetFormat.Tar ? ListTar(dir, root) : ListFolder(dir);
    }

    public static string Layout(DatasetFormat format) => format switch
    {
        DatasetFormat.Folder => "expected train/ and val/ folders of class folders of .jpg/.png, or images directly",
        DatasetFormat.Tar => "expected train/*.tar and val/*.tar WebDataset shards, or *.tar",
        _ => "expected train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]",
    };

    /// <summary>Class folders (each must hold images) or a flat folder of images (unlabelled).</summary>
    public static ImageListing ListFolder(string dir)
    {
        var classDirs = Directory.GetDirectories(dir).Order(StringComparer.Ordinal).ToArray();
        var loose = Images(dir);
        if (classDirs.Length == 0)
            return loose.Count == 0 ? throw new DataFormatException(dir, "no .jpg or .png images in this folder")
                : new ImageListing(loose, [], []);
        if (loose.Count > 0)
            throw new DataFormatException(loose[0].File, "an image beside class folders: put every image in its class's folder, or use a flat folder without subfolders");
        var refs = new List<EncodedRef>();
        var labels = new List<int>();
        for (int c = 0; c < classDirs.Length; c++)
        {
            var imgs = Images(classDirs[c]);
            if (imgs.Count == 0) throw new DataFormatException(classDirs[c], "empty class folder: no .jpg or .png images");
            refs.AddRange(imgs);
            labels.AddRange(Enumerable.Repeat(c, imgs.Count));
        }
        return new ImageListing(refs, labels.ToArray(), classDirs.Select(Path.GetFileName).ToArray()!);
    }

    private static List<EncodedRef> Images(string dir) =>
        Directory.GetFiles(dir).Where(f => ImageExtensions.Contains(Path.GetExtension(f))).Order(StringComparer.Ordinal)
            .Select(f => new EncodedRef(f, 0, new FileInfo(f).Length, f)).ToList();

    /// <summary>The samples of the shards in <paramref name="dir"/> (by name), each an image member and, if labelled, a
    /// <c>.cls</c> member of the same key (WebDataset: the path up to the first dot of its file name).</summary>
    public static ImageListing ListTar(string dir, string root)
    {
        var refs = new List<EncodedRef>();
        var labels = new List<int?>();
        foreach (var shard in Directory.GetFiles(dir, "*.tar").Order(StringComparer.Ordinal))
        {
            using var fs = File.OpenRead(shard);
            using var reader = new TarReader(fs, leaveOpen: true);
            string? key = null;
            EncodedRef? image = null;
            int? label = null;
            void Flush()
            {
                if (key is null) return;
                if (image is null) throw new DataFormatException($"{shard}:{key}", "a sample with no .jpg or .png member");
                refs.Add(image.Value);
                labels.Add(label);
            }
            while (reader.GetNextEntry() is { } e)
            {
                if (e.EntryType is not (TarEntryType.RegularFile or TarEntryType.V7RegularFile)) continue;
                long offset = DataOffset(fs, e, shard);
                var name = e.Name;
                int slash = name.LastIndexOf('/'), dot = name.IndexOf('.', slash + 1);
                if (dot < 0) continue;
                string k = name[..dot], ext = name[dot..];
                if (k != key) { Flush(); key = k; image = null; label = null; }
                if (ImageExtensions.Contains(ext))
                    image = new EncodedRef(shard, offset, e.Length, $"{shard}:{name}");
                else if (ext.Equals(".cls", StringComparison.OrdinalIgnoreCase))
                {
                    using var sr = new StreamReader(e.DataStream!);
                    var text = sr.ReadToEnd().Trim();
                    label = int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var l) ? l
                        : throw new DataFormatException($"{shard}:{name}", $"a label must be a non-negative integer, got '{text}'");
                }
            }
            Flush();
        }
        if (refs.Count == 0) throw new DataFormatException(dir, "the tar shards hold no .jpg or .png samples");
        int labelled = labels.Count(l => l is not null);
        if (labelled == 0) return new ImageListing(refs, [], []);
        if (labelled != refs.Count)
            throw new DataFormatException(refs[labels.FindIndex(l => l is null)].Name, $"no .cls label, while {labelled} of {refs.Count} samples have one");
        var ls = labels.Select(l => l!.Value).ToArray();
        var classesFile = Path.Combine(root, ClassesFile);
        var names = File.Exists(classesFile) ? File.ReadAllLines(classesFile).Where(l => l.Length > 0).ToArray()
            : Enumerable.Range(0, ls.Max() + 1).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToArray();
        if (ls.Max() >= names.Length) throw new DataFormatException(classesFile, $"names {names.Length} classes, but a label is {ls.Max()}");
        return new ImageListing(refs, ls, names);
    }

    /// <summary>Where entry <paramref name="e"/>'s data starts in the archive. TarReader leaves a seekable archive at the
    /// end of the entry's padded data; the start is that less the padded length, checked against the entry's own stream.</summary>
    private static long DataOffset(FileStream fs, TarEntry e, string shard)
    {
        long offset = fs.Position - (e.Length + 511) / 512 * 512;
        if (e.Length == 0) return offset;
        Span<byte> a = stackalloc byte[(int)Math.Min(16, e.Length)], b = stackalloc byte[a.Length];
        var ds = e.DataStream!;
        ds.ReadExactly(a);
        ds.Position = 0;
        if (RandomAccess.Read(fs.SafeFileHandle, b, offset) != b.Length || !a.SequenceEqual(b))
            throw new DataFormatException($"{shard}:{e.Name}", "cannot locate the member's data in the archive (an unusual tar layout: write it with 'moce shard' or GNU tar)");
        return offset;
    }

    public static byte[] Read(EncodedRef r)
    {
        if (r.Length > Array.MaxLength) throw new DataFormatException(r.Name, $"an image of {r.Length} bytes is too large");
        var buf = new byte[r.Length];
        using var h = File.OpenHandle(r.File);
        int done = 0;
        while (done < buf.Length)
        {
            int n = RandomAccess.Read(h, buf.AsSpan(done), r.Offset + done);
            if (n == 0) throw new DataFormatException(r.Name, $"file ends after {done} of {r.Length} bytes");
            done += n;
        }
        return buf;
    }

    /// <summary>Writes a folder dataset's splits as WebDataset shards under <paramref name="outRoot"/> (same split folder
    /// names, <c>NAME-000.tar</c>…, <paramref name="perShard"/> samples each, in listing order) and its class names to
    /// classes.txt. The encoded bytes are copied as they are: the shards hold the same images.</summary>
    public static IReadOnlyList<string> WriteShards(string folderRoot, string outRoot, string name, int perShard)
    {
        if (perShard <= 0) throw new ArgumentOutOfRangeException(nameof(perShard), "samples per shard must be positive");
        var written = new List<string>();
        IReadOnlyList<string>? classes = null;
        foreach (var split in new[] { Split.Train, Split.Test })
        {
            var dir = SplitDir(folderRoot, split, DatasetFormat.Folder);
            if (dir is null) continue;
            var listing = ListFolder(dir);
            classes ??= listing.Classes;
            var outDir = dir == folderRoot ? outRoot : Path.Combine(outRoot, Path.GetFileName(dir));
            Directory.CreateDirectory(outDir);
            for (int s = 0; s * perShard < listing.Images.Count; s++)
            {
                var path = Path.Combine(outDir, $"{name}-{s:D3}.tar");
                using (var fs = File.Create(path))
                using (var w = new TarWriter(fs, TarEntryFormat.Ustar, leaveOpen: true))
                {
                    for (int i = s * perShard; i < Math.Min(listing.Images.Count, (s + 1) * perShard); i++)
                    {
                        var img = listing.Images[i];
                        var key = $"{i:D8}";
                        Add(w, key + Path.GetExtension(img.File).ToLowerInvariant(), Read(img));
                        if (listing.Labels.Length > 0) Add(w, key + ".cls", System.Text.Encoding.ASCII.GetBytes(listing.Labels[i].ToString(CultureInfo.InvariantCulture)));
                    }
                }
                written.Add(path);
            }
        }
        if (written.Count == 0) throw new DataFormatException(folderRoot, $"nothing to shard ({Layout(DatasetFormat.Folder)})");
        if (classes is { Count: > 0 }) File.WriteAllLines(Path.Combine(outRoot, ClassesFile), classes);
        return written;
    }

    private static void Add(TarWriter w, string name, byte[] bytes)
    {
        var e = new UstarTarEntry(TarEntryType.RegularFile, name) { DataStream = new MemoryStream(bytes), ModificationTime = DateTimeOffset.UnixEpoch };
        w.WriteEntry(e);
    }
}
