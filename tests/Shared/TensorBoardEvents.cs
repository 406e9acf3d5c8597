namespace MoCE.Tests.Shared;

/// <summary>Reads TensorBoard event files as TensorBoard does, written out here rather than borrowed from the writer:
/// TFRecord framing (u64 length, masked CRC-32C of it, the record, masked CRC-32C of it; every CRC checked) around
/// tensorflow.Event protobuf messages, of which it decodes step (2) and summary (5) → value (1) → tag (1), simple_value (2).</summary>
public static class TensorBoardEvents
{
    public sealed record Point(string Tag, long Step, float Value);

    /// <summary>Every scalar of every events.out.tfevents.* file in <paramref name="dir"/>, files in name order.</summary>
    public static List<Point> Read(string dir)
    {
        var points = new List<Point>();
        foreach (var file in Directory.GetFiles(dir, "events.out.tfevents.*").Order(StringComparer.Ordinal))
        {
            var b = File.ReadAllBytes(file);
            int at = 0;
            while (at < b.Length)
            {
                if (b.Length - at < 12) throw new InvalidDataException($"{file}: a truncated record header at byte {at}");
                ulong len = BitConverter.ToUInt64(b, at);
                if (Masked(b.AsSpan(at, 8)) != BitConverter.ToUInt32(b, at + 8)) throw new InvalidDataException($"{file}: bad length CRC at byte {at}");
                if (len > (ulong)(b.Length - at - 16)) throw new InvalidDataException($"{file}: a record of {len} bytes at byte {at} overruns the file");
                var rec = b.AsSpan(at + 12, (int)len);
                if (Masked(rec) != BitConverter.ToUInt32(b, at + 12 + (int)len)) throw new InvalidDataException($"{file}: bad data CRC at byte {at}");
                Event(rec, points);
                at += 16 + (int)len;
            }
        }
        return points;
    }

    private static void Event(ReadOnlySpan<byte> e, List<Point> points)
    {
        long step = 0;
        var values = new List<(string tag, float value)>();
        foreach (var (field, wire, value, bytes) in Fields(e.ToArray()))
        {
            if (field == 2 && wire == 0) step = (long)value;
            if (field != 5 || wire != 2) continue;
            foreach (var (vf, vw, _, vb) in Fields(bytes!))                       // Summary.value
            {
                if (vf != 1 || vw != 2) continue;
                string tag = "";
                float? simple = null;
                foreach (var (f, w, v, fb) in Fields(vb!))
                {
                    if (f == 1 && w == 2) tag = System.Text.Encoding.UTF8.GetString(fb!);
                    if (f == 2 && w == 5) simple = BitConverter.Int32BitsToSingle((int)v);
                }
                if (simple is float s) values.Add((tag, s));
            }
        }
        points.AddRange(values.Select(v => new Point(v.tag, step, v.value)));
    }

    /// <summary>The fields of a protobuf message: number, wire type, the varint or fixed value, or the bytes.</summary>
    private static IEnumerable<(int field, int wire, ulong value, byte[]? bytes)> Fields(byte[] m)
    {
        int i = 0;
        ulong Varint()
        {
            ulong r = 0;
            for (int shift = 0; ; shift += 7)
            {
                byte x = m[i++];
                r |= (ulong)(x & 0x7f) << shift;
                if (x < 0x80) return r;
            }
        }
        while (i < m.Length)
        {
            var key = Varint();
            int field = (int)(key >> 3), wire = (int)(key & 7);
            switch (wire)
            {
                case 0: yield return (field, wire, Varint(), null); break;
                case 1: yield return (field, wire, BitConverter.ToUInt64(m, i), null); i += 8; break;
                case 2: { int n = (int)Varint(); yield return (field, wire, 0, m[i..(i + n)]); i += n; break; }
                case 5: yield return (field, wire, BitConverter.ToUInt32(m, i), null); i += 4; break;
                default: throw new InvalidDataException($"protobuf wire type {wire}");
            }
        }
    }

    private static readonly uint[] Table = Enumerable.Range(0, 256).Select(n =>
    {
        uint c = (uint)n;
        for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0x82F63B78u ^ (c >> 1) : c >> 1;   // CRC-32C (Castagnoli), reflected
        return c;
    }).ToArray();

    private static uint Masked(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFFu;
        foreach (var x in data) c = Table[(c ^ x) & 0xff] ^ (c >> 8);
        c ^= 0xFFFFFFFFu;
        return ((c >> 15) | (c << 17)) + 0xa282ead8u;
    }
}
