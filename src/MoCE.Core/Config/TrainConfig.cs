namespace MoCE.Core.Config;

/// <summary>What a step computes in (pretrain.precision).</summary>
public enum Precision
{
    /// <summary>Everything in float32.</summary>
    Fp32,
    /// <summary>bfloat16 compute with float32 master weights: see <see cref="Training.DenseTrainer"/>.</summary>
    Bf16,
}

/// <summary>Optimization and run settings of one training phase (dense pre-training, MoCE training).</summary>
public sealed record TrainConfig
{
    /// <summary>Master seed: initialization, the sampler, masks and gate noise all derive from it.</summary>
    public long Seed { get; init; } = 0;
    /// <summary>Optimizer steps of the phase.</summary>
    public long Steps { get; init; } = 1000;
    /// <summary>Images per step.</summary>
    public int BatchSize { get; init; } = 128;
    /// <summary>Micro-batches per step (gradient accumulation): each step's batch of <see cref="BatchSize"/> images goes
    /// through the model in this many equal parts whose gradients add up, so a step equals one large batch within float
    /// rounding, in the memory of one part.</summary>
    public int AccumSteps { get; init; } = 1;
    /// <summary>A .safetensors or PyTorch .pt/.pth file of weights to start from instead of the seeded initialisation,
    /// by name (timm's ViT names, as `moce export` writes them; an encoder alone is fine); "": none.</summary>
    public string InitFrom { get; init; } = "";
    /// <summary>fp32, or bf16 compute on a bfloat16 copy of the float32 master weights.</summary>
    public Precision Precision { get; init; } = Precision.Fp32;
    /// <summary>Base learning rate; the applied peak lr is BaseLr·BatchSize/256, as in MAE.</summary>
    public double BaseLr { get; init; } = 1.5e-4;
    /// <summary>Floor of the cosine schedule.</summary>
    public double MinLr { get; init; } = 0.0;
    /// <summary>Linear warmup steps before the cosine decay.</summary>
    public long WarmupSteps { get; init; } = 100;
    /// <summary>AdamW decoupled weight decay (0.05, as in MAE); not applied to 1-D parameters (biases, norms), as MAE's add_weight_decay.</summary>
    public double WeightDecay { get; init; } = 0.05;
    /// <summary>AdamW β1 (0.9, as in MAE).</summary>
    public double Beta1 { get; init; } = 0.9;
    /// <summary>AdamW β2 (0.95, as in MAE).</summary>
    public double Beta2 { get; init; } = 0.95;
    /// <summary>AdamW ε.</summary>
    public double Eps { get; init; } = 1e-8;
    /// <summary>Global gradient-norm clip; 0 disables clipping.</summary>
    public double ClipGrad { get; init; } = 1.0;
    /// <summary>Commit a checkpoint every this many steps (and always at the end).</summary>
    public long CheckpointEvery { get; init; } = 200;
    /// <summary>Committed checkpoints kept on disk (at least 2, so a corrupt one can fall back).</summary>
    public int KeepCheckpoints { get; init; } = 3;
    /// <summary>Log a progress line every this many steps.</summary>
    public long LogEvery { get; init; } = 20;
    /// <summary>Run a young-generation garbage collection every this many steps; 0 leaves collections to the runtime
    /// (see <see cref="MoCE.Core.Runtime.NativeMemory"/>).</summary>
    public long CollectEvery { get; init; } = 50;

    public double PeakLr => BaseLr * BatchSize / 256.0;

    public TrainConfig Validate(string section)
    {
        Require(Steps > 0, "steps", "must be positive");
        Require(BatchSize > 0, "batch-size", "must be positive");
        Require(AccumSteps >= 1 && BatchSize % AccumSteps == 0, "accum-steps", $"must be ≥ 1 and divide batch-size ({BatchSize})");
        Require(BaseLr > 0, "base-lr", "must be positive");
        Require(MinLr >= 0 && MinLr <= PeakLr, "min-lr", "must be in [0, base-lr·batch/256]");
        Require(WarmupSteps >= 0, "warmup-steps", "must be non-negative");
        Require(WeightDecay >= 0, "weight-decay", "must be non-negative");
        Require(Beta1 is >= 0 and < 1, "beta1", "must be in [0, 1)");
        Require(Beta2 is >= 0 and < 1, "beta2", "must be in [0, 1)");
        Require(Eps > 0, "eps", "must be positive");
        Require(ClipGrad >= 0, "clip-grad", "must be non-negative (0 = off)");
        Require(CheckpointEvery > 0, "checkpoint-every", "must be positive");
        Require(KeepCheckpoints >= 2, "keep-checkpoints", "must be at least 2");
        Require(LogEvery > 0, "log-every", "must be positive");
        Require(CollectEvery >= 0, "collect-every", "must be non-negative (0 = leave it to the runtime)");
        return this;

        void Require(bool ok, string key, string why)
        {
            if (!ok) throw new ConfigException($"{section}.{key}", why);
        }
    }
}
