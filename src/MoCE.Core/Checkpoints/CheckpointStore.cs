namespace MoCE.Core.Checkpoints;

/// <summary>A file in the checkpoint store: who wrote it, for which step, where, and its sha256.</summary>
public sealed record CheckpointRef(string Owner, long Step, string File, string Sha256);

/// <summary>A checkpoint file whose bytes do not match its recorded sha256, or that is missing.</summary>
public sealed class CheckpointCorruptException(string path, string problem) : Exception($"checkpoint {path}: {problem}")
{
    public string Path { get; } = path;
}

/// <summary>Where the actor runtime keeps checkpoint parts: save (content-addressed), load and verify (hash-checked),
/// prune. Every node of a cluster opens the same store from its <see cref="Location"/> (<see cref="CheckpointStores.Open"/>).
/// <see cref="CheckpointStore"/>, a directory shared by the nodes at the same path, is the implementation today; an
/// object store would implement these members and be opened by its location's scheme.</summary>
public interface ICheckpointStore
{
    /// <summary>What another node opens the same store from.</summary>
    string Location { get; }
    CheckpointRef Save(string owner, long step, IReadOnlyDictionary<string, string> meta, IEnumerable<(string name, TorchSharp.torch.Tensor tensor)> tensors);
    CheckpointContent Load(CheckpointRef r);
    void Verify(CheckpointRef r);
    void DeleteAllExcept(IEnumerable<CheckpointRef> keep);
}

public static class CheckpointStores
{
    /// <summary>The store at <paramref name="location"/>: a directory path today.</summary>
    public static ICheckpointStore Open(string location) =>
        location.Contains("://", StringComparison.Ordinal)
            ? throw new NotSupportedException($"checkpoint store '{location}': only directories (shared at the same path on every node) are supported")
            : new CheckpointStore(location);
}

/// <summary>The checkpoint store: a directory of content-addressed files named
/// <c>{owner}-{step:D8}-{sha256[..16]}.ckpt</c>. A file is written under a temporary name, flushed to disk and
/// then renamed, and the directory is flushed (<see cref="DurableFile"/>), so a crash never leaves a partial file
/// under a real name nor loses a renamed one. Every load verifies the hash of the bytes it parses.</summary>
public sealed class CheckpointStore : ICheckpointStore
{
    public string Directory { get; }
    public string Location => System.IO.Path.GetFullPath(Directory);

    public CheckpointStore(string directory)
    {
        Directory = directory;
        System.IO.Directory.CreateDirectory(directory);
    }

    /// <summary>The file of a reference, which may have come over the wire: its name must be the one this store gives
    /// that owner, step and sha256 (a plain name inside the store), else it is refused before any path is built.</summary>
    public string PathOf(CheckpointRef r) => System.IO.Path.Combine(Directory, CheckedName(r));

    /// <summary>The reference's file name, when it is the one a store gives that owner, step and sha256.</summary>
    public static string CheckedName(CheckpointRef r)
    {
        bool plain = ValidOwner(r.Owner) && r.Step >= 0 && r.Sha256.Length == 64 && r.Sha256.All(char.IsAsciiHexDigitLower)
                     && r.File == NameOf(r.Owner, r.Step, r.Sha256);
        return plain ? r.File
            : throw new CheckpointCorruptException(r.File, $"refused: not the name this store gives {r.Owner}'s part of step {r.Step} (a crafted or corrupt reference)");
    }

    private static bool ValidOwner(string owner) => owner.Length is > 0 and <= 128 && owner.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_');

    private static string NameOf(string owner, long step, string sha) => $"{owner}-{step:D8}-{sha[..16]}.ckpt";

    public CheckpointRef Save(string owner, long step, IReadOnlyDictionary<string, string> meta,
                              IEnumerable<(string name, TorchSharp.torch.Tensor tensor)> tensors)
    {
        if (!ValidOwner(owner))
            throw new ArgumentException($"checkpoint owner '{owner}' must be letters, digits, '-' or '_'");
        var tmp = System.IO.Path.Combine(Directory, $".tmp-{owner}-{step}-{Guid.NewGuid():N}");
        var (_, sha) = DurableFile.Write(tmp, f => CheckpointFile.Write(f, meta, tensors), h => System.IO.Path.Combine(Directory, NameOf(owner, step, h)));
        var name = NameOf(owner, step, sha);
        return new CheckpointRef(owner, step, name, sha);
    }

    /// <summary>Loads a file after checking its sha256; throws <see cref="CheckpointCorruptException"/> naming
    /// the file if it is missing, altered or unreadable. The file is read once, as a stream: the bytes hashed are the
    /// bytes parsed, and no copy of the file is held.</summary>
    public CheckpointContent Load(CheckpointRef r)
    {
        var path = PathOf(r);
        CheckpointContent content;
        string actual;
        try
        {
            using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
            content = CheckpointFile.Read(f, path, out actual);
        }
        catch (FileNotFoundException) { throw new CheckpointCorruptException(path, "file is missing"); }
        catch (InvalidDataException e) { throw new CheckpointCorruptException(path, e.Message); }
        if (actual == r.Sha256) return content;
        content.Dispose();
        throw Mismatch(r, path, actual);
    }

    /// <summary>Checks a file's sha256, streaming it (no copy of the file in memory).</summary>
    public void Verify(CheckpointRef r)
    {
        var path = PathOf(r);
        string actual;
        try { actual = CheckpointFile.Sha256Of(path); }
        catch (FileNotFoundException) { throw new CheckpointCorruptException(path, "file is missing"); }
        Check(r, path, actual);
    }

    private static void Check(CheckpointRef r, string path, string actual)
    {
        if (actual != r.Sha256) throw Mismatch(r, path, actual);
    }

    private static CheckpointCorruptException Mismatch(CheckpointRef r, string path, string actual) =>
        new(path, $"sha256 mismatch: expected {r.Sha256}, file has {actual}");

    /// <summary>Deletes checkpoint files not in <paramref name="keep"/>, and temporaries left by writers that died.
    /// A temporary still being written (by this process or another node) is locked and stays.</summary>
    public void DeleteAllExcept(IEnumerable<CheckpointRef> keep)
    {
        var live = keep.Select(k => k.File).ToHashSet();
        foreach (var f in System.IO.Directory.EnumerateFiles(Directory))
        {
            var name = System.IO.Path.GetFileName(f);
            if (name.EndsWith(".ckpt", StringComparison.Ordinal) ? !live.Contains(name)
                : name.StartsWith(".tmp-", StringComparison.Ordinal) && !DurableFile.IsInFlight(f))
                File.Delete(f);
        }
        DurableFile.SyncDirectory(Directory);
    }
}
