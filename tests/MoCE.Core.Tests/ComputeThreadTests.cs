using System.Runtime.InteropServices;
using MoCE.Core.Runtime;

namespace MoCE.Core.Tests;

/// <summary>The teacher prefetches at idle priority and is put back to normal priority when the trainer waits for it:
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
}
