using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Core.Training;
using TorchSharp;
using Parameter = TorchSharp.Modules.Parameter;

namespace MoCE.Actors;

/// <summary>What every owner actor holds: named parameters, their AdamW, and checkpoint save/restore. Parameter
/// names are the full model's state_dict names (e.g. blocks.1.mlp.experts.2.fc1.weight), so an owner's checkpoint
/// compares key by key with the reference trainer's.</summary>
public sealed class ParameterOwner : IDisposable
{
    public string Name { get; }
    public IReadOnlyDictionary<string, Parameter> Parameters { get; }
    public AdamW Optimizer { get; }
    private readonly ICheckpointStore store;

    public ParameterOwner(string name, IReadOnlyDictionary<string, Parameter> parameters, TrainConfig train, ICheckpointStore store)
    {
        Name = name;
        Parameters = parameters;
        Optimizer = new AdamW(parameters.Select(kv => (kv.Key, kv.Value)), train);
        this.store = store;
    }

    /// <summary>Copies this owner's initial weights out of the full model's state (by name).</summary>
    public void LoadInitial(IReadOnlyDictionary<string, torch.Tensor> initial)
    {
        using var _ = torch.no_grad();
        foreach (var (name, p) in Parameters)
            p.copy_(initial.TryGetValue(name, out var w) ? w : throw new InvalidDataException($"initial state lacks '{name}'"));
    }

    public double SquaredGradNorm() => Optimizer.SquaredGradNorm();

    public void Apply(double lr, double clipScale)
    {
        Optimizer.Step(lr, clipScale);
        Optimizer.ZeroGrad();
    }

    public CheckpointRef Save(long step, IDictionary<string, string> meta) =>
        TrainerCheckpoint.Save(store, Name, step, meta, Parameters.Select(kv => (kv.Key, (torch.Tensor)kv.Value)), Optimizer);

    public long Restore(CheckpointRef r)
    {
        using var c = store.Load(r);
        Optimizer.ZeroGrad();
        return TrainerCheckpoint.Restore(c, Parameters.ToDictionary(kv => kv.Key, kv => (torch.Tensor)kv.Value), Optimizer);
    }

    /// <summary>Copies the weights and optimizer state into <paramref name="copy"/> as the start of <paramref name="step"/>.</summary>
    public void KeepCopy(ExpertCopy copy, long step) =>
        copy.Keep(step, Parameters.Select(kv => (kv.Key, (torch.Tensor)kv.Value)).Concat(Optimizer.StateTensors()), Optimizer.StepCount);

    /// <summary>Puts back the state of <paramref name="copy"/> (no gradients).</summary>
    public void RestoreCopy(ExpertCopy copy)
    {
        Optimizer.ZeroGrad();
        using (torch.no_grad())
            foreach (var (name, p) in Parameters) p.copy_(copy.State[name]);
        Optimizer.LoadState(copy.State, copy.OptimizerSteps);
    }

    public void Dispose() => Optimizer.Dispose();
}
