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
/// Integrity comes from the sha256 of the whole file, which names the file and is checked on load.</summary>
public static class CheckpointFile
{
    private static readonly byte[] Magic = "MOCECKPT"u8.ToArray();
    private const uint Version = 1;

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
            var bytes = c.bytes;
            I64(bytes.Length);
            Put(bytes);
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    public static CheckpointContent Read(string path) => Read(File.ReadAllBytes(path), path);

    /// <summary>Parses a file's bytes (<paramref name="path"/> names it in errors).</summary>
    public static CheckpointContent Read(byte[] all, string path)
    {
        var r = new Reader(all, path);
        if (!r.Bytes(Magic.Length).SequenceEqual(Magic)) throw r.Bad("not a MoCE checkpoint (wrong magic)");
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
                var shape = new long[r.U32()];
                for (int d = 0; d < shape.Length; d++) shape[d] = r.I64();
                var len = r.I64();
                var t = empty(shape, dtype);
                long need = t.NumberOfElements * t.ElementSize;
                if (need != len) { t.Dispose(); throw r.Bad($"tensor '{name}' holds {len} bytes, its shape needs {need}"); }
                r.Bytes((int)len).CopyTo(t.bytes);                            // t.bytes: a span over the CPU tensor's memory
                tensors.Add(name, t);
            }
            if (!r.AtEnd) throw r.Bad("trailing bytes after the last tensor");
        }
        catch
        {
            foreach (var t in tensors.Values) t.Dispose();
            throw;
        }
        return new CheckpointContent(meta, tensors);
    }

    public static string Sha256Of(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(f));
    }

    private ref struct Reader(ReadOnlySpan<byte> data, string path)
    {
        private readonly ReadOnlySpan<byte> data = data;
        private int pos;
        public readonly bool AtEnd => pos == data.Length;
        public readonly InvalidDataException Bad(string why) => new($"{path}: {why}");
        public ReadOnlySpan<byte> Bytes(int n)
        {
            if (n < 0 || pos + n > data.Length) throw Bad($"truncated at byte {pos}");
            var s = data.Slice(pos, n);
            pos += n;
            return s;
        }
        public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4));
        public long I64() => BinaryPrimitives.ReadInt64LittleEndian(Bytes(8));
        public string Str() => Encoding.UTF8.GetString(Bytes((int)U32()));
    }
}
