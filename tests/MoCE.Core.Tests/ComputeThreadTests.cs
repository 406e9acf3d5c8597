using System.Runtime.InteropServices;
using MoCE.Core.Runtime;

namespace MoCE.Core.Tests;

/// <summary>Thread priority and CPU time. The teacher prefetches at idle priority and is put back to normal priority when the trainer waits for it:
/// another thread can do that by the kernel's thread id. Where the process may not raise a thread's priority again (an
/// ordinary user under Debian's RLIMIT_NICE of 0), the thread is never moved to idle priority at all.</summary>
public class ComputeThreadTests
{
    [DllImport("libc")] private static extern int sched_getscheduler(int pid);

    [Fact]
    public void A_thread_moved_to_idle_priority_is_put_back_to_normal_by_another_thread()
    {
        if (!OperatingSystem.IsLinux()) return;
        int tid = 0, policy = -1;
        bool moved = false;
        using var idle = new ManualResetEventSlim();
        using var checkedBack = new ManualResetEventSlim();
        var t = new Thread(() =>
        {
            tid = ComputeThread.CurrentOsThreadId();
            moved = ComputeThread.OnlyWhenIdle();
            idle.Set();
            checkedBack.Wait(TimeSpan.FromSeconds(10));
        });
        t.Start();
        Assert.True(idle.Wait(TimeSpan.FromSeconds(10)));
        if (!ComputeThread.CanLeaveIdle())
        {
            Assert.False(moved);                                                    // it could never come back: it stays
            Assert.Equal(0, sched_getscheduler(tid));                               // SCHED_OTHER
            checkedBack.Set();
            Assert.True(t.Join(TimeSpan.FromSeconds(10)));
            return;
        }
        Assert.True(moved);
        Assert.Equal(5, sched_getscheduler(tid));                                   // SCHED_IDLE
        Assert.True(ComputeThread.Normal(tid));
        policy = sched_getscheduler(tid);
        checkedBack.Set();
        Assert.True(t.Join(TimeSpan.FromSeconds(10)));
        Assert.Equal(0, policy);                                                    // SCHED_OTHER
    }

    /// <summary>The thread CPU clock that asynchronous commits are charged by counts work and not waiting: a sleep costs
    /// (almost) nothing, and spinning advances it. A clock that returned zero, or wall time, fails one of the two.</summary>
    [Fact]
    public void Thread_cpu_time_counts_work_on_this_thread_and_not_sleep()
    {
        if (!OperatingSystem.IsLinux()) return;
        var slept = TimeSpan.Zero;
        ThreadCpuTime.Measure(() => { Thread.Sleep(300); return 0; }, t => slept = t);
        Assert.True(slept < TimeSpan.FromMilliseconds(100), $"a 300 ms sleep took {slept.TotalMilliseconds:F1} ms of CPU");

        var start = ThreadCpuTime.Now();
        var wall = System.Diagnostics.Stopwatch.StartNew();
        double x = 0;
        while (ThreadCpuTime.Now() - start < TimeSpan.FromMilliseconds(50))
        {
            for (int i = 0; i < 10_000; i++) x += Math.Sqrt(i);
            Assert.True(wall.Elapsed < TimeSpan.FromSeconds(30), "30 s of spinning did not advance the thread's CPU clock by 50 ms");
        }
        Assert.True(x > 0);
    }
}

