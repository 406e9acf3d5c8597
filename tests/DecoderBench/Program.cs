// Decode throughput of the three served decoders on the same JPEG files, one thread, bytes already in memory, to 8-bit
// RGB(A) at full size: what moce's loader does per image before its crop. Passes alternate the decoders (ABCCBA...) so
// that a machine's drift does not favour one. Prints images/s per decoder and the ratios to SkiaSharp's.
using System.Diagnostics;
using SkiaSharp;
using StbImageSharp;

var dir = args.Length > 0 ? args[0] : throw new ArgumentException("usage: DecoderBench DIR_OF_JPEGS [PASSES]");
int passes = args.Length > 1 ? int.Parse(args[1]) : 6;
var files = Directory.GetFiles(dir, "*.jpg").Order(StringComparer.Ordinal).Select(File.ReadAllBytes).ToArray();
if (files.Length == 0) throw new ArgumentException($"no .jpg files in {dir}");
NetVips.Cache.Max = 0;                                                     // no result cache: every decode is real

long Skia(byte[] b)
{
    using var codec = SKCodec.Create(new SKMemoryStream(b));
    var info = new SKImageInfo(codec.Info.Width, codec.Info.Height, SKColorType.Rgba8888, SKAlphaType.Unpremul);
    var px = new byte[info.BytesSize];
    unsafe { fixed (byte* p = px) if (codec.GetPixels(info, (IntPtr)p) != SKCodecResult.Success) throw new InvalidDataException("skia"); }
    return px.Length;
}
long Stb(byte[] b) => ImageResult.FromMemory(b, ColorComponents.RedGreenBlueAlpha).Data.Length;
long Vips(byte[] b)
{
    using var img = NetVips.Image.NewFromBuffer(b, access: NetVips.Enums.Access.Sequential);
    return img.WriteToMemory<byte>().Length;
}

var decoders = new (string name, Func<byte[], long> decode)[] { ("SkiaSharp 3.119", Skia), ("StbImageSharp 2.30", Stb), ("NetVips 3.2 / libvips 8.18", Vips) };
foreach (var d in decoders) foreach (var f in files.Take(5)) d.decode(f);      // warm up: native loads, JIT
var seconds = new double[decoders.Length];
for (int pass = 0; pass < passes; pass++)
{
    var order = pass % 2 == 0 ? Enumerable.Range(0, decoders.Length) : Enumerable.Range(0, decoders.Length).Reverse();
    foreach (var i in order)
    {
        var clock = Stopwatch.StartNew();
        foreach (var f in files) decoders[i].decode(f);
        seconds[i] += clock.Elapsed.TotalSeconds;
    }
}
var first = SKCodec.Create(new SKMemoryStream(files[0])).Info;
Console.WriteLine($"{files.Length} JPEGs of {first.Width}×{first.Height} from {dir}, {passes} passes, one thread:");
for (int i = 0; i < decoders.Length; i++)
    Console.WriteLine($"  {decoders[i].name,-28} {files.Length * passes / seconds[i],8:F0} images/s   {seconds[0] / seconds[i]:F2}× SkiaSharp");
