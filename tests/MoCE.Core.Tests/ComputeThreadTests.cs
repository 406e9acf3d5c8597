using System.Runtime.InteropServices;
using MoCE.Core.Runtime;

namespace MoCE.Core.Tests;

/// <summary>The teacher prefetches at idle priority and is put back to normal priority when the trainer waits for it:
/// another thread can do that by the kernel's thread id.</summary>
public class ComputeThreadTests
{
    [DllImport("libc")] private static extern int sched_getscheduler(int pid);

    [Fact]
    public void A_thread_moved_to_idle_priority_is_put_back_to_normal_by_another_thread()
    {
        if (!OperatingSystem.IsLinux()) return;
        int tid = 0, policy = -1;
        using var idle = new ManualResetEventSlim();
        using var checkedBack = new ManualResetEventSlim();
        var t = new Thread(() =>
        {
            tid = ComputeThread.CurrentOsThreadId();
            Assert.True(ComputeThread.OnlyWhenIdle());
            idle.Set();
            checkedBack.Wait(TimeSpan.FromSeconds(10));
        });
        t.Start();
        Assert.True(idle.Wait(TimeSpan.FromSeconds(10)));
        Assert.Equal(5, sched_getscheduler(tid));                                   // SCHED_IDLE
        Assert.True(ComputeThread.Normal(tid));
        policy = sched_getscheduler(tid);
        checkedBack.Set();
        Assert.True(t.Join(TimeSpan.FromSeconds(10)));
        Assert.Equal(0, policy);                                                    // SCHED_OTHER
    }
}
