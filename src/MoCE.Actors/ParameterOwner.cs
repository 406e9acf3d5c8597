using MoCE.Actors.Messages;
using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Core.Runtime;
using MoCE.Core.Training;
using TorchSharp;
using static TorchSharp.torch;
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

    private IEnumerable<(string name, torch.Tensor tensor)> Weights => Parameters.Select(kv => (kv.Key, (torch.Tensor)kv.Value));

    public double SquaredGradNorm() => Optimizer.SquaredGradNorm();

    public void Apply(double lr, double clipScale)
    {
        Optimizer.Step(lr, clipScale);
        Optimizer.ZeroGrad();
    }

    private readonly Dictionary<string, torch.Tensor> cutBuffer = [];            // host memory kept for the cuts (pinned with a GPU)
    private Task persisting = Task.CompletedTask;
    private static long cuts;                                                    // across instances: a restarted owner's is newer

    /// <summary>The cut this owner took last (process-wide numbers: a restarted instance's are newer than its old ones').</summary>
    public long LastCut { get; private set; }

    /// <summary>An asynchronous cut's part after step <paramref name="step"/>. The only blocking work, on the caller's
    /// thread: wait for this owner's previous persist (at most one in flight), then copy the weights and optimizer state
    /// into a buffer kept for the purpose. The returned task writes that copy (serialise, hash, fsync, rename) in the
    /// background while training goes on; the buffer is not touched until it ends.</summary>
    public (long cut, Task<CheckpointRef> persist) BeginSave(long step, IDictionary<string, string> meta, TimeSpan slower = default)
    {
        Drain();
        Buffers.CopyInto(cutBuffer, TrainerCheckpoint.Named(Weights, Optimizer), host: true);
        var all = TrainerCheckpoint.Meta(meta, step, Optimizer.StepCount);
        var tensors = cutBuffer.Select(kv => (kv.Key, kv.Value)).ToList();
        LastCut = Interlocked.Increment(ref cuts);
        var persist = Task.Run(async () =>
        {
            if (slower > TimeSpan.Zero) await Task.Delay(slower);               // chaos: a slow disk
            return ThreadCpuTime.Measure(() => store.Save(Name, step, all, tensors), NodeMetrics.CutBackgroundCpu);
        });
        persisting = persist;
        return (LastCut, persist);
    }

    /// <summary>Waits for a persist in flight (its outcome is the cut's business, not this wait's).</summary>
    private void Drain()
    {
        try { persisting.Wait(); } catch (AggregateException) { }
    }

    public void Dispose()
    {
        Drain();                                                                 // a background write still reads the buffer
        foreach (var t in cutBuffer.Values) t.Dispose();
        cutBuffer.Clear();
        Optimizer.Dispose();
    }

    public long Restore(CheckpointRef r)
    {
        using var c = store.Load(r);
        Optimizer.ZeroGrad();
        return TrainerCheckpoint.Restore(c, Parameters.ToDictionary(kv => kv.Key, kv => (torch.Tensor)kv.Value), Optimizer);
    }

    /// <summary>Copies the weights and optimizer state into <paramref name="copy"/> as the start of <paramref name="step"/>.</summary>
    public void KeepCopy(ExpertCopy copy, long step)
    {
        long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
        copy.Keep(step, Weights.Concat(Optimizer.StateTensors()), Optimizer.StepCount);
        NodeMetrics.ExpertCopySeconds.WithLabels(Name).Inc(System.Diagnostics.Stopwatch.GetElapsedTime(t0).TotalSeconds);
    }

    /// <summary>Puts back the state of <paramref name="copy"/> (no gradients).</summary>
    public void RestoreCopy(ExpertCopy copy)
    {
        Optimizer.ZeroGrad();
        using (torch.no_grad())
            foreach (var (name, p) in Parameters) p.copy_(copy.State[name]);
        Optimizer.LoadState(copy.State, copy.OptimizerSteps);
    }

}

/// <summary>Local to an owner: the background write of its part of a cut ended (piped to itself). Cut: the owner's
/// number of that cut; Ref null: the write failed with Error.</summary>
public sealed record PartPersisted(long Step, int Generation, long Cut, CheckpointRef? Ref, string Error, Akka.Actor.IActorRef ReplyTo);

/// <summary>An owner's half of an asynchronous cut, the same for the trainer, the router and every expert.</summary>
public static class CutParts
{
    /// <summary>Copies the part (blocking), tells the asker it is taken, writes it in the background and pipes the
    /// outcome back to the owner.</summary>
    public static void Begin(ParameterOwner owner, Checkpoint m, IDictionary<string, string> meta, Akka.Actor.IActorRef self, Akka.Actor.IActorRef asker, ChaosPlan chaos)
    {
        var (cut, persist) = owner.BeginSave(m.Step, meta, chaos.PersistDelay(owner.Name, m.Step));
        asker.Tell(new CheckpointTaken(m.Step, m.Generation, owner.Name), self);
        persist.ContinueWith((Task<CheckpointRef> t) => self.Tell(new PartPersisted(m.Step, m.Generation, cut, t.IsCompletedSuccessfully ? t.Result : null,
            t.Exception?.GetBaseException().Message ?? "", asker), Akka.Actor.ActorRefs.NoSender), TaskScheduler.Default);
    }

    /// <summary>The outcome, on the owner's thread: null when stale (the owner has taken a newer cut since); an error
    /// in the checkpoint phase when the write failed (the owner then fails, and the cut with it).</summary>
    public static CheckpointRef? Persisted(ParameterOwner owner, PartPersisted p) =>
        p.Cut < owner.LastCut ? null
        : p.Ref ?? throw new StepPhaseException(StepPhase.Checkpoint, p.Step, new IOException($"{owner.Name} could not write its part of the cut after step {p.Step}: {p.Error}"));
}
