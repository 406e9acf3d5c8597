namespace MoCE.Core.Runtime;

/// <summary>Keeps native memory bounded between the garbage collector's own collections.
///
/// Why: every tensor of a step is disposed by its dispose scope, but TorchSharp also allocates native objects the
/// scopes do not track, such as the <c>Scalar</c> made for each numeric argument of an op (<c>x.mul_(0.9)</c>).
/// Only their finalizers free them, and the collector sees just their small managed wrappers, so it does not
/// hurry: its young-generation budget scales with the CPU's cache, and on a machine that reports a 260 MB L3 a
/// small model ran 300 steps, with resident memory climbing 0.4 MB a step, before its first collection. A gen-1
/// collection every N steps (<c>collect-every</c>) keeps the plateau low and reaches it early; docs/BENCHMARKS.md
/// gives its cost. Every trainer (the reference ones and the actor engine's) calls it at the end of a step, when
/// the step's own tensors are already gone.</summary>
public static class NativeMemory
{
    /// <summary>After step <paramref name="step"/> (0-based): collects generations 0 and 1 when step + 1 is a
    /// multiple of <paramref name="every"/>. Finalizers then run on the finalizer thread; nothing waits for them.</summary>
    public static void AfterStep(long step, long every)
    {
        if (every > 0 && (step + 1) % every == 0) GC.Collect(1, GCCollectionMode.Forced, blocking: true);
    }
}
