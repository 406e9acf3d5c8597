using System.Buffers.Binary;
using System.IO.Compression;

namespace MoCE.Core.Data;

/// <summary>Bad input data: names the file and the problem.</summary>
public sealed class DataFormatException(string path, string problem)
    : Exception($"{path}: {problem}")
{
    public string Path { get; } = path;
}

/// <summary>An IDX array of unsigned bytes (the MNIST format): big-endian magic 0x0000_08_NN where NN is the
/// number of dimensions, then NN big-endian int32 sizes, then the data. Gzip-compressed files are detected by
/// their magic bytes.</summary>
public sealed record IdxArray(int[] Shape, byte[] Data)
{
    public int Count => Shape[0];

    public static IdxArray Read(string path, int expectedDims)
    {
        if (!File.Exists(path)) throw new DataFormatException(path, "file not found");
        byte[] raw;
        try { raw = Decompress(path, File.ReadAllBytes(path)); }
        catch (InvalidDataException e) { throw new DataFormatException(path, $"corrupt gzip stream ({e.Message})"); }

        if (raw.Length < 4) throw new DataFormatException(path, $"truncated: {raw.Length} bytes, too short for an IDX header");
        if (raw[0] != 0 || raw[1] != 0)
            throw new DataFormatException(path, $"wrong magic 0x{BinaryPrimitives.ReadUInt32BigEndian(raw):X8}: not an IDX file");
        if (raw[2] != 0x08)
            throw new DataFormatException(path, $"unsupported IDX element type 0x{raw[2]:X2}: only unsigned bytes (0x08) are supported");
        int dims = raw[3];
        if (dims != expectedDims)
            throw new DataFormatException(path, $"unsupported dimensions: {dims}, expected {expectedDims}");

        int header = 4 + 4 * dims;
        if (raw.Length < header) throw new DataFormatException(path, $"truncated: header needs {header} bytes, file has {raw.Length}");
        var shape = new int[dims];
        long expected = 1;
        for (int i = 0; i < dims; i++)
        {
            shape[i] = BinaryPrimitives.ReadInt32BigEndian(raw.AsSpan(4 + 4 * i));
            if (shape[i] <= 0) throw new DataFormatException(path, $"dimension {i} has size {shape[i]}");
            expected *= shape[i];
        }
        long actual = raw.Length - header;
        if (actual < expected)
            throw new DataFormatException(path, $"truncated: shape [{string.Join(", ", shape)}] needs {expected} data bytes, file has {actual}");
        if (actual > expected)
            throw new DataFormatException(path, $"{actual - expected} bytes of trailing data after shape [{string.Join(", ", shape)}]");
        return new IdxArray(shape, raw.AsSpan(header).ToArray());
    }

    public void Write(string path)
    {
        using var file = File.Create(path);
        using Stream s = path.EndsWith(".gz", StringComparison.Ordinal) ? new GZipStream(file, CompressionLevel.SmallestSize) : file;
        Span<byte> word = stackalloc byte[4];
        word[0] = 0; word[1] = 0; word[2] = 0x08; word[3] = (byte)Shape.Length;
        s.Write(word);
        foreach (int d in Shape) { BinaryPrimitives.WriteInt32BigEndian(word, d); s.Write(word); }
        s.Write(Data);
    }

    private static byte[] Decompress(string path, byte[] bytes)
    {
        if (bytes.Length < 2 || bytes[0] != 0x1f || bytes[1] != 0x8b) return bytes;
        using var gz = new GZipStream(new MemoryStream(bytes), CompressionMode.Decompress);
        using var ms = new MemoryStream();
        gz.CopyTo(ms);
        return ms.ToArray();
    }
}
