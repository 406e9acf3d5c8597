using MoCE.Actors;
using MoCE.Actors.Messages;
using MoCE.Core.Checkpoints;

namespace MoCE.Actors.Tests;

/// <summary>The supervisor's journaled state, driven with events, without actors.</summary>
public class SupervisorStateTests
{
    private static CheckpointCommitted Commit(long step, int experts = 1) =>
        new(step, new[] { "trainer", "router" }.Concat(Enumerable.Range(0, experts).Select(e => $"expert-{e}"))
            .Select(o => new CheckpointRef(o, step, $"{o}-{step:D8}.ckpt", "sha")).ToArray());

    [Fact]
    public void Restore_picks_the_newest_commit_that_verifies_and_names_the_ones_it_skips()
    {
        var s = new SupervisorState(1);
        foreach (var c in new[] { Commit(0), Commit(10), Commit(20) }) s.Apply(c);
        s.Apply(new RecoveryRecord(13, "expert-0", "global-rollback", "boom", 10, 3, 5, 0));
        var skipped = new List<long>();
        var target = s.RestoreTarget(r => { if (r.Step == 20 && r.Owner == "router") throw new CheckpointCorruptException(r.File, "sha256 mismatch"); },
                                     (c, _) => skipped.Add(c.Step));
        Assert.Equal(10, target?.Step);
        Assert.Equal([20L], skipped);
        Assert.Null(s.RestoreTarget(r => throw new CheckpointCorruptException(r.File, "missing"), (_, _) => { }));
        Assert.Equal(6, s.KeptParts(2).Count());                                 // commits 10 and 20, three parts each
        Assert.Single(s.Recoveries);
        Assert.Equal(20, s.LastCommit?.Step);
    }

    [Fact]
    public void An_add_sets_the_run_s_experts_keeps_the_added_experts_first_parts_and_is_never_rolled_back_past()
    {
        var s = new SupervisorState(1);
        s.Apply(Commit(0));
        s.Apply(Commit(10));
        s.Apply(new ExpertsAdded(10, 1, [0, 0], "", Commit(10, experts: 3)));
        Assert.Equal(3, s.Experts);
        Assert.Equal(10, s.LastCommit?.Step);
        Assert.Equal("expert-2", s.BirthOf(2)?.Owner);
        Assert.Null(s.BirthOf(0));                                                // configured experts start from the upcycled weights
        Assert.Throws<InvalidDataException>(() => s.Apply(new ExpertsAdded(10, 1, [0], "", Commit(10, experts: 2))));   // From must be E
        s.Apply(Commit(20, experts: 3));
        // the commit after the add is corrupt: falling back to the add's own commit is fine, but not past it
        Assert.Equal(10, s.RestoreTarget(r => { if (r.Step == 20) throw new CheckpointCorruptException(r.File, "bad"); }, (_, _) => { })?.Step);
        Assert.Equal(5, s.RestoreTarget(r => { if (r.Step == 20) throw new CheckpointCorruptException(r.File, "bad"); }, (_, _) => { })!.Manifest.Count);
        Assert.Null(s.RestoreTarget(r => { if (r.Step >= 10 && r.Owner == "expert-2") throw new CheckpointCorruptException(r.File, "bad"); }, (_, _) => { }));
        // only the last commit is kept, and the added experts' first parts with it
        Assert.Equal(["expert-1-00000010.ckpt", "expert-2-00000010.ckpt"], s.KeptParts(1).Where(r => r.Step == 10).Select(r => r.File).Order());
    }
}
