using MoCE.Core.Training;

namespace MoCE.Core.Data;

/// <summary>Seeded, resumable sampling without replacement. Epoch e is a permutation drawn from
/// (seed, e); step s reads batch s mod (N / B) of epoch s / (N / B). The position is the global step
/// alone, so a resumed run sees exactly the batches an uninterrupted run sees. The last partial batch
/// of each epoch is dropped.</summary>
public sealed class EpochSampler
{
    private readonly int count;
    private readonly long seed;
    private long cachedEpoch = -1;
    private int[] cachedPerm = [];

    public int BatchSize { get; }
    public long StepsPerEpoch => count / BatchSize;

    public EpochSampler(int count, int batchSize, long seed)
    {
        if (batchSize <= 0) throw new ArgumentOutOfRangeException(nameof(batchSize), "batch size must be positive");
        if (count < batchSize) throw new ArgumentException($"dataset of {count} images is smaller than one batch of {batchSize}");
        this.count = count;
        this.seed = seed;
        BatchSize = batchSize;
    }

    public long EpochOf(long step) => step / StepsPerEpoch;

    /// <summary>Indices of the images of global step <paramref name="step"/>.</summary>
    public ReadOnlySpan<int> Batch(long step)
    {
        long epoch = EpochOf(step);
        if (epoch != cachedEpoch) { cachedPerm = Permutation(epoch); cachedEpoch = epoch; }
        int offset = (int)(step % StepsPerEpoch) * BatchSize;
        return cachedPerm.AsSpan(offset, BatchSize);
    }

    /// <summary>The permutation of epoch e, keyed by (seed, "epoch", e).</summary>
    public int[] Permutation(long epoch) => Seeds.Permutation(count, Seeds.Derive(seed, Seeds.Stream.Epoch, epoch));
}
