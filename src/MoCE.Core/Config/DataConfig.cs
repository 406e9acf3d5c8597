namespace MoCE.Core.Config;

/// <summary>Where the images come from and how pixels are normalized.</summary>
public sealed record DataConfig
{
    /// <summary>Directory holding the IDX files; empty searches MOCE_DATA, then /usr/share/datasets/fashion-mnist.</summary>
    public string Path { get; init; } = "";
    /// <summary>If no full dataset is found, use the small committed sample (with a warning) instead of failing.</summary>
    public bool FallbackToSample { get; init; } = true;
    /// <summary>Pixel mean after scaling to [0, 1] (Fashion-MNIST train set).</summary>
    public double Mean { get; init; } = 0.2860;
    /// <summary>Pixel standard deviation after scaling to [0, 1].</summary>
    public double Std { get; init; } = 0.3530;

    public DataConfig Validate()
    {
        if (Std <= 0) throw new ConfigException("moce.data.std", "must be positive");
        return this;
    }
}
