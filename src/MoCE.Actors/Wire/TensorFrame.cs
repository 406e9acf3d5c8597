using System.IO.Hashing;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Actors.Wire;

/// <summary>How a floating-point tensor's values travel: as they are, or fp32 rounded to bfloat16 (half the bytes;
/// the receiver widens them back to fp32, so the run is no longer bit-equal to a single process).</summary>
public enum WireEncoding : byte { Raw = 0, Bf16 = 1 }

/// <summary>One tensor on the wire, format version 1 (little-endian):
/// <code>
/// "MOCT" | u8 version | u8 dtype | u8 encoding | u8 rank | rank × i64 dim | i64 payload bytes | u32 crc32(payload) | payload
/// </code>
/// The dtype codes are this format's own (not TorchSharp's enum values), so they never move. The reader checks
/// every field before it allocates: a rank over 8, a negative dimension, a shape whose size overflows, a payload
/// length that differs from what the shape needs or from what the frame holds, and a checksum mismatch are each a
/// <see cref="WireFormatException"/>. A device tensor is written through a reused CPU staging buffer; tensors are read
/// onto the CPU, and each receiver places them on its own device (<see cref="DevicePlacement"/>).</summary>
public static class TensorFrame
{
    private static ReadOnlySpan<byte> Magic => "MOCT"u8;
    public const byte Version = 1;
    public const int MaxRank = 8;

    private static readonly (ScalarType type, byte code, int size)[] Types =
    [
        (ScalarType.Float32, 1, 4), (ScalarType.Float64, 2, 8), (ScalarType.Float16, 3, 2), (ScalarType.BFloat16, 4, 2),
        (ScalarType.Int64, 5, 8), (ScalarType.Int32, 6, 4), (ScalarType.Int16, 7, 2), (ScalarType.Int8, 8, 1),
        (ScalarType.Byte, 9, 1), (ScalarType.Bool, 10, 1),
    ];

    /// <summary>The dtypes the format carries.</summary>
    public static IEnumerable<ScalarType> Supported => Types.Select(t => t.type);

    /// <summary>Bytes of the frame header for a tensor of this rank (payload excluded).</summary>
    public static int HeaderBytes(int rank) => 4 + 4 + 8 * rank + 8 + 4;

    /// <summary>Appends <paramref name="t"/> (any device, any layout) as one frame. <paramref name="encoding"/> Bf16
    /// applies to fp32 tensors only; others always travel raw.</summary>
    public static void Write(WireWriter w, Tensor t, WireEncoding encoding = WireEncoding.Raw)
    {
        using var scope = NewDisposeScope();
        if (encoding == WireEncoding.Bf16 && t.dtype != ScalarType.Float32) encoding = WireEncoding.Raw;
        var c = t.detach();
        if (encoding == WireEncoding.Bf16) c = c.to_type(ScalarType.BFloat16);  // on its device: half the bytes to copy
        c = c.device_type == DeviceType.CPU ? c.contiguous() : Staged(c);
        var code = Types.FirstOrDefault(x => x.type == t.dtype).code;
        if (code == 0) throw new NotSupportedException($"dtype {t.dtype} has no wire code");
        if (c.dim() > MaxRank) throw new NotSupportedException($"rank {c.dim()} is over the wire's {MaxRank}");
        long length = c.NumberOfElements * c.ElementSize;
        if (length > Array.MaxLength - 1024) throw new NotSupportedException($"a tensor of {length} bytes does not fit one frame");

        w.Put(Magic);
        w.U8(Version);
        w.U8(code);
        w.U8((byte)encoding);
        w.U8((byte)c.dim());
        foreach (var d in c.shape) w.I64(d);
        w.I64(length);
        var payload = length == 0 ? [] : c.bytes;
        w.U32(Crc32.HashToUInt32(payload));
        payload.CopyTo(w.Reserve((int)length));
    }

    [ThreadStatic] private static Dictionary<ScalarType, Tensor>? staging;

    /// <summary>A device tensor copied into this serialising thread's CPU staging buffer for its dtype (pinned where CUDA
    /// is, so the copy is a DMA): one buffer per thread and dtype, grown to the largest tensor it has carried, instead of
    /// a new CPU tensor per message. The view is valid until the thread stages the next tensor of that dtype.</summary>
    private static Tensor Staged(Tensor t)
    {
        staging ??= [];
        long n = t.NumberOfElements;
        if (!staging.TryGetValue(t.dtype, out var buffer) || buffer.NumberOfElements < n)
        {
            buffer?.Dispose();
            using var fresh = empty([Math.Max(n, 1 << 18)], t.dtype);
            staging[t.dtype] = buffer = (cuda.is_available() ? fresh.pin_memory() : fresh.alias()).DetachFromDisposeScope();
        }
        var view = buffer.narrow(0, 0, n).view(t.shape);
        view.copy_(t);
        return view;
    }

    /// <summary>Reads one frame into a new CPU tensor, owned by the caller.</summary>
    public static Tensor Read(ref WireReader r)
    {
        if (!r.Bytes(4).SequenceEqual(Magic)) throw r.Bad("not a tensor frame (wrong magic)");
        byte version = r.U8();
        if (version != Version) throw r.Bad($"tensor frame version {version} is not supported (this build reads {Version})");
        byte code = r.U8();
        var type = Types.FirstOrDefault(x => x.code == code);
        if (type.code == 0) throw r.Bad($"unknown dtype code {code}");
        var encoding = (WireEncoding)r.U8();
        if (encoding is not (WireEncoding.Raw or WireEncoding.Bf16)) throw r.Bad($"unknown encoding {(byte)encoding}");
        if (encoding == WireEncoding.Bf16 && type.type != ScalarType.Float32) throw r.Bad($"bf16 encoding of a {type.type} tensor");
        int rank = r.U8();
        if (rank > MaxRank) throw r.Bad($"rank {rank} is over {MaxRank}");
        var shape = new long[rank];
        long elements = 1;
        for (int i = 0; i < rank; i++)
        {
            shape[i] = r.I64();
            if (shape[i] < 0) throw r.Bad($"dimension {i} is negative ({shape[i]})");
            try { elements = checked(elements * shape[i]); }
            catch (OverflowException) { throw r.Bad("the shape's size overflows"); }
        }
        int elementBytes = encoding == WireEncoding.Bf16 ? 2 : type.size;
        long need;
        try { need = checked(elements * elementBytes); }
        catch (OverflowException) { throw r.Bad("the shape's size overflows"); }
        long length = r.I64();
        if (length != need) throw r.Bad($"payload length {length} differs from the {need} bytes shape [{string.Join(", ", shape)}] needs");
        uint crc = r.U32();
        var payload = r.Bytes(length);                                              // checks the frame holds it
        if (Crc32.HashToUInt32(payload) != crc) throw r.Bad("payload checksum mismatch");

        var t = empty(shape, encoding == WireEncoding.Bf16 ? ScalarType.BFloat16 : type.type);
        if (length > 0) payload.CopyTo(t.bytes);
        if (encoding != WireEncoding.Bf16) return r.Decoded(t);
        using (t) return r.Decoded(t.to_type(ScalarType.Float32));
    }
}
