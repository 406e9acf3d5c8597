using System.Globalization;
using MoCE.Core.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Core.Checkpoints;

/// <summary>One owner's checkpoint part: its model weights ("model.*"), its AdamW state ("optim.*"), the step, the
/// optimizer's step count, and the RNG state. Every draw of a run is derived from (seed, stream, index), so the
/// seed, recorded by the caller, is the whole RNG state; the sampler position is the step.</summary>
public static class TrainerCheckpoint
{
    public static CheckpointRef Save(ICheckpointStore store, string owner, long step, IDictionary<string, string> meta, nn.Module model, AdamW optimizer) =>
        Save(store, owner, step, meta, model.state_dict().Select(kv => (kv.Key, kv.Value)), optimizer);

    /// <summary>Saves named weights (e.g. one expert's MLPs across blocks) with their optimizer.</summary>
    public static CheckpointRef Save(ICheckpointStore store, string owner, long step, IDictionary<string, string> meta,
                                     IEnumerable<(string name, Tensor tensor)> weights, AdamW optimizer)
        => store.Save(owner, step, Meta(meta, step, optimizer.StepCount), Named(weights, optimizer));

    /// <summary>A part's metadata: the caller's, the step, the optimizer's step count and the RNG state.</summary>
    public static Dictionary<string, string> Meta(IDictionary<string, string> meta, long step, long optimizerSteps) => new(meta)
    {
        ["step"] = step.ToString(CultureInfo.InvariantCulture),
        ["optimizer_steps"] = optimizerSteps.ToString(CultureInfo.InvariantCulture),
        ["rng"] = "derived:(seed,stream,index)",
    };

    /// <summary>A part's tensors by their names in the file: "model.*" weights, then "optim.*" optimizer state.</summary>
    public static IEnumerable<(string name, Tensor tensor)> Named(IEnumerable<(string name, Tensor tensor)> weights, AdamW optimizer) =>
        weights.Select(w => ("model." + w.name, w.tensor)).Concat(optimizer.StateTensors().Select(t => ("optim." + t.name, t.tensor)));

    /// <summary>Restores weights and optimizer state; returns the step to continue from.</summary>
    public static long Restore(CheckpointContent c, nn.Module model, AdamW optimizer) =>
        Restore(c, model.state_dict(), optimizer);

    public static long Restore(CheckpointContent c, IReadOnlyDictionary<string, Tensor> weights, AdamW optimizer)
    {
        LoadWeights(weights, c);
        optimizer.LoadState(c.Tensors.Where(kv => kv.Key.StartsWith("optim.", StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key["optim.".Length..], kv => kv.Value), long.Parse(c["optimizer_steps"], CultureInfo.InvariantCulture));
        return long.Parse(c["step"], CultureInfo.InvariantCulture);
    }

    /// <summary>Copies the "model.*" tensors of a checkpoint into a model; names and shapes must all match.</summary>
    public static void LoadModelWeights(nn.Module model, CheckpointContent c) => LoadWeights(model.state_dict(), c);

    /// <summary>Copies the "model.*" tensors of a checkpoint into named tensors; names and shapes must all match.</summary>
    public static void LoadWeights(IReadOnlyDictionary<string, Tensor> state, CheckpointContent c)
    {
        var weights = ModelWeights(c);
        using var _ = no_grad();
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
}
