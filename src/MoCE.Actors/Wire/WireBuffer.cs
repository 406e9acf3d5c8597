using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Akka.Actor;
using TorchSharp;

namespace MoCE.Actors.Wire;

/// <summary>A frame that cannot be read: bad magic or version, a length that lies, a checksum that does not match,
/// truncation. A message's frame becomes a <see cref="MalformedFrame"/> for its receiver; a journal event's fails the
/// recovery.</summary>
public sealed class WireFormatException(string message) : System.Runtime.Serialization.SerializationException(message);

/// <summary>Little-endian writer of wire frames into a growing buffer rented from the shared array pool: a message of
/// activations is hundreds of KB, and growing (and dropping) a fresh array for each one would put them all on the
/// large-object heap. Dispose returns the buffer; <see cref="ToArray"/> is the one exact-size copy Akka needs.</summary>
public sealed class WireWriter(int capacity = 256) : IDisposable
{
    private byte[] buffer = ArrayPool<byte>.Shared.Rent(Math.Max(16, capacity));
    private int length;

    private Span<byte> Next(int n)
    {
        if (length + n > buffer.Length)
        {
            var bigger = ArrayPool<byte>.Shared.Rent((int)Math.Min(Array.MaxLength, Math.Max((long)buffer.Length * 2, (long)length + n)));
            buffer.AsSpan(0, length).CopyTo(bigger);
            ArrayPool<byte>.Shared.Return(buffer);
            buffer = bigger;
        }
        var span = buffer.AsSpan(length, n);
        length += n;
        return span;
    }

    public void U8(byte v) => Next(1)[0] = v;
    public void Put(ReadOnlySpan<byte> bytes) => bytes.CopyTo(Next(bytes.Length));
    public void U32(uint v) => BinaryPrimitives.WriteUInt32LittleEndian(Next(4), v);
    public void I32(int v) => BinaryPrimitives.WriteInt32LittleEndian(Next(4), v);
    public void I64(long v) => BinaryPrimitives.WriteInt64LittleEndian(Next(8), v);
    public void F64(double v) => BinaryPrimitives.WriteDoubleLittleEndian(Next(8), v);
    public void Str(string s)
    {
        var n = Encoding.UTF8.GetByteCount(s);
        U32((uint)n);
        Encoding.UTF8.GetBytes(s, Next(n));
    }
    /// <summary>Reserves <paramref name="n"/> bytes and returns them to fill in place (a tensor's payload).</summary>
    public Span<byte> Reserve(int n) => Next(n);

    public byte[] ToArray() => buffer.AsSpan(0, length).ToArray();

    public void Dispose()
    {
        if (buffer.Length == 0) return;
        ArrayPool<byte>.Shared.Return(buffer);
        buffer = [];
        length = 0;
    }
}

/// <summary>Little-endian reader of wire frames. Every read checks the bytes are there; any lie in the frame
/// becomes a <see cref="WireFormatException"/> that names what was being read.</summary>
public ref struct WireReader(ReadOnlySpan<byte> data, string what)
{
    private readonly ReadOnlySpan<byte> data = data;
    private readonly string what = what;
    private List<torch.Tensor>? decoded;
    public int Position { get; private set; }

    /// <summary>A tensor decoded from this frame: disposed by <see cref="DisposeDecoded"/> if the frame turns out bad.</summary>
    public torch.Tensor Decoded(torch.Tensor t)
    {
        (decoded ??= []).Add(t);
        return t;
    }
    public readonly void DisposeDecoded()
    {
        foreach (var t in decoded ?? []) t.Dispose();
        decoded?.Clear();
    }
    public readonly int Remaining => data.Length - Position;
    public readonly bool AtEnd => Position == data.Length;

    public readonly WireFormatException Bad(string why) => new($"{what}: {why} (at byte {Position} of {data.Length})");

    public ReadOnlySpan<byte> Bytes(long n)
    {
        if (n < 0 || n > Remaining) throw Bad($"truncated: {n} bytes wanted, {Remaining} left");
        var s = data.Slice(Position, (int)n);
        Position += (int)n;
        return s;
    }
    public byte U8() => Bytes(1)[0];
    public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4));
    public int I32() => BinaryPrimitives.ReadInt32LittleEndian(Bytes(4));
    public long I64() => BinaryPrimitives.ReadInt64LittleEndian(Bytes(8));
    public double F64() => BinaryPrimitives.ReadDoubleLittleEndian(Bytes(8));
    public string Str()
    {
        uint n = U32();
        try { return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(Bytes(n)); }
        catch (DecoderFallbackException) { throw Bad("a string is not valid UTF-8"); }
    }
    /// <summary>A count of items that each take at least <paramref name="minBytes"/>: a count the frame cannot hold is a lie.</summary>
    public int Count(int minBytes)
    {
        uint n = U32();
        if (n > (uint)(Remaining / Math.Max(1, minBytes))) throw Bad($"a count of {n} does not fit in the {Remaining} bytes left");
        return (int)n;
    }
    public readonly void End() { if (!AtEnd) throw Bad($"{Remaining} trailing bytes"); }
}

/// <summary>What a message whose frame does not parse becomes on arrival (never a journal event: a bad event fails its
/// recovery). It reaches the actor the frame was sent to, with the frame's sender, and that actor fails the step at
/// once (<see cref="MalformedFrameException"/>) instead of leaving the sender to wait out its ask timeout. The tensors
/// already decoded from the frame are disposed before it is delivered.</summary>
public sealed record MalformedFrame(string Manifest, string Error)
{
    /// <summary>The failure, naming the frame's type and sender, logged once by the receiver.</summary>
    public MalformedFrameException Failure(IActorRef sender) => new(Manifest, sender.Path.ToString(), Error);
}

public sealed class MalformedFrameException(string manifest, string sender, string error)
    : Exception($"a malformed {manifest} frame from {sender}: {error}")
{
    public string Manifest { get; } = manifest;
    public string Sender { get; } = sender;
}
