using System.Globalization;
using System.Text.Json;
using MoCE.Core.Checkpoints;
using MoCE.Core.Clustering;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Model;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MoCE.Core.Training;

/// <summary>Routing of one MoE layer in one step, for experts.csv.</summary>
public sealed record ExpertStat(int Block, int Expert, long Tokens, double LossShare, double GateEntropy);

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
    private readonly DataConfig dataCfg;
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

    public MoceTrainer(MaeConfig modelCfg, MoeConfig moe, TrainConfig cfg, DataConfig dataCfg, ImageDataset data,
                       ClusteringResult clustering, CheckpointContent dense, string denseSha256, Device? device = null)
    {
        this.modelCfg = modelCfg.Validate();
        this.moe = moe.Validate(modelCfg.Depth);
        this.cfg = cfg;
        this.dataCfg = dataCfg;
        this.data = data;
        this.device = device ?? CPU;
        denseSha = denseSha256;
        clustering.Check(denseSha256, modelCfg.Dim, data.Count);
        clusterIds = clustering.TrainIds;

        Model = new MaskedAutoencoder(modelCfg, moe, clustering.K);
        using (var gen = Seeds.Generator(cfg.Seed, Seeds.Stream.Upcycle, 0)) Model.UpcycleFrom(TrainerCheckpoint.ModelWeights(dense), gen);
        Model.to(this.device).train();
        if (moe.Method != MoeMethod.Dense && moe.LambdaDistill > 0)
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

    public StepStats TrainStep()
    {
        long step = NextStep;
        using var scope = NewDisposeScope();
        var batch = Sampler.Batch(step);
        var imgs = data.Batch(batch, dataCfg.Mean, dataCfg.Std).to(device);
        using var maskGen = Seeds.Generator(cfg.Seed, Seeds.Stream.Mask, step);
        var noise = Model.MaskNoise(cfg.BatchSize, maskGen, device);
        using var gateGen = Seeds.Generator(cfg.Seed, Seeds.Stream.Gate, step);
        var gate = new GateInput(tensor(ClusterIdsOf(batch)).to(device), gateGen);

        using var o = Model.Forward(imgs, noise, gate);
        var loss = o.Loss;
        if (Teacher is not null)
        {
            Tensor target;
            using (no_grad()) target = Teacher.ForwardEncoder(imgs, noise).latent;
            loss = loss + moe.LambdaDistill * Distill(o.Latent, target);
        }
        if (o.Routes.Count > 0)
        {
            var aux = stack(o.Routes.Select(r => r.Aux).ToArray()).sum();
            loss = loss + (moe.Method == MoeMethod.TokenMoe ? moe.LambdaBalance : moe.LambdaRoute) * aux;
        }
        Optimizer.ZeroGrad();
        loss.backward();
        double norm = Math.Sqrt(Optimizer.SquaredGradNorm());
        double lr = LrSchedule.At(step, cfg);
        Optimizer.Step(lr, AdamW.ClipScale(norm, cfg.ClipGrad));
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

    /// <summary>Tokens routed to each expert (by top-1), its share of the masked-patch loss, and the layer's mean
    /// gate entropy. A TokenMoE row is a token and carries 1/T of its image's loss.</summary>
    private IReadOnlyList<ExpertStat> Routing(MaeOutput o)
    {
        var stats = new List<ExpertStat>();
        var perImage = o.PerImage.detach().to_type(ScalarType.Float64).cpu().data<double>().ToArray();
        double total = perImage.Sum();
        foreach (var r in o.Routes)
        {
            var top1 = r.Choice[.., 0].cpu().data<long>().ToArray();
            var probs = r.Probs.detach();
            double entropy = (-(probs * probs.clamp_min(1e-12).log()).sum(1)).mean().item<float>();
            long rowsPerImage = top1.Length / perImage.Length;
            var tokens = new long[moe.Experts];
            var loss = new double[moe.Experts];
            for (int i = 0; i < top1.Length; i++)
            {
                tokens[top1[i]] += r.TokensPerRow;
                loss[top1[i]] += perImage[i / rowsPerImage] / rowsPerImage;
            }
            for (int e = 0; e < moe.Experts; e++)
                stats.Add(new ExpertStat(r.Block, e, tokens[e], total > 0 ? loss[e] / total : 0, entropy));
        }
        return stats;
    }

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

    public void Restore(CheckpointCommit commit, CheckpointStore store)
    {
        var part = commit.Parts.Single(p => p.Owner == Owner);
        using var c = store.Load(part);
        if (c["moe_config"] != JsonSerializer.Serialize(moe) || c["model_config"] != JsonSerializer.Serialize(modelCfg))
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
