using System.Globalization;
using System.Text.Json;
using MoCE.Core.Checkpoints;
using MoCE.Core.Clustering;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Model;
using MoCE.Core.Runtime;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MoCE.Core.Training;

/// <summary>Routing of one MoE layer in one step, for experts.csv.</summary>
public sealed record ExpertStat(int Block, int Expert, long Tokens, double LossShare, double GateEntropy)
{
    /// <summary>" | block 1: 40/35/15/10% H=0.52": one step's token shares per expert and the gate entropy, per block.</summary>
    public static string Summary(IReadOnlyList<ExpertStat> routing) => string.Concat(routing.GroupBy(r => r.Block).Select(g =>
    {
        double total = Math.Max(1, g.Sum(r => r.Tokens));
        return $" | block {g.Key}: {string.Join("/", g.Select(r => (100 * r.Tokens / total).ToString("F0")))}% H={g.First().GateEntropy:F2}";
    }));

    /// <summary>Tokens routed to each expert (by top-1), its share of the masked-patch loss, and the layer's mean
    /// gate entropy. A TokenMoE row is a token and carries 1/T of its image's loss.</summary>
    public static IReadOnlyList<ExpertStat> From(IEnumerable<RouteStats> routes, Tensor perImageLoss, int experts)
    {
        var stats = new List<ExpertStat>();
        var perImage = perImageLoss.detach().to_type(ScalarType.Float64).cpu().data<double>().ToArray();
        double total = perImage.Sum();
        foreach (var r in routes)
        {
            var top1 = r.Choice[.., 0].cpu().data<long>().ToArray();
            var probs = r.Probs.detach();
            double entropy = (-(probs * probs.clamp_min(Runtime.Scalars.Of(1e-12)).log()).sum(1)).mean().item<float>();
            long rowsPerImage = top1.Length / perImage.Length;
            var tokens = new long[experts];
            var loss = new double[experts];
            for (int i = 0; i < top1.Length; i++)
            {
                tokens[top1[i]] += r.TokensPerRow;
                loss[top1[i]] += perImage[i / rowsPerImage] / rowsPerImage;
            }
            for (int e = 0; e < experts; e++)
                stats.Add(new ExpertStat(r.Block, e, tokens[e], total > 0 ? loss[e] / total : 0, entropy));
        }
        return stats;
    }
}

/// <summary>The single-process reference MoCE trainer (also TokenMoE and dense-continued): starts from a dense
/// MAE checkpoint and its clustering, upcycles the configured blocks into experts, and trains with
/// loss = MAE + λ_distill·distill + λ_route·Σ_l routing_l (MoCE) or + λ_balance·Σ_l balance_l (TokenMoE).
/// Step s is a pure function of (seed, s) and the state after s−1: batch, mask noise and gate noise.</summary>
public sealed class MoceTrainer : ITrainer, IRoutingMetrics, IDisposable
{
    public const string Owner = "trainer";

    private readonly MaeConfig modelCfg;
    private readonly MoeConfig moe;
    private readonly TrainConfig cfg;
    private readonly ImageDataset data;
    private readonly long[] clusterIds;
    private readonly string denseSha;
    private readonly Device device;

    public MaskedAutoencoder Model { get; }
    /// <summary>The frozen dense teacher; null when distillation is off.</summary>
    public MaskedAutoencoder? Teacher { get; }
    public AdamW Optimizer { get; }
    public EpochSampler Sampler { get; }
    public long NextStep { get; private set; }
    /// <summary>Per-expert routing of the last step.</summary>
    public IReadOnlyList<ExpertStat> LastRouting { get; private set; } = [];

    public MoceTrainer(MaeConfig modelCfg, MoeConfig moe, TrainConfig cfg, ImageDataset data,
                       ClusteringResult clustering, CheckpointContent dense, string denseSha256, Device? device = null)
    {
        this.modelCfg = modelCfg.Validate();
        this.moe = moe.Validate(modelCfg.Depth);
        this.cfg = cfg;
        this.data = data;
        this.device = device ?? CPU;
        denseSha = denseSha256;
        clustering.Check(denseSha256, modelCfg.Dim, data.Count);
        clusterIds = clustering.TrainIds;

        Model = InitialModel(modelCfg, moe, clustering.K, TrainerCheckpoint.ModelWeights(dense), cfg.Seed, clustering.Centroids);
        Model.to(this.device).train();
        if ((moe.Method != MoeMethod.Dense || moe.DistillDense) && moe.LambdaDistill > 0)
        {
            Teacher = new MaskedAutoencoder(modelCfg);
            TrainerCheckpoint.LoadModelWeights(Teacher, dense);
            Teacher.to(this.device).eval();
            foreach (var p in Teacher.parameters()) p.requires_grad = false;
        }
        Optimizer = new AdamW(Model.named_parameters(), cfg);
        Sampler = new EpochSampler(data.Count, cfg.BatchSize, cfg.Seed);
    }

    public long[] ClusterIdsOf(ReadOnlySpan<int> indices)
    {
        var ids = new long[indices.Length];
        for (int i = 0; i < ids.Length; i++) ids[i] = clusterIds[indices[i]];
        return ids;
    }

    /// <summary>The model at step 0: the dense weights, with each MoE block upcycled from its dense MLP using noise
    /// from (seed, "upcycle"); with moe.gate-init = centroids, every MoCE gate starts from the clustering's
    /// <paramref name="centroids"/> (<see cref="MoeGate.InitializeFromCentroids"/>). Every engine starts from exactly
    /// this state.</summary>
    public static MaskedAutoencoder InitialModel(MaeConfig modelCfg, MoeConfig moe, int clusters, IReadOnlyDictionary<string, Tensor> dense, long seed,
                                                 Tensor? centroids = null)
    {
        var m = new MaskedAutoencoder(modelCfg, moe, clusters);
        using var gen = Seeds.Generator(seed, Seeds.Stream.Upcycle, 0);
        m.UpcycleFrom(dense, gen);
        if (moe.GateFromCentroids && moe.Method == MoeMethod.Moce)
        {
            if (centroids is null) throw new ArgumentException("moce.moe.gate-init = centroids needs the clustering's centroids");
            var groups = MoeGate.GroupCentroids(centroids, moe.Experts);
            foreach (var layer in m.MoeLayers.Values) layer.Gate.InitializeFromCentroids(centroids, groups);
        }
        return m;
    }

    /// <summary>The inputs of step s, identical on every replay and in every engine: the batch's images, mask
    /// noise, and the gate input (cluster ids and this step's gate noise).</summary>
    public static (Tensor imgs, Tensor noise, GateInput gate) StepInputs(long step, EpochSampler sampler, ImageDataset data,
                                                                        long[] clusterIds, MaskedAutoencoder model, long seed, Device device)
    {
        var batch = sampler.Batch(step);
        var imgs = data.TrainBatch(batch, step, seed).to(device);
        data.Prefetch(sampler.Batch(step + 1), step + 1, seed);      // decoded while this step computes
        using var maskGen = Seeds.Generator(seed, Seeds.Stream.Mask, step);
        var noise = model.MaskNoise(batch.Length, maskGen, device);
        var ids = new long[batch.Length];
        for (int i = 0; i < ids.Length; i++) ids[i] = clusterIds[batch[i]];
        return (imgs, noise, new GateInput(tensor(ids).to(device), new GateNoise(seed, step)));
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
        var (imgs, noise, gate) = StepInputs(step, Sampler, data, clusterIds, Model, cfg.Seed, device);

        using var o = Model.Forward(imgs, noise, gate);
        var loss = o.Loss;
        if (Teacher is not null)
        {
            Tensor target;
            using (no_grad()) target = Teacher.ForwardEncoder(imgs, noise).latent;
            loss = loss.Plus(Runtime.Scalars.Of(moe.LambdaDistill) * Distill(o.Latent, target));
        }
        if (o.Routes.Count > 0)
        {
            var aux = stack(o.Routes.Select(r => r.Aux).ToArray()).sum();
            loss = loss.Plus(Runtime.Scalars.Of(moe.Method == MoeMethod.TokenMoe ? moe.LambdaBalance : moe.LambdaRoute) * aux);
        }
        Optimizer.ZeroGrad();
        loss.backward();
        double norm = Math.Sqrt(Optimizer.SquaredGradNorm());
        double lr = LrSchedule.At(step, cfg);
        Optimizer.Step(lr, AdamW.ClipScale(step, norm, cfg.ClipGrad));
        LastRouting = Routing(o);
        NextStep = step + 1;
        return new StepStats(step, o.Loss.item<float>(), lr, norm, cfg.BatchSize);
    }

    /// <summary>distill = MSE(LN(student), LN(teacher)) over the visible patch tokens (class token excluded),
    /// LN without affine parameters.</summary>
    public static Tensor Distill(Tensor student, Tensor teacher)
    {
        long d = student.shape[2];
        var s = F.layer_norm(student[.., 1..], new[] { d });
        var t = F.layer_norm(teacher[.., 1..], new[] { d });
        return F.mse_loss(s, t);
    }

    private IReadOnlyList<ExpertStat> Routing(MaeOutput o) => ExpertStat.From(o.Routes, o.PerImage, moe.Experts);

    public IReadOnlyList<CheckpointRef> SaveCheckpoint(CheckpointStore store)
    {
        var meta = new Dictionary<string, string>
        {
            ["kind"] = "moe-mae",
            ["method"] = moe.Method.ToString(),
            ["seed"] = cfg.Seed.ToString(CultureInfo.InvariantCulture),
            ["sampler_epoch"] = Sampler.EpochOf(NextStep).ToString(CultureInfo.InvariantCulture),
            ["dense_sha256"] = denseSha,
            ["model_config"] = JsonSerializer.Serialize(modelCfg),
            ["moe_config"] = JsonSerializer.Serialize(moe),
        };
        return [TrainerCheckpoint.Save(store, Owner, NextStep, meta, Model, Optimizer)];
    }

    /// <summary>The recorded config read back into its type, so a setting added since (absent from the record) takes its
    /// default, which by rule is the behaviour before it existed; then compared as written.</summary>
    public static bool SameConfig<T>(string recorded, T now) =>
        JsonSerializer.Serialize(JsonSerializer.Deserialize<T>(recorded)) == JsonSerializer.Serialize(now);

    public void Restore(CheckpointCommit commit, CheckpointStore store)
    {
        var part = commit.Parts.Single(p => p.Owner == Owner);
        using var c = store.Load(part);
        if (!SameConfig(c["moe_config"], moe) || !SameConfig(c["model_config"], modelCfg))
            throw new RunMismatchException($"checkpoint {part.File} was trained with a different model or MoE config ({c["moe_config"]})");
        if (c["dense_sha256"] != denseSha)
            throw new RunMismatchException($"checkpoint {part.File} started from dense checkpoint {c["dense_sha256"][..16]}…, this run from {denseSha[..16]}…");
        NextStep = TrainerCheckpoint.Restore(c, Model, Optimizer);
    }

    public void Dispose()
    {
        Optimizer.Dispose();
        Teacher?.Dispose();
        Model.Dispose();
    }
}
