using System.Globalization;
using System.Text.Json;
using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Model;
using MoCE.Core.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Core.Training;

/// <summary>The single-process reference trainer for dense MAE pre-training. Step s is a pure function of
/// (seed, s) and the state after step s−1: batch s of the seeded sampler, mask noise from (seed, "mask", s).
/// With <see cref="Precision.Bf16"/> (TorchSharp 0.107 has no autocast), exactly this is cast: before each step every
/// float32 master weight is copied into a bfloat16 copy of the model; the images enter its encoder as bfloat16, so every
/// layer (patch embedding, attention and its softmax, MLPs, LayerNorms, the decoder) computes in bfloat16; the prediction
/// is cast to float32 and the loss, with its normalised-pixel target from the float32 images, is float32; the backward
/// runs through the bfloat16 copy; its gradients are cast to float32 onto the master weights, where the clip and AdamW
/// work in float32. The mask noise and the masking indices are the fp32 run's. Checkpoints hold the master weights only.</summary>
public sealed class DenseTrainer : ITrainer, IDisposable
{
    public const string Owner = "trainer";

    private readonly MaeConfig modelCfg;
    private readonly TrainConfig cfg;
    private readonly ImageDataset data;
    private readonly Device device;

    public MaskedAutoencoder Model { get; }
    /// <summary>The bfloat16 copy the steps compute on (bf16 precision), null in fp32.</summary>
    private readonly MaskedAutoencoder? compute;
    /// <summary>Each master weight with its bfloat16 copy, paired by name once.</summary>
    private readonly (TorchSharp.Modules.Parameter master, TorchSharp.Modules.Parameter copy)[] pairs = [];
    public AdamW Optimizer { get; }
    public EpochSampler Sampler { get; }
    public long NextStep { get; private set; }

    public DenseTrainer(MaeConfig modelCfg, TrainConfig cfg, ImageDataset data, Device? device = null)
    {
        this.modelCfg = modelCfg.Validate();
        this.cfg = cfg;
        this.data = data;
        this.device = device ?? CPU;
        if (data.Height != modelCfg.ImageSize || data.Width != modelCfg.ImageSize || data.Channels != modelCfg.InChans)
            throw new ConfigException("moce.model.image-size",
                $"the model expects {modelCfg.InChans}×{modelCfg.ImageSize}×{modelCfg.ImageSize} images, the data ({data.Source}) has {data.Channels}×{data.Height}×{data.Width}");
        Model = new MaskedAutoencoder(modelCfg);
        using (var gen = Seeds.Generator(cfg.Seed, Seeds.Stream.Init, 0)) Model.InitializeWeights(gen);
        if (cfg.InitFrom.Length > 0) WeightFiles.Import(Model, cfg.InitFrom, "moce.pretrain.init-from");
        Model.to(this.device);
        Model.train();
        Optimizer = new AdamW(Model.named_parameters(), cfg);
        Sampler = new EpochSampler(data.Count, cfg.BatchSize, cfg.Seed);
        if (cfg.Precision == Precision.Bf16)
        {
            compute = new MaskedAutoencoder(modelCfg);
            compute.to(this.device).to(ScalarType.BFloat16);
            compute.train();
            var copies = compute.named_parameters().ToDictionary(p => p.name, p => p.parameter);
            pairs = [.. Model.named_parameters().Select(p => (p.parameter, copies[p.name]))];
        }
    }

    /// <summary>A micro-batch's loss: on the model itself, or on the bfloat16 copy (see the class).</summary>
    private Tensor MicroLoss(Tensor imgs, Tensor noise)
    {
        if (compute is null) return Model.forward(imgs, noise).Loss;
        var (latent, mask, idsRestore) = compute.ForwardEncoder(imgs.to_type(ScalarType.BFloat16), noise);
        return compute.ForwardLoss(imgs, compute.ForwardDecoder(latent, idsRestore).to_type(ScalarType.Float32), mask);
    }

    /// <summary>The images and mask noise of step <paramref name="step"/>: identical on every replay.</summary>
    public (Tensor imgs, Tensor noise) Inputs(long step)
    {
        var imgs = data.TrainBatch(Sampler.Batch(step), step, cfg.Seed).to(device);
        data.Prefetch(Sampler.Batch(step + 1), step + 1, cfg.Seed);                            // decoded while this step computes
        using var gen = Seeds.Generator(cfg.Seed, Seeds.Stream.Mask, step);
        return (imgs, Model.MaskNoise(cfg.BatchSize, gen, device));
    }

    public StepStats TrainStep()
    {
        var stats = Step();
        NativeMemory.AfterStep(stats.Step, cfg.CollectEvery);                   // after the step's scope is gone
        return stats;
    }

    private StepStats Step()
    {
        long step = NextStep;
        using var scope = NewDisposeScope();
        var (imgs, noise) = Inputs(step);
        Optimizer.ZeroGrad();
        int k = cfg.AccumSteps;
        long micro = imgs.shape[0] / k;
        double loss = 0;
        if (compute is not null)
            using (no_grad())
                foreach (var (master, copy) in pairs) { copy.copy_(master); copy.grad = null; }
        for (int i = 0; i < k; i++)                                             // gradients add up over the micro-batches
        {
            using var inner = NewDisposeScope();
            var part = k == 1 ? MicroLoss(imgs, noise) : MicroLoss(imgs.narrow(0, i * micro, micro), noise.narrow(0, i * micro, micro));
            (k == 1 ? part : part / k).backward();                               // every image masks as many patches: the mean of the parts' means
            loss += part.item<float>();
        }
        loss /= k;
        if (compute is not null)
            foreach (var (master, copy) in pairs) if (copy.grad is { } g) master.grad = g.to_type(ScalarType.Float32);
        double norm = Math.Sqrt(Optimizer.SquaredGradNorm());
        double lr = LrSchedule.At(step, cfg);
        Optimizer.Step(lr, AdamW.ClipScale(step, norm, cfg.ClipGrad));
        NextStep = step + 1;
        return new StepStats(step, loss, lr, norm, cfg.BatchSize);
    }

    public IReadOnlyList<CheckpointRef> SaveCheckpoint(CheckpointStore store)
    {
        var meta = new Dictionary<string, string>
        {
            ["kind"] = "dense-mae",
            ["seed"] = cfg.Seed.ToString(CultureInfo.InvariantCulture),
            ["sampler_epoch"] = Sampler.EpochOf(NextStep).ToString(CultureInfo.InvariantCulture),
            ["model_config"] = JsonSerializer.Serialize(modelCfg),
        };
        return [TrainerCheckpoint.Save(store, Owner, NextStep, meta, Model, Optimizer)];
    }

    public void Restore(CheckpointCommit commit, CheckpointStore store)
    {
        var part = commit.Parts.Single(p => p.Owner == Owner);
        using var c = store.Load(part);
        if (JsonSerializer.Deserialize<MaeConfig>(c["model_config"]) != modelCfg)
            throw new ConfigException("moce.model", $"checkpoint {part.File} was trained with a different model config: {c["model_config"]}");
        NextStep = TrainerCheckpoint.Restore(c, Model, Optimizer);
    }

    public void Dispose()
    {
        Optimizer.Dispose();
        compute?.Dispose();
        Model.Dispose();
    }
}
