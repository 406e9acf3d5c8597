using Akka.Configuration;
using MoCE.Core.Config;

namespace MoCE.Cli.Configuration;

/// <summary>The resolved configuration of a run: the typed records plus the merged HOCON it came from.</summary>
public sealed record MoceConfig(string Device, int Threads, DataConfig Data, MaeConfig Model, TrainConfig Pretrain, Config Hocon)
{
    /// <summary>Keys a resumed run may change; all others must equal the run's recorded config.</summary>
    public static readonly IReadOnlySet<string> ResumeMutable = new HashSet<string>
    {
        "moce.device", "moce.threads", "moce.data.path", "moce.data.fallback-to-sample",
        "moce.pretrain.log-every", "moce.pretrain.steps", "moce.pretrain.checkpoint-every", "moce.pretrain.keep-checkpoints",
    };

    /// <summary>Binds the merged tree to records. Reads every key it knows; the loader rejects keys it does not.</summary>
    public static (MoceConfig config, IReadOnlySet<string> keysRead) Bind(Config merged)
    {
        var t = new HoconTree(merged);
        var model = new MaeConfig
        {
            ImageSize = t.Int("moce.model.image-size"),
            InChans = t.Int("moce.model.in-chans"),
            PatchSize = t.Int("moce.model.patch-size"),
            Dim = t.Int("moce.model.dim"),
            Depth = t.Int("moce.model.depth"),
            Heads = t.Int("moce.model.heads"),
            DecoderDim = t.Int("moce.model.decoder-dim"),
            DecoderDepth = t.Int("moce.model.decoder-depth"),
            DecoderHeads = t.Int("moce.model.decoder-heads"),
            MlpRatio = t.Double("moce.model.mlp-ratio"),
            MaskRatio = t.Double("moce.model.mask-ratio"),
            NormPixLoss = t.Bool("moce.model.norm-pix-loss"),
        }.Validate();
        var data = new DataConfig
        {
            Path = t.String("moce.data.path"),
            FallbackToSample = t.Bool("moce.data.fallback-to-sample"),
            Mean = t.Double("moce.data.mean"),
            Std = t.Double("moce.data.std"),
        }.Validate();
        long seed = t.Long("moce.seed");
        var cfg = new MoceConfig(t.String("moce.device"), t.Int("moce.threads"), data, model, Train(t, "moce.pretrain", seed), merged);
        if (cfg.Threads < 0) throw new ConfigException("moce.threads", "must be ≥ 0 (0 = torch's default)");
        if (cfg.Device != "cpu" && !cfg.Device.StartsWith("cuda", StringComparison.Ordinal))
            throw new ConfigException("moce.device", $"expected \"cpu\", \"cuda\" or \"cuda:N\", got \"{cfg.Device}\"");
        return (cfg, t.KeysRead);
    }

    private static TrainConfig Train(HoconTree t, string s, long seed) => new TrainConfig
    {
        Seed = seed,
        Steps = t.Long($"{s}.steps"),
        BatchSize = t.Int($"{s}.batch-size"),
        BaseLr = t.Double($"{s}.base-lr"),
        MinLr = t.Double($"{s}.min-lr"),
        WarmupSteps = t.Long($"{s}.warmup-steps"),
        WeightDecay = t.Double($"{s}.weight-decay"),
        Beta1 = t.Double($"{s}.beta1"),
        Beta2 = t.Double($"{s}.beta2"),
        Eps = t.Double($"{s}.eps"),
        ClipGrad = t.Double($"{s}.clip-grad"),
        CheckpointEvery = t.Long($"{s}.checkpoint-every"),
        KeepCheckpoints = t.Int($"{s}.keep-checkpoints"),
        LogEvery = t.Long($"{s}.log-every"),
    }.Validate(s);
}
