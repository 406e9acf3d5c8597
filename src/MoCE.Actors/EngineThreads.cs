using TorchSharp;

namespace MoCE.Actors;

/// <summary>The threads the engine's compute actors run on (pinned: one each). Akka releases them shortly after the
/// actor system terminates; the engine waits for that, so that when it returns its threads, and the OpenMP pools
/// they hold, are gone (see <see cref="MoCE.Core.Runtime.ComputeThread"/>) before the next phase computes.
/// It also keeps each thread's TorchSharp dispose-scope statistics, to count tensors made outside any scope.</summary>
public sealed class EngineThreads
{
    private readonly Dictionary<Thread, ThreadDisposeScopeStatistics> threads = [];
    private readonly Dictionary<string, int> osIds = [];

    /// <summary>Called by a compute actor from its own thread (again after a restart: the same thread). Names the
    /// thread (moce-trainer, moce-expert-2, ...), as `top -H` and debuggers show it.</summary>
    public void RegisterCurrent(string name)
    {
        Thread.CurrentThread.Name = name;
        lock (threads)
        {
            threads[Thread.CurrentThread] = DisposeScopeManager.Statistics;
            osIds[name] = MoCE.Core.Runtime.ComputeThread.CurrentOsThreadId();
        }
    }

    /// <summary>Puts the named thread (the teacher's, which prefetches at idle priority) back to normal priority: another
    /// thread now waits for what it computes, and under load an idle-priority thread can starve for seconds.</summary>
    public void RunNormally(string name)
    {
        int id;
        lock (threads) id = osIds.GetValueOrDefault(name, -1);
        MoCE.Core.Runtime.ComputeThread.Normal(id);
    }

    /// <summary>Tensors the compute threads created while no dispose scope was open, since they started. Every
    /// tensor of a step is made inside a scope, so in steady training this number stays put; when it grows with
    /// the steps, something leaves a tensor to the finalizer (a .grad read outside a scope, say).</summary>
    public long TensorsCreatedOutsideScope
    {
        get { lock (threads) return threads.Values.Sum(s => s.TensorStatistics.CreatedOutsideScopeCount); }
    }

    /// <summary>Waits until every registered thread has exited; false if one is still alive after the timeout.</summary>
    public bool JoinAll(TimeSpan timeout)
    {
        Thread[] all;
        lock (threads) all = [.. threads.Keys];
        var deadline = DateTime.UtcNow + timeout;
        foreach (var t in all)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero || !t.Join(left)) return false;
        }
        lock (threads) foreach (var t in all) threads.Remove(t);
        return true;
    }
}
