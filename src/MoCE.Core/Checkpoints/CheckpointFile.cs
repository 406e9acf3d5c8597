using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Core.Checkpoints;

/// <summary>One checkpoint part: string metadata (step, sampler position, seed, config, ...) and named
/// tensors (weights, optimizer state). Tensors are CPU copies owned by this object.</summary>
public sealed class CheckpointContent : IDisposable
{
    public IReadOnlyDictionary<string, string> Meta { get; }
    public IReadOnlyDictionary<string, Tensor> Tensors { get; }

    public CheckpointContent(IReadOnlyDictionary<string, string> meta, IReadOnlyDictionary<string, Tensor> tensors)
    {
        Meta = meta;
        Tensors = tensors;
    }

    public string this[string key] =>
        Meta.TryGetValue(key, out var v) ? v : throw new InvalidDataException($"checkpoint metadata has no '{key}'");

    public void Dispose()
    {
        foreach (var t in Tensors.Values) t.Dispose();
    }
}

/// <summary>The binary checkpoint format, version 1 (little-endian):
/// <code>
/// "MOCECKPT" u32 version | u32 metaLen, UTF-8 JSON {string: string} | u32 count
/// count × ( u32 nameLen, UTF-8 name | i32 dtype | u32 ndim, ndim × i64 shape | i64 byteLen, bytes )
/// </code>
/// Integrity comes from the sha256 of the whole file, which names the file and is checked on load. Both ways are
/// streams with the hash computed on the way: no buffer of the whole file, and a tensor's bytes go between the file
/// and the tensor's memory in chunks, so neither a part nor a tensor is limited to 2 GiB.</summary>
public static class CheckpointFile
{
    private static readonly byte[] Magic = "MOCECKPT"u8.ToArray();
    private const uint Version = 1;
    /// <summary>The most bytes of a tensor moved at once (a span cannot exceed 2 GiB).</summary>
    private const long ChunkBytes = 64 << 20;

    private delegate void Chunk(Span<byte> bytes);

    /// <summary>Calls <paramref name="each"/> with the bytes of a contiguous CPU tensor, at most ChunkBytes at a time, in order.</summary>
    private static void InChunks(Tensor t, Chunk each)
    {
        using var flat = t.view(-1);
        long n = flat.NumberOfElements, per = Math.Max(1, ChunkBytes / t.ElementSize);
        for (long at = 0; at < n; at += per)
        {
            using var part = flat.narrow(0, at, Math.Min(per, n - at));
            each(part.bytes);
        }
    }

    /// <summary>Writes the file and returns its sha256 (lowercase hex).</summary>
    public static string Write(Stream output, IReadOnlyDictionary<string, string> meta, IEnumerable<(string name, Tensor tensor)> tensors)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void Put(ReadOnlySpan<byte> bytes) { output.Write(bytes); sha.AppendData(bytes); }
        var word = new byte[8];
        void U32(uint v) { BinaryPrimitives.WriteUInt32LittleEndian(word, v); Put(word.AsSpan(0, 4)); }
        void I64(long v) { BinaryPrimitives.WriteInt64LittleEndian(word, v); Put(word); }
        void Str(string s) { var b = Encoding.UTF8.GetBytes(s); U32((uint)b.Length); Put(b); }

        Put(Magic);
        U32(Version);
        Str(JsonSerializer.Serialize(meta));
        var list = tensors.ToList();
        U32((uint)list.Count);
        foreach (var (name, t) in list)
        {
            using var scope = NewDisposeScope();                                    // detach/cpu/contiguous each make a handle
            var c = t.detach().cpu().contiguous();
            Str(name);
            U32((uint)(int)c.dtype);
            U32((uint)c.dim());
            foreach (var d in c.shape) I64(d);
            I64(c.NumberOfElements * c.ElementSize);
            InChunks(c, b => Put(b));
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    public static CheckpointContent Read(string path)
    {
        using var f = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        return Read(f, path, out _);
    }

    /// <summary>Parses a part from <paramref name="input"/> (<paramref name="path"/> names it in errors) and gives the
    /// sha256 of the bytes it read: the bytes hashed are the bytes parsed. A length the rest of a seekable stream
    /// cannot hold is an error before anything is allocated for it.</summary>
    public static CheckpointContent Read(Stream input, string path, out string sha256)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var r = new Input(input, sha, path);
        var head = new byte[Magic.Length];
        r.Fill(head);
        if (!head.AsSpan().SequenceEqual(Magic)) throw r.Bad("not a MoCE checkpoint (wrong magic)");
        var version = r.U32();
        if (version != Version) throw r.Bad($"unsupported checkpoint version {version}");
        var meta = JsonSerializer.Deserialize<Dictionary<string, string>>(r.Str()) ?? throw r.Bad("empty metadata");
        var count = r.U32();
        var tensors = new Dictionary<string, Tensor>();
        try
        {
            for (uint i = 0; i < count; i++)
            {
                var name = r.Str();
                var dtype = (ScalarType)(int)r.U32();
                var ndim = r.U32();
                if (ndim > 16) throw r.Bad($"tensor '{name}' has {ndim} dimensions");
                var shape = new long[ndim];
                for (int d = 0; d < shape.Length; d++) shape[d] = r.I64();
                var len = r.I64();
                if (shape.Any(d => d < 0) || !Enum.IsDefined(dtype)) throw r.Bad($"tensor '{name}': shape [{string.Join(", ", shape)}] of {dtype}");
                long need;
                try { using var probe = empty([0], dtype); need = checked(shape.Aggregate(1L, (a, d) => a * d) * probe.ElementSize); }
                catch (OverflowException) { throw r.Bad($"tensor '{name}': shape [{string.Join(", ", shape)}] overflows"); }
                if (need != len) throw r.Bad($"tensor '{name}' holds {len} bytes, its shape needs {need}");
                r.Room(len);
                var t = empty(shape, dtype);
                tensors.Add(name, t);
                InChunks(t, r.Fill);
            }
            if (!r.AtEnd()) throw r.Bad("trailing bytes after the last tensor");
        }
        catch
        {
            foreach (var t in tensors.Values) t.Dispose();
            throw;
        }
        sha256 = Convert.ToHexStringLower(sha.GetHashAndReset());
        return new CheckpointContent(meta, tensors);
    }

    public static string Sha256Of(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(f));
    }

    /// <summary>Reads exactly what is asked, hashing it.</summary>
    private sealed class Input(Stream s, IncrementalHash sha, string path)
    {
        private readonly byte[] word = new byte[8];
        private long pos;
        public InvalidDataException Bad(string why) => new($"{path}: {why}");

        public void Fill(Span<byte> into)
        {
            int got = s.ReadAtLeast(into, into.Length, throwOnEndOfStream: false);
            if (got < into.Length) throw Bad($"truncated at byte {pos + got}");
            sha.AppendData(into);
            pos += got;
        }

        /// <summary>The stream still holds <paramref name="n"/> bytes (known only for a seekable one).</summary>
        public void Room(long n)
        {
            if (s.CanSeek && n > s.Length - s.Position) throw Bad($"truncated: {n} bytes announced at byte {pos}, {s.Length - s.Position} left");
        }

        public bool AtEnd() => s.ReadByte() == -1;
        public uint U32() { Fill(word.AsSpan(0, 4)); return BinaryPrimitives.ReadUInt32LittleEndian(word); }
        public long I64() { Fill(word); return BinaryPrimitives.ReadInt64LittleEndian(word); }

        public string Str()
        {
            var n = U32();
            Room(n);
            if (n > 256u << 20) throw Bad($"a string of {n} bytes at byte {pos}");
            var b = new byte[n];
            Fill(b);
            return Encoding.UTF8.GetString(b);
        }
    }
}
