namespace MoCE.Core.Config;

/// <summary>The masked autoencoder's architecture. Letters used in shape comments: N batch, L patches,
/// D encoder width, Dd decoder width, P = patch·patch·channels pixels per patch.</summary>
public sealed record MaeConfig
{
    /// <summary>Image side in pixels (square images).</summary>
    public int ImageSize { get; init; } = 28;
    /// <summary>Image channels (1 for Fashion-MNIST).</summary>
    public int InChans { get; init; } = 1;
    /// <summary>Patch side in pixels; must divide ImageSize.</summary>
    public int PatchSize { get; init; } = 4;
    /// <summary>Encoder width D.</summary>
    public int Dim { get; init; } = 128;
    /// <summary>Encoder blocks.</summary>
    public int Depth { get; init; } = 4;
    /// <summary>Encoder attention heads; must divide Dim.</summary>
    public int Heads { get; init; } = 4;
    /// <summary>Decoder width Dd.</summary>
    public int DecoderDim { get; init; } = 64;
    /// <summary>Decoder blocks.</summary>
    public int DecoderDepth { get; init; } = 2;
    /// <summary>Decoder attention heads; must divide DecoderDim.</summary>
    public int DecoderHeads { get; init; } = 4;
    /// <summary>MLP hidden width as a multiple of the block width (4, as in ViT).</summary>
    public double MlpRatio { get; init; } = 4.0;
    /// <summary>Fraction of patches removed (masked), 0.75 as in MAE.</summary>
    public double MaskRatio { get; init; } = 0.75;
    /// <summary>Normalize each target patch by its own mean and variance (MAE's norm_pix_loss).</summary>
    public bool NormPixLoss { get; init; } = true;

    public int GridSize => ImageSize / PatchSize;
    public int NumPatches => GridSize * GridSize;
    public int PatchPixels => PatchSize * PatchSize * InChans;
    /// <summary>Visible patches per image: round(L·(1−ratio)).</summary>
    public int NumVisible => (int)Math.Round(NumPatches * (1 - MaskRatio), MidpointRounding.AwayFromZero);

    public MaeConfig Validate()
    {
        Require(ImageSize > 0, "image-size", "must be positive");
        Require(InChans > 0, "in-chans", "must be positive");
        Require(PatchSize > 0 && ImageSize % PatchSize == 0, "patch-size", $"must divide image-size {ImageSize}");
        Require(Dim > 0 && Heads > 0 && Dim % Heads == 0, "heads", $"must divide dim {Dim}");
        Require(DecoderDim > 0 && DecoderHeads > 0 && DecoderDim % DecoderHeads == 0, "decoder-heads", $"must divide decoder-dim {DecoderDim}");
        Require(Depth > 0, "depth", "must be positive");
        Require(DecoderDepth > 0, "decoder-depth", "must be positive");
        Require(MlpRatio > 0, "mlp-ratio", "must be positive");
        Require(MaskRatio >= 0 && MaskRatio < 1, "mask-ratio", "must be in [0, 1)");
        Require(NumVisible >= 1, "mask-ratio", "leaves no visible patch");
        return this;
    }

    private static void Require(bool ok, string key, string why)
    {
        if (!ok) throw new ConfigException($"moce.model.{key}", why);
    }
}

/// <summary>A configuration value that is missing, of the wrong type or out of range. Names the key.</summary>
public sealed class ConfigException(string key, string problem)
    : Exception($"config key '{key}': {problem}")
{
    public string Key { get; } = key;
}
