using TorchSharp;

namespace MoCE.Core.Training;

/// <summary>Every random draw of a run is a pure function of (seed, stream, index): the model init, each
/// epoch's permutation, and each step's mask and gate noise. A replayed step therefore sees the same
/// inputs, and no RNG state has to be carried across a resume beyond the seed itself.</summary>
public static class Seeds
{
    public enum Stream : ulong { Init = 1, Epoch = 2, Mask = 3, Gate = 4, KMeans = 5, Upcycle = 6, Probe = 7, Chaos = 8, Augment = 9 }

    public static ulong Derive(long seed, Stream stream, long index)
    {
        ulong h = SplitMix64.Mix((ulong)seed ^ 0x9E3779B97F4A7C15UL);
        h = SplitMix64.Mix(h ^ (ulong)stream * 0xBF58476D1CE4E5B9UL);
        return SplitMix64.Mix(h ^ (ulong)index * 0x94D049BB133111EBUL);
    }

    /// <summary>A permutation of 0..n−1 by Fisher–Yates over a SplitMix64 stream: platform-independent.</summary>
    public static int[] Permutation(int n, ulong key)
    {
        var perm = Enumerable.Range(0, n).ToArray();
        var rng = new SplitMix64(key);
        for (int i = n - 1; i > 0; i--)
        {
            int j = (int)rng.NextBelow((ulong)i + 1);
            (perm[i], perm[j]) = (perm[j], perm[i]);
        }
        return perm;
    }

    /// <summary>A torch generator for one (seed, stream, index) draw.</summary>
    public static torch.Generator Generator(long seed, Stream stream, long index) =>
        new(Derive(seed, stream, index) & 0x7FFF_FFFF_FFFF_FFFFUL);
}

/// <summary>SplitMix64 (Steele, Lea, Flood 2014): small, fast and fully specified.</summary>
public struct SplitMix64(ulong state)
{
    private ulong state = state;

    public static ulong Mix(ulong z)
    {
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong Next() => Mix(state += 0x9E3779B97F4A7C15UL);

    /// <summary>Uniform in [0, bound) by rejection, without modulo bias.</summary>
    public ulong NextBelow(ulong bound)
    {
        ulong limit = ulong.MaxValue - ulong.MaxValue % bound;
        ulong x;
        do x = Next(); while (x >= limit);
        return x % bound;
    }
}
