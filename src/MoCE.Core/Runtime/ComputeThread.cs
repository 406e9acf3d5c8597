using System.Runtime.ExceptionServices;
using TorchSharp;

namespace MoCE.Core.Runtime;

/// <summary>Runs a piece of torch work on a fresh thread that exits when the work is done.
///
/// Why: libtorch's CPU kernels run on OpenMP (libgomp). The first parallel region a thread enters gives that
/// thread a pool of worker threads, which lives until the thread exits. When the pooled workers of all threads
/// outnumber the cores, libgomp stops spinning at its barriers (GOMP_SPINCOUNT drops to 100) and every parallel
/// region ends in futex sleeps and wake-ups: a small model's step, thousands of short kernels, slows by a third.
/// So the process keeps exactly one pool per compute thread that is actually computing: each phase runs here, and
/// its pool goes away with the thread.</summary>
public static class ComputeThread
{
    /// <summary>Runs <paramref name="body"/> on a new thread with <paramref name="threads"/> torch intra-op threads
    /// (0 keeps torch's setting), waits for it, and rethrows its exception, if any, with the original stack.</summary>
    public static T Run<T>(string name, int threads, Func<T> body)
    {
        T result = default!;
        ExceptionDispatchInfo? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                UseThreads(threads);
                result = body();
            }
            catch (Exception e) { error = ExceptionDispatchInfo.Capture(e); }
        }, maxStackSize: 16 << 20) { Name = name };
        thread.Start();
        thread.Join();
        error?.Throw();
        return result;
    }

    public static void Run(string name, int threads, Action body) => Run(name, threads, () => { body(); return 0; });

    /// <summary>Sets this thread's torch intra-op threads (OpenMP and MKL are both per-thread settings). Torch
    /// initializes a thread's count lazily from the last value set by any thread, at its first parallel kernel;
    /// reading the count first forces that, so the value set here is the one that sticks.</summary>
    public static void UseThreads(int threads)
    {
        if (threads <= 0) return;
        torch.get_num_threads();
        torch.set_num_threads(threads);
    }

    /// <summary>Linux: moves the calling thread to SCHED_IDLE, so it only runs on a core that no normal thread wants.
    /// Work that can wait (a prefetch) then fills the gaps of the critical path instead of competing with it.
    /// Returns false where that is not possible (another OS, or the call refused), and also where the move could not be
    /// undone (<see cref="CanLeaveIdle"/>): a thread left at idle priority starves on a busy machine while the trainer
    /// waits for it.</summary>
    public static bool OnlyWhenIdle()
    {
        if (!OperatingSystem.IsLinux() || !CanLeaveIdle()) return false;
        var param = new SchedParam();
        return sched_setscheduler(0, SchedIdle, ref param) == 0;        // pid 0: the calling thread
    }

    /// <summary>Linux: moves thread <paramref name="osThreadId"/> (of this process) back to SCHED_OTHER, so it competes
    /// for cores like any other: work another thread now waits for must not starve under load. False where not possible.</summary>
    public static bool Normal(int osThreadId)
    {
        if (!OperatingSystem.IsLinux() || osThreadId <= 0) return false;
        var param = new SchedParam();
        return sched_setscheduler(osThreadId, SchedOther, ref param) == 0;
    }

    /// <summary>Linux: whether a thread of this process can be moved back from SCHED_IDLE to SCHED_OTHER
    /// (<see cref="Normal"/>). Root can (CAP_SYS_NICE); an unprivileged process only when its RLIMIT_NICE allows the
    /// thread's nice value (sched(7)): 20 − limit ≤ nice. Debian's default limit is 0, so an ordinary user cannot.</summary>
    public static bool CanLeaveIdle()
    {
        if (!OperatingSystem.IsLinux()) return false;
        if (geteuid() == 0) return true;
        if (getrlimit(RlimitNice, out var limit) != 0) return false;
        int nice = getpriority(PrioProcess, 0);                                    // the calling thread's (Linux)
        return limit.Current >= (ulong)(20 - nice);
    }

    /// <summary>The calling thread's kernel id (Linux), for <see cref="Normal"/>; −1 elsewhere.</summary>
    public static int CurrentOsThreadId() => OperatingSystem.IsLinux() ? gettid() : -1;

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern int gettid();

    private const int SchedOther = 0;
    private const int SchedIdle = 5;

    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
    private struct SchedParam { public int Priority; }

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int sched_setscheduler(int pid, int policy, ref SchedParam param);

    private const int RlimitNice = 13;
    private const int PrioProcess = 0;

    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
    private struct RLimit { public ulong Current; public ulong Max; }

    [System.Runtime.InteropServices.DllImport("libc")]
    private static extern uint geteuid();

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int getrlimit(int resource, out RLimit limit);

    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int getpriority(int which, int who);
}
