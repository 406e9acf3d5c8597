using MoCE.Runs.Configuration;
using MoCE.Core.Checkpoints;
using MoCE.Core.Clustering;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Evaluation;
using MoCE.Core.Model;
using MoCE.Core.Training;
using Serilog;
using TorchSharp;

namespace MoCE.Runs;

/// <summary>The products of earlier phases of a run, loaded with their provenance checked.</summary>
public static class Artifacts
{
    public static string TrainPhase(MoeMethod m) => "train-" + MoceConfig.MethodName(m);

    /// <summary>The newest verified commit of a phase, or a clear error naming the command that makes it.</summary>
    public static (CheckpointStore store, CheckpointCommit commit) LatestCommit(RunDirectory run, string phase, string makeWith, long expectedSteps)
    {
        var store = new CheckpointStore(Path.Combine(run.Root, phase, "checkpoints"));
        var commit = new CommitLog(store).LatestValid((c, e) =>
            Log.Warning("Checkpoint of step {Step} in {Phase} is unusable, falling back: {Reason}", c.Step, phase, e.Message));
        if (commit is null)
            throw new RunMismatchException($"no committed checkpoint in {store.Directory}: run `{makeWith}` on this run first");
        if (commit.Step < expectedSteps)
            Log.Warning("{Phase} is incomplete: using its checkpoint of step {Step} of {Steps}", phase, commit.Step, expectedSteps);
        return (store, commit);
    }

    /// <summary>The dense MAE that pre-training produced, with the sha256 of its checkpoint file.</summary>
    public static (CheckpointContent content, string sha256) Dense(Session s)
    {
        var (store, commit) = LatestCommit(s.Upstream, "pretrain", "moce pretrain", s.Config.Pretrain.Steps);
        var part = commit.Parts.Single(p => p.Owner == DenseTrainer.Owner);
        return (store.Load(part), part.Sha256);
    }

    public static MaskedAutoencoder DenseModel(Session s, CheckpointContent dense)
    {
        var m = new MaskedAutoencoder(s.Config.Model);
        TrainerCheckpoint.LoadModelWeights(m, dense);
        m.to(s.Device).eval();
        return m;
    }

    public static ClusteringResult Clustering(Session s, string denseSha, int trainCount)
    {
        var c = ClusteringResult.Load(Path.Combine(s.Upstream.Root, "cluster"));
        c.Check(denseSha, s.Config.Model.Dim, trainCount);
        return c;
    }

    /// <summary>Identifies a trained model: its commit's part hashes (one part for the reference engine, one per
    /// owner for the actor engine).</summary>
    public static string TrainedSha(Session s, MoeMethod method) =>
        string.Join("+", LatestCommit(s.Run, TrainPhase(method), $"moce train --method {MoceConfig.MethodName(method)}", s.Config.Train.Steps)
            .commit.Parts.OrderBy(p => p.Owner, StringComparer.Ordinal).Select(p => p.Sha256[..16]));

    /// <summary>The model trained by `moce train --method M` (its newest commit) and its checkpoint's sha256.</summary>
    public static (MaskedAutoencoder model, string sha256) Trained(Session s, MoeMethod method, int clusters)
    {
        var (store, commit) = LatestCommit(s.Run, TrainPhase(method), $"moce train --method {MoceConfig.MethodName(method)}", s.Config.Train.Steps);
        // the model is the union of the commit's parts: one for the reference engine, trainer + router + experts for the actors
        var weights = new Dictionary<string, TorchSharp.torch.Tensor>();
        foreach (var part in commit.Parts)
        {
            using var c = store.Load(part);
            foreach (var (name, t) in TrainerCheckpoint.ModelWeights(c)) weights[name] = t.clone();
        }
        var m = new MaskedAutoencoder(s.Config.Model, s.Config.Moe with { Method = method, Experts = ExpertsIn(weights.Keys, s.Config.Moe.Experts) }, clusters);
        using (TorchSharp.torch.no_grad())
            foreach (var (name, p) in m.state_dict())
                p.copy_(weights.TryGetValue(name, out var w) ? w : throw new InvalidDataException($"{TrainPhase(method)} commit {commit.Step} lacks weight '{name}'"));
        foreach (var w in weights.Values) w.Dispose();
        m.to(s.Device).eval();
        return (m, TrainedSha(s, method));
    }

    /// <summary>E of a trained model, from the weights its commit holds (blocks.B.mlp.experts.N.*), never from
    /// configuration: experts may have been added while it trained (`moce experts add`). A model without experts
    /// (dense) keeps <paramref name="configured"/>.</summary>
    public static int ExpertsIn(IEnumerable<string> weightNames, int configured)
    {
        var experts = weightNames.Select(n => System.Text.RegularExpressions.Regex.Match(n, @"\.mlp\.experts\.(\d+)\."))
            .Where(m => m.Success).Select(m => int.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture)).Distinct().ToList();
        if (experts.Count == 0) return configured;
        if (experts.Count != experts.Max() + 1)
            throw new InvalidDataException($"the commit holds experts [{string.Join(", ", experts.Order())}]: some index below {experts.Max()} is missing");
        return experts.Count;
    }
}
