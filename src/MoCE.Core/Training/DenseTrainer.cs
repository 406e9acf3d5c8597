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
/// (seed, s) and the state after step s−1: batch s of the seeded sampler, mask noise from (seed, "mask", s).</summary>
public sealed class DenseTrainer : ITrainer, IDisposable
{
    public const string Owner = "trainer";

    private readonly MaeConfig modelCfg;
    private readonly TrainConfig cfg;
    private readonly ImageDataset data;
    private readonly Device device;

    public MaskedAutoencoder Model { get; }
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
        Model.to(this.device);
        Model.train();
        Optimizer = new AdamW(Model.named_parameters(), cfg);
        Sampler = new EpochSampler(data.Count, cfg.BatchSize, cfg.Seed);
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
        for (int i = 0; i < k; i++)                                             // gradients add up over the micro-batches
        {
            using var inner = NewDisposeScope();
            using var output = k == 1 ? Model.forward(imgs, noise) : Model.forward(imgs.narrow(0, i * micro, micro), noise.narrow(0, i * micro, micro));
            (k == 1 ? output.Loss : output.Loss / k).backward();                 // every image masks as many patches: the mean of the parts' means
            loss += output.Loss.item<float>();
        }
        loss /= k;
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
        Model.Dispose();
    }
}
