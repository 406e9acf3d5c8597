using System.Runtime.InteropServices;

namespace MoCE.Core.Runtime;

/// <summary>The calling thread's CPU time, user and system (clock_gettime with CLOCK_THREAD_CPUTIME_ID): what a piece of
/// background work took from the cores, as against its wall time, which also holds its waits for the disk. Zero where
/// that clock is not available (not Linux).</summary>
public static class ThreadCpuTime
{
    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec { public long Seconds; public long Nanoseconds; }

    [DllImport("libc", EntryPoint = "clock_gettime")]
    private static extern int ClockGetTime(int clock, out Timespec time);

    private const int ThreadCpuClock = 3;                                   // CLOCK_THREAD_CPUTIME_ID

    public static TimeSpan Now()
    {
        if (!OperatingSystem.IsLinux() || ClockGetTime(ThreadCpuClock, out var t) != 0) return TimeSpan.Zero;
        return TimeSpan.FromTicks(t.Seconds * TimeSpan.TicksPerSecond + t.Nanoseconds / 100);
    }

    /// <summary>Runs <paramref name="work"/> on this thread and adds the CPU time it took to <paramref name="spent"/>.</summary>
    public static T Measure<T>(Func<T> work, Action<TimeSpan> spent)
    {
        var start = Now();
        try { return work(); }
        finally { spent(Now() - start); }
    }
}
