using System.Globalization;
using System.Text.Json;
using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Model;
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
    private readonly DataConfig dataCfg;
    private readonly ImageDataset data;
    private readonly Device device;

    public MaskedAutoencoder Model { get; }
    public AdamW Optimizer { get; }
    public EpochSampler Sampler { get; }
    public long NextStep { get; private set; }

    public DenseTrainer(MaeConfig modelCfg, TrainConfig cfg, DataConfig dataCfg, ImageDataset data, Device? device = null)
    {
        this.modelCfg = modelCfg.Validate();
        this.cfg = cfg;
        this.dataCfg = dataCfg;
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
        var imgs = data.Batch(Sampler.Batch(step), dataCfg.Mean, dataCfg.Std).to(device);
        using var gen = Seeds.Generator(cfg.Seed, Seeds.Stream.Mask, step);
        return (imgs, Model.MaskNoise(cfg.BatchSize, gen, device));
    }

    public StepStats TrainStep()
    {
        long step = NextStep;
        using var scope = NewDisposeScope();
        var (imgs, noise) = Inputs(step);
        using var output = Model.forward(imgs, noise);
        Optimizer.ZeroGrad();
        output.Loss.backward();
        double norm = Math.Sqrt(Optimizer.SquaredGradNorm());
        double lr = LrSchedule.At(step, cfg);
        Optimizer.Step(lr, AdamW.ClipScale(norm, cfg.ClipGrad));
        double loss = output.Loss.item<float>();
        NextStep = step + 1;
        return new StepStats(step, loss, lr, norm, cfg.BatchSize);
    }

    public IReadOnlyList<CheckpointRef> SaveCheckpoint(CheckpointStore store)
    {
        var meta = new Dictionary<string, string>
        {
            ["kind"] = "dense-mae",
            ["step"] = NextStep.ToString(CultureInfo.InvariantCulture),
            ["optimizer_steps"] = Optimizer.StepCount.ToString(CultureInfo.InvariantCulture),
            ["seed"] = cfg.Seed.ToString(CultureInfo.InvariantCulture),
            // sampler position: the global step alone determines epoch and offset
            ["sampler_epoch"] = Sampler.EpochOf(NextStep).ToString(CultureInfo.InvariantCulture),
            ["sampler_batch_size"] = cfg.BatchSize.ToString(CultureInfo.InvariantCulture),
            // RNG state: every draw is derived from (seed, stream, index), so the seed is the whole state
            ["rng"] = "derived:(seed,stream,index)",
            ["model_config"] = JsonSerializer.Serialize(modelCfg),
        };
        var tensors = Model.state_dict().Select(kv => ("model." + kv.Key, kv.Value))
            .Concat(Optimizer.StateTensors().Select(t => ("optim." + t.name, t.tensor)));
        return [store.Save(Owner, NextStep, meta, tensors)];
    }

    public void Restore(CheckpointCommit commit, CheckpointStore store)
    {
        var part = commit.Parts.Single(p => p.Owner == Owner);
        using var c = store.Load(part);
        var saved = JsonSerializer.Deserialize<MaeConfig>(c["model_config"]);
        if (saved != modelCfg)
            throw new ConfigException("moce.model", $"checkpoint {part.File} was trained with a different model config: {c["model_config"]}");
        LoadModelWeights(Model, c);
        Optimizer.LoadState(c.Tensors.Where(kv => kv.Key.StartsWith("optim.", StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key["optim.".Length..], kv => kv.Value), long.Parse(c["optimizer_steps"], CultureInfo.InvariantCulture));
        NextStep = long.Parse(c["step"], CultureInfo.InvariantCulture);
    }

    /// <summary>Copies the "model.*" tensors of a checkpoint into a model; names and shapes must all match.</summary>
    public static void LoadModelWeights(nn.Module model, CheckpointContent c)
    {
        var weights = ModelWeights(c);
        using var _ = no_grad();
        var state = model.state_dict();
        foreach (var (name, t) in state)
        {
            if (!weights.TryGetValue(name, out var w)) throw new InvalidDataException($"checkpoint lacks weight '{name}'");
            if (!w.shape.SequenceEqual(t.shape)) throw new InvalidDataException($"weight '{name}' has shape [{string.Join(",", w.shape)}], model needs [{string.Join(",", t.shape)}]");
            t.copy_(w);
        }
        var extra = weights.Keys.Except(state.Keys).ToList();
        if (extra.Count > 0) throw new InvalidDataException($"checkpoint has weights the model lacks: {string.Join(", ", extra.Take(5))}");
    }

    /// <summary>The "model.*" tensors of a checkpoint, by their state_dict names (references into the content).</summary>
    public static Dictionary<string, Tensor> ModelWeights(CheckpointContent c) =>
        c.Tensors.Where(kv => kv.Key.StartsWith("model.", StringComparison.Ordinal)).ToDictionary(kv => kv.Key["model.".Length..], kv => kv.Value);

    public void Dispose()
    {
        Optimizer.Dispose();
        Model.Dispose();
    }
}
