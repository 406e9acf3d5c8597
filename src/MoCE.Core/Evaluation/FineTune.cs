using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Model;
using MoCE.Core.Training;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MoCE.Core.Evaluation;

/// <summary>End-to-end fine-tuning as MAE does it (moce.finetune): peak lr = base-lr · batch / 256, linear warmup then
/// half-cosine per step, AdamW (β = 0.9, 0.999; weight decay on matrices only), layer-wise lr decay, label smoothing.</summary>
public sealed record FineTuneConfig
{
    public int Epochs { get; init; } = 30;
    public int BatchSize { get; init; } = 64;
    public double BaseLr { get; init; } = 1e-3;
    /// <summary>Layer-wise lr decay: block i of L gets lr · decay^(L − i); the patch embedding decay^(L + 1)… (MAE: 0.75 for ViT-B).</summary>
    public double LayerDecay { get; init; } = 0.75;
    public double WeightDecay { get; init; } = 0.05;
    public int WarmupEpochs { get; init; } = 3;
    public double LabelSmoothing { get; init; } = 0.1;

    public FineTuneConfig Validate()
    {
        if (Epochs < 1) throw new ConfigException("moce.finetune.epochs", "must be positive");
        if (BatchSize < 1) throw new ConfigException("moce.finetune.batch-size", "must be positive");
        if (BaseLr <= 0) throw new ConfigException("moce.finetune.base-lr", "must be positive");
        if (LayerDecay is <= 0 or > 1) throw new ConfigException("moce.finetune.layer-decay", "must be in (0, 1]");
        if (WeightDecay < 0) throw new ConfigException("moce.finetune.weight-decay", "must be ≥ 0");
        if (WarmupEpochs < 0 || WarmupEpochs >= Epochs) throw new ConfigException("moce.finetune.warmup-epochs", "must be in [0, epochs)");
        if (LabelSmoothing is < 0 or >= 1) throw new ConfigException("moce.finetune.label-smoothing", "must be in [0, 1)");
        return this;
    }
}

/// <summary>A fine-tuned encoder's test accuracy, its last epoch's mean training loss, and its optimizer steps.</summary>
public sealed record FineTuneResult(double Accuracy, double TrainLoss, long Steps);

/// <summary>Fine-tunes a dense encoder (the pretrained, continued or customized MAE; its decoder is not used) with a
/// head on the mean of its patch tokens (the features the probes see): a LayerNorm (MAE's fc_norm) and a linear
/// layer, every weight trained. Batches and the head's initialisation come from the seed, so a rerun gives the same number.</summary>
public static class FineTune
{
    /// <summary>Trains <paramref name="encoder"/> in place on the training images and returns the accuracy on the test images.
    /// <paramref name="ct"/> stops it between steps.</summary>
    public static FineTuneResult Run(MaskedAutoencoder encoder, ImageDataset trainData, IReadOnlyList<int> trainIdx, long[] trainY,
                                     ImageDataset testData, IReadOnlyList<int> testIdx, long[] testY, int classes, FineTuneConfig cfg, long seed, Device? device = null,
                                     CancellationToken ct = default)
    {
        if (encoder.MoeLayers.Count > 0) throw new ArgumentException("fine-tuning takes a dense encoder (customize a MoCE model first)");
        device ??= CPU;
        int depth = encoder.Config.Depth;
        using var fcNorm = nn.LayerNorm(encoder.Config.Dim, eps: 1e-6);            // MAE's fc_norm on the pooled features
        using var linear = nn.Linear(encoder.Config.Dim, classes);
        using var head = nn.Sequential(("fc_norm", fcNorm), ("head", linear));
        using (no_grad())
        using (var gen = Seeds.Generator(seed, Seeds.Stream.Probe, 1))
        {
            linear.weight!.copy_(randn(linear.weight.shape, generator: gen) * 2e-5);   // MAE: trunc_normal(std = 2e-5)
            linear.bias!.zero_();
        }
        encoder.to(device).train();
        head.to(device).train();

        int per = (trainIdx.Count + cfg.BatchSize - 1) / cfg.BatchSize;
        var schedule = new TrainConfig
        {
            Steps = (long)cfg.Epochs * per, BatchSize = cfg.BatchSize, BaseLr = cfg.BaseLr, WarmupSteps = (long)cfg.WarmupEpochs * per,
            WeightDecay = cfg.WeightDecay, Beta2 = 0.999, ClipGrad = 0,
        };
        // one AdamW per layer, each stepped with its decayed lr: the embedding (0), the blocks (1..L), the final norm and the head (L+1)
        int Layer(string name) => name.StartsWith("blocks.", StringComparison.Ordinal) ? 1 + int.Parse(name.Split('.')[1], System.Globalization.CultureInfo.InvariantCulture)
            : name.StartsWith("norm.", StringComparison.Ordinal) ? depth + 1 : 0;
        var trained = encoder.named_parameters().Where(p => p.parameter.requires_grad && !p.name.StartsWith("decoder_", StringComparison.Ordinal) && p.name != "mask_token");
        var groups = trained.GroupBy(p => Layer(p.name))
            .Select(g => (scale: Math.Pow(cfg.LayerDecay, depth + 1 - g.Key), opt: new AdamW(g.ToList(), schedule)))
            .Append((scale: 1.0, opt: new AdamW(head.named_parameters().Select(p => ("head." + p.name, p.parameter)).ToList(), schedule)))
            .ToList();
        try
        {
            long step = 0;
            double lastEpochLoss = 0;
            for (int e = 0; e < cfg.Epochs; e++)
            {
                var perm = Seeds.Permutation(trainIdx.Count, Seeds.Derive(seed, Seeds.Stream.Probe, 100 + e));
                double sum = 0;
                for (int b = 0; b < per; b++, step++)
                {
                    ct.ThrowIfCancellationRequested();                             // Ctrl-C: nothing is kept, a rerun starts the row again
                    using var scope = NewDisposeScope();
                    var rows = perm.Skip(b * cfg.BatchSize).Take(cfg.BatchSize).ToArray();
                    var imgs = trainData.Batch(rows.Select(r => trainIdx[r]).ToArray()).to(device);
                    var y = tensor(rows.Select(r => trainY[r]).ToArray()).to(device);
                    var loss = F.cross_entropy(head.forward(encoder.ForwardFeatures(imgs)), y, label_smoothing: cfg.LabelSmoothing);
                    foreach (var (_, opt) in groups) opt.ZeroGrad();
                    loss.backward();
                    double lr = LrSchedule.At(step, schedule);
                    foreach (var (scale, opt) in groups) opt.Step(lr * scale);
                    sum += loss.item<float>();
                }
                lastEpochLoss = sum / per;
            }
            encoder.eval();
            head.eval();
            long correct = 0;
            using (no_grad())
                for (int s = 0; s < testIdx.Count; s += 256)
                {
                    using var scope = NewDisposeScope();
                    var part = Enumerable.Range(s, Math.Min(256, testIdx.Count - s)).ToArray();
                    var pred = head.forward(encoder.ForwardFeatures(testData.Batch(part.Select(i => testIdx[i]).ToArray()).to(device))).argmax(1).cpu();
                    correct += pred.eq(tensor(part.Select(i => testY[i]).ToArray())).sum().item<long>();
                }
            return new FineTuneResult(correct / (double)testIdx.Count, lastEpochLoss, step);
        }
        finally { foreach (var (_, opt) in groups) opt.Dispose(); }
    }
}
