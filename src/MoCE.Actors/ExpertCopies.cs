using System.Collections.Concurrent;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Actors;

/// <summary>What an expert under expert-exact keeps in its node's memory, outside its actor, so that a restarted
/// instance finds it: its state at the start of step <see cref="Step"/> (weights, AdamW moments and step count: the
/// state after step Step − 1 was applied), and the log of what it received in that step since (each block's rows and
/// the gradient of each block's output, of one attempt). Restoring the state and replaying the log recomputes the
/// step's gradients exactly. The expert's own thread is the only one that touches it while the expert lives.</summary>
public sealed class ExpertCopy : IDisposable
{
    private readonly Dictionary<string, Tensor> state = [];
    private readonly List<(int block, Tensor input)> forwards = [];
    private readonly List<(int block, Tensor gradOutput)> backwards = [];

    /// <summary>The step whose start the copy holds; −1: none yet.</summary>
    public long Step { get; private set; } = -1;
    public long OptimizerSteps { get; private set; }
    /// <summary>The attempt (generation, step) the log belongs to.</summary>
    public (int generation, long step) Logged { get; private set; } = (-1, -1);
    public IReadOnlyList<(int block, Tensor input)> Forwards => forwards;
    public IReadOnlyList<(int block, Tensor gradOutput)> Backwards => backwards;
    public IReadOnlyDictionary<string, Tensor> State => state;

    /// <summary>Copies this state as the start of <paramref name="step"/> (into buffers allocated once) and clears the log.</summary>
    public void Keep(long step, IEnumerable<(string name, Tensor tensor)> tensors, long optimizerSteps)
    {
        Buffers.CopyInto(state, tensors, host: false);
        (Step, OptimizerSteps) = (step, optimizerSteps);
        ClearLog();
    }

    /// <summary>Keeps these tensors themselves as the start of <paramref name="step"/> (a peer node's copy, which arrives as
    /// new tensors: no second copy); the state they replace is disposed, and the log cleared.</summary>
    public void Take(long step, IEnumerable<(string name, Tensor tensor)> tensors, long optimizerSteps)
    {
        foreach (var t in state.Values) t.Dispose();
        state.Clear();
        foreach (var (name, t) in tensors) state[name] = t;
        (Step, OptimizerSteps) = (step, optimizerSteps);
        ClearLog();
    }

    /// <summary>The log now records this attempt: what an older attempt left goes.</summary>
    public void LogAttempt(int generation, long step)
    {
        if (Logged == (generation, step)) return;
        ClearLog();
        Logged = (generation, step);
    }

    /// <summary>The log takes these (it disposes them when cleared).</summary>
    public void LogForward(int block, Tensor input) => forwards.Add((block, input));
    public void LogBackward(int block, Tensor gradOutput) => backwards.Add((block, gradOutput));

    private void ClearLog()
    {
        foreach (var (_, t) in forwards) t.Dispose();
        foreach (var (_, t) in backwards) t.Dispose();
        forwards.Clear();
        backwards.Clear();
        Logged = (-1, -1);
    }

    public void Dispose()
    {
        ClearLog();
        foreach (var t in state.Values) t.Dispose();
        state.Clear();
        Step = -1;
    }
}

/// <summary>Copies of tensors into buffers kept for the purpose: allocated at the first copy, overwritten after.</summary>
public static class Buffers
{
    /// <summary>Copies each tensor into the buffer of its name. <paramref name="host"/>: the buffers are in host memory
    /// (pinned where the tensor is on a GPU, for a fast copy); else on the tensor's own device.</summary>
    public static void CopyInto(Dictionary<string, Tensor> buffers, IEnumerable<(string name, Tensor tensor)> tensors, bool host)
    {
        using var _ = no_grad();
        foreach (var (name, t) in tensors)
        {
            if (buffers.TryGetValue(name, out var b)) { b.copy_(t); continue; }
            var copy = host ? t.detach().cpu().clone() : t.detach().clone();
            if (host && t.device_type == DeviceType.CUDA) { var pinned = copy.pin_memory(); copy.Dispose(); copy = pinned; }
            buffers[name] = copy.DetachFromDisposeScope();
        }
    }
}

/// <summary>A node's in-memory copies (expert-exact), by run and expert: of the experts it hosts, and of the experts whose
/// peer it is (sent from their own node after each update). They outlive an expert's actor instance (a restart finds
/// its copy), and a peer's copy outlives the expert's node (the expert is placed where its copy is).</summary>
public sealed class ExpertCopies
{
    private readonly ConcurrentDictionary<(string run, int expert), ExpertCopy> copies = new();

    public ExpertCopy For(string run, int expert) => copies.GetOrAdd((run, expert), _ => new ExpertCopy());

    /// <summary>The expert stopped for good (moved, drained, its run over): its copy goes.</summary>
    public void Drop(string run, int expert)
    {
        if (copies.TryRemove((run, expert), out var c)) c.Dispose();
    }
}
