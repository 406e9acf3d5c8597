namespace MoCE.Actors;

/// <summary>The threads the engine's compute actors run on (pinned: one each). Akka releases them shortly after the
/// actor system terminates; the engine waits for that, so that when it returns its threads, and the OpenMP pools
/// they hold, are gone (see <see cref="MoCE.Core.Runtime.ComputeThread"/>) before the next phase computes.</summary>
public sealed class EngineThreads
{
    private readonly HashSet<Thread> threads = [];

    /// <summary>Called by a compute actor from its own thread (again after a restart: the same thread).</summary>
    public void RegisterCurrent()
    {
        lock (threads) threads.Add(Thread.CurrentThread);
    }

    /// <summary>Waits until every registered thread has exited; false if one is still alive after the timeout.</summary>
    public bool JoinAll(TimeSpan timeout)
    {
        Thread[] all;
        lock (threads) all = [.. threads];
        var deadline = DateTime.UtcNow + timeout;
        foreach (var t in all)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero || !t.Join(left)) return false;
        }
        lock (threads) threads.ExceptWith(all);
        return true;
    }
}
