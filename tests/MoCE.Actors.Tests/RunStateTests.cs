using Akka.Actor;
using MoCE.Actors;
using MoCE.Actors.Messages;
using MoCE.Core.Training;

namespace MoCE.Actors.Tests;

/// <summary>The supervisor's decisions (<see cref="RunState"/> and the recovery policies), driven with steps, commits,
/// restores and faults, without actors.</summary>
public class RunStateTests
{
    private static readonly RestartBackoff Backoff = new(TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(350), MaxFailures: 5);
    private static readonly string[] Hosts = ["node-a", "node-b"];

    private static RunState New(RecoveryPolicy policy = RecoveryPolicy.GlobalRollback, long every = 5, int sitOut = 3)
    {
        var run = RunState.For(new ActorContextSetup
        {
            RunId = "r", Model = null!, Moe = null!, Train = null!, Data = null!, ClusterIds = [], Clusters = 1, Initial = new Dictionary<string, TorchSharp.torch.Tensor>(),
            Store = null!, Device = TorchSharp.torch.CPU, Policy = policy, Backoff = Backoff, StragglerSitOut = sitOut,
        }, every);
        run.Started(end: 20);
        return run;
    }

    private static Fault Failed(string owner, long step) => new([owner], FaultKind.Failed, "boom", step);

    /// <summary>Completes the current step with these tokens per expert (expert e got tokens[e]).</summary>
    private static bool Complete(RunState run, params long[] tokens) =>
        run.StepCompleted(new StepCompleted(run.Step, null!, tokens.Select((t, e) => new ExpertStat(0, e, t, 0, 0)).ToList()), tokens.Length);

    private static Next Boundary(RunState run, long? committed) => run.Decide(committed, () => null);

    [Fact]
    public void Repeated_failures_back_off_exponentially_up_to_the_ceiling_then_stop_the_run()
    {
        var run = New();
        Assert.Equal(new RollBack(TimeSpan.FromMilliseconds(100)), run.Decide(Failed("expert-1", 0), training: true));
        Assert.Equal(new RollBack(TimeSpan.FromMilliseconds(200)), run.Decide(Failed("expert-1", 0), true));
        Assert.Equal(new RollBack(TimeSpan.FromMilliseconds(350)), run.Decide(Failed("expert-1", 0), true));
        Assert.Equal(new RollBack(TimeSpan.FromMilliseconds(350)), run.Decide(Failed("router", 0), true));
        var stop = Assert.IsType<StopRun>(run.Decide(Failed("expert-1", 0), true));
        Assert.Contains("expert-1 failed at step 0: boom", stop.Reason);
        Assert.Contains("failure 5 in a row (moce.actors.max-failures = 5)", stop.Reason);
    }

    [Fact]
    public void Only_a_step_past_the_last_failed_one_resets_the_count()
    {
        var run = New(every: 100);
        for (int i = 0; i < 3; i++) Complete(run, 1);                           // at step 3
        run.Decide(Failed("trainer", 3), true);
        run.Decide(Failed("trainer", 3), true);
        run.Restored(1);
        Complete(run, 1);                                                        // replaying towards the failure
        Complete(run, 1);
        Complete(run, 1);                                                        // the failed step itself
        Assert.Equal(2, run.FailuresInARow);
        Complete(run, 1);                                                        // past it
        Assert.Equal(0, run.FailuresInARow);
        Assert.Equal(new RollBack(TimeSpan.FromMilliseconds(100)), run.Decide(Failed("trainer", 5), true));
    }

    [Fact]
    public void Expert_local_takes_only_experts_down_and_only_while_a_step_is_trained()
    {
        var run = New(RecoveryPolicy.ExpertLocal);
        int g = run.Generation;
        Assert.Equal([2], Assert.IsType<TakeDown>(run.Decide(Failed("expert-2", 0), training: true)).Experts);
        Assert.True(run.Generation > g);                                         // the attempt's replies are stale
        Assert.True(run.OutOfCut(2));
        Assert.True(run.Retry(new StepFailed(0, run.Generation, "aborted")));
        Assert.False(run.Retry(new StepFailed(0, run.Generation, "aborted")));  // once per take-down
        Assert.Equal([2], Assert.IsType<Train>(Boundary(run, 0)).Command.Down.Order());   // it gets no rows
        Assert.IsType<RollBack>(run.Decide(Failed("expert-3", 0), training: false));   // in a cut, a restore or an operation
        Assert.IsType<RollBack>(run.Decide(Failed("expert-4", 0), training: true));    // a rollback is under way: it joins it
        Assert.IsType<RollBack>(New(RecoveryPolicy.ExpertLocal).Decide(Failed("router", 0), true));
        Assert.IsType<RollBack>(New().Decide(Failed("expert-2", 0), true));
        Assert.Equal([0, 1], Assert.IsType<TakeDown>(New(RecoveryPolicy.ExpertLocal).Decide(new Fault(["expert-0", "expert-1"], FaultKind.Lost, "node lost", 0), true)).Experts);
    }

    [Fact]
    public void An_expert_local_outage_rejoins_after_its_snapshot_with_its_record_and_the_final_commit_waits_for_it()
    {
        var run = New(RecoveryPolicy.ExpertLocal, every: 100);
        for (int i = 0; i < 18; i++) Complete(run, 4, 4);
        run.Decide(Failed("expert-1", 18), true);
        run.Retry(new StepFailed(18, run.Generation, "aborted"));
        Complete(run, 8, 0);
        Complete(run, 8, 0);
        Assert.Equal(new HashSet<int> { 1 }, Assert.IsType<WaitForExperts>(Boundary(run, 0)).Down);
        Assert.False(run.Recovered(0, 10));                                      // not down: nothing to rejoin
        Assert.True(run.Recovered(1, 15));
        var r = Assert.Single(Assert.IsType<Rejoin>(Boundary(run, 0)).Records);
        Assert.Equal(("expert-1", "expert-local", 18L, 15L, 5L), (r.Owner, r.Policy, r.Step, r.RestoredStep, r.StepsMissed));
        Assert.Empty(run.Outages);
        Assert.IsType<Finish>(Boundary(run, 20));
    }

    [Fact]
    public void A_straggler_sits_out_in_the_cuts_without_counting_as_a_failure_and_rejoins_at_its_step_or_the_end()
    {
        var run = New(sitOut: 3);
        var slow = new Fault(["expert-1"], FaultKind.Slow, "no answer", 0);
        var sit = Assert.IsType<SitOut>(run.Decide(slow, training: true));
        Assert.Equal([1], sit.Experts);
        Assert.Equal(3, sit.Until);
        Assert.Equal(0, run.FailuresInARow);
        Assert.False(run.OutOfCut(1));                                           // alive: it writes its part
        Assert.True(run.Retry(new StepFailed(0, run.Generation, "cancelled")));
        Complete(run, 4, 0);
        Complete(run, 4, 0);
        Assert.IsType<Train>(Boundary(run, 0));
        Complete(run, 4, 0);                                                     // step 2 done: it takes rows again at 3
        var r = Assert.Single(Assert.IsType<Rejoin>(Boundary(run, 0)).Records);
        Assert.Equal(("straggler-timeout", 0L, 3L), (r.Policy, r.RestoredStep, r.StepsMissed));
        // a sit-out that would outlast the run ends with it; one during a rollback is ignored
        for (int i = 3; i < 19; i++) Complete(run, 4, 4);
        Assert.IsType<SitOut>(run.Decide(slow with { Step = 19 }, true));
        Complete(run, 4, 0);
        Assert.IsType<Rejoin>(Boundary(run, 20));
        run.Decide(Failed("router", 20), true);
        Assert.IsType<Ignore>(run.Decide(slow, true));
    }

    [Fact]
    public void The_boundary_commits_before_a_move_and_an_add_then_trains_waits_stops_or_finishes()
    {
        var run = New();
        Assert.Equal(0, Assert.IsType<Train>(Boundary(run, 0)).Command.Step);
        Assert.True(Complete(run, 3, 1) is false);
        Assert.Null(run.Drain("node-a", null, training: true, Hosts));
        Assert.Equal(new CutAt(1), Boundary(run, 0));                            // the move's step is committed first
        var mv = Assert.IsType<MoveNow>(Boundary(run, 1)).Move;
        Assert.Equal("node-a", mv.LeavingNode);
        Assert.Equal([0, 1], run.StartMove([0, 1]).Experts);                     // a drain takes the node's experts at the boundary
        Assert.Equal(new RestoreOutcome(null, run.Move, null), run.Restored(1));
        Assert.Null(run.AddExperts(new AddExperts(1, 1, "", -1), null, true, false, Hosts));
        Assert.Equal(new CutAt(1), Boundary(run, 0));
        Assert.Equal([0], Assert.IsType<AddNow>(Boundary(run, 1)).Sources);     // expert 0 carried the most tokens
        run.StartAdd();
        run.AddJournaled([0]);
        Assert.NotNull(run.Restored(1).Added);
        Assert.IsType<KillNodeNow>(run.Decide(1, () => ("127.0.0.1:1", new ChaosFired(1, "node", "kill-node", ""))));
        run.StopRequested = true;
        Assert.Equal(new CutAt(1), Boundary(run, 0));
        Assert.Equal(new Finish(1, null), Boundary(run, 1));
    }

    [Fact]
    public void A_drain_or_add_that_cannot_work_is_refused_with_its_reason()
    {
        var run = New();
        Assert.Equal("the run is not training", run.Drain("node-a", null, training: false, Hosts));
        Assert.StartsWith("node-c hosts no experts of this run", run.Drain("node-c", null, true, Hosts));
        Assert.StartsWith("it is the only expert node", run.Drain("node-a", null, true, ["node-a"]));
        Assert.Null(run.Drain("node-a", null, true, Hosts));
        Assert.Equal("drain of node-a is under way", run.Drain("node-b", null, true, Hosts));
        Assert.Equal("drain of node-a is under way", run.AddExperts(new AddExperts(0, 1, "", -1), null, true, false, Hosts));
        var fresh = New();
        Assert.Equal("--count must be at least 1, got 0", fresh.AddExperts(new AddExperts(0, 0, "", -1), null, true, false, Hosts));
        Assert.Equal("--count must be at most 64 at once, got 2147483647", fresh.AddExperts(new AddExperts(0, int.MaxValue, "", -1), null, true, false, Hosts));
        Assert.Equal("step 20 is not before the run's end (20)", fresh.AddExperts(new AddExperts(0, 1, "", 20), null, true, false, Hosts));
        Assert.StartsWith("node-c is not an expert node", fresh.AddExperts(new AddExperts(0, 1, "node-c", -1), null, true, false, Hosts));
        Assert.False(fresh.Rebalance("node-b", [1], training: false));
    }

    /// <summary>A failure in each phase of a planned move: in its cut (the move has not started: it is taken again after
    /// the rollback), in the placement of its experts or in its restore (it has started: the rollback's restore completes
    /// it, and the recovery is recorded too). Either way nothing stays "under way": a later drain is accepted.</summary>
    [Theory]
    [InlineData("cut")]
    [InlineData("placement")]
    [InlineData("restore")]
    public void A_failure_in_any_phase_of_a_move_completes_it_and_a_later_drain_is_accepted(string phase)
    {
        var run = New();
        Complete(run, 1, 1);
        Complete(run, 1, 1);
        Assert.Null(run.Drain("node-a", null, true, Hosts));
        Assert.Equal(new CutAt(2), Boundary(run, 0));
        if (phase == "cut")
        {
            Assert.IsType<RollBack>(run.Decide(Failed("expert-0", 2), training: false));
            var o = run.Restored(0);
            Assert.Null(o.Moved);                                                 // not started: still planned
            Assert.Equal("expert-0", o.Recovery?.Owner);
            Complete(run, 1, 1);
            Complete(run, 1, 1);
            Assert.Equal(new CutAt(2), Boundary(run, 0));                         // committed again before it starts
        }
        Assert.IsType<MoveNow>(Boundary(run, 2));
        run.StartMove([0]);
        // placement: a host that does not answer is that expert's failure; restore: an owner's ask fails (the supervisor's)
        if (phase != "cut") Assert.IsType<RollBack>(run.Decide(Failed(phase == "placement" ? "expert-0" : "supervisor", 2), training: false));
        var done = run.Restored(2);
        Assert.Equal([0], done.Moved?.Experts);
        Assert.Equal(phase switch { "placement" => "expert-0", "restore" => "supervisor", _ => null }, done.Recovery?.Owner);
        Assert.Null(run.Move);
        Assert.Null(run.Drain("node-b", null, true, Hosts));
    }

    [Fact]
    public void An_add_that_fails_before_it_is_journaled_is_taken_again_and_one_journaled_completes_at_the_restore()
    {
        var run = New();
        for (int i = 0; i < 5; i++) Complete(run, 1, 9);
        Assert.Null(run.AddExperts(new AddExperts(5, 1, "", -1), null, true, false, Hosts));
        Assert.Equal([1], Assert.IsType<AddNow>(Boundary(run, 5)).Sources);
        run.StartAdd();
        run.Decide(Failed("trainer", 5), training: false);
        Assert.Null(run.Restored(5).Added);
        Assert.IsType<AddNow>(Boundary(run, 5));                                 // taken again
        run.StartAdd();
        run.AddJournaled([1]);
        run.Decide(Failed("expert-2", 5), training: false);
        var o = run.Restored(5);
        Assert.Equal([1], o.Added?.Sources);
        Assert.NotNull(o.Recovery);
        Assert.IsType<Train>(Boundary(run, 5));
        Assert.Null(new RunState(5, Backoff, [new GlobalRollbackPolicy(Backoff)]).AddFailed());
    }

    [Fact]
    public void A_replayed_step_replaces_its_first_run_in_the_add_s_token_window()
    {
        var run = New(every: 10);
        for (int i = 0; i < 4; i++) Complete(run, 5, 1);
        run.Decide(Failed("router", 4), true);
        run.Restored(2);
        Complete(run, 0, 7);                                                     // steps 2 and 3 again, routed otherwise
        Complete(run, 0, 7);
        Assert.Null(run.AddExperts(new AddExperts(4, 1, "", -1), null, true, false, Hosts));
        var add = Assert.IsType<AddNow>(Boundary(run, 4));
        Assert.Equal([10L, 16L], add.Tokens);                                    // 5+5 and 1+1+7+7, not 5×4 and 1×4+7+7
        Assert.Equal([1], add.Sources);
    }

    /// <summary>A fresh process resumes with the commit's token window, so its add splits what the long-lived run's did.</summary>
    [Fact]
    public void A_restore_takes_the_commit_s_token_window()
    {
        var run = New(every: 3);
        for (int i = 0; i < 5; i++) Complete(run, i, 1);
        var window = run.Window;
        Assert.Equal([2L, 3L, 4L], window.Select(t => t.Step));                  // the last checkpoint-every steps
        var fresh = New(every: 3);
        fresh.Restored(5, window);
        Assert.Equal(window, fresh.Window);
        Assert.Null(fresh.AddExperts(new AddExperts(5, 1, "", -1), null, true, false, Hosts));
        Assert.Equal([9L, 3L], Assert.IsType<AddNow>(Boundary(fresh, 5)).Tokens);     // 2+3+4 and 1+1+1
        fresh.Restored(5, []);                                                   // a grown commit: nothing counted yet
        Assert.Empty(fresh.Window);
        fresh.Restored(5);                                                       // a commit of body version 1: the window stays
        Assert.Empty(fresh.Window);
    }

    /// <summary>A supervisor that starts again begins its generations above every one of the earlier start's.</summary>
    [Fact]
    public void Generations_of_a_later_supervisor_start_exceed_every_earlier_one()
    {
        var first = New(RecoveryPolicy.ExpertLocal);
        first.Incarnated(1);
        for (int i = 0; i < 1000; i++) first.Decide(new Fault(["expert-0"], FaultKind.Slow, "slow", 0), training: true);   // generations grow
        var second = New();
        second.Incarnated(2);
        Assert.True(second.Generation > first.Generation, $"{second.Generation} ≤ {first.Generation}");
        Assert.Equal(2 << 20, second.Generation);
        Assert.Throws<OverflowException>(() => New().Incarnated(2048));
    }

    [Fact]
    public void Expert_exact_retries_a_failed_forward_only_once_the_copy_is_back_and_records_it_when_the_step_completes()
    {
        var run = New(RecoveryPolicy.ExpertExact, every: 100);
        for (int i = 0; i < 3; i++) Complete(run, 1, 1, 1);
        int g = run.Generation;
        var d = run.Decide(new Fault(["expert-1"], FaultKind.Failed, "boom", 3, StepPhase.Forward), training: true);
        Assert.Equal([1], Assert.IsType<RetryFromCopy>(d).Experts);
        Assert.Equal(g + 1, run.Generation);                                     // the failed attempt's replies are stale
        Assert.False(run.Retry(new StepFailed(3, g, "another owner failed")));    // the copy is not back yet
        Assert.IsType<RetryStep>(run.CopyRestored(1, 3));
        Assert.IsType<Ignore>(run.CopyRestored(1, 3));                           // said once
        var t = Assert.IsType<Train>(Boundary(run, 0));
        Assert.Equal((3L, g + 1), (t.Command.Step, t.Command.Generation));
        Assert.Empty(t.Command.Down);                                            // the expert takes part: nothing was left behind
        Complete(run, 1, 1, 1);
        var r = Assert.Single(Assert.IsType<ExactlyRecovered>(Boundary(run, 0)).Records);
        Assert.Equal(("expert-1", "expert-exact", 3L, 3L, 0L, ""), (r.Owner, r.Policy, r.Step, r.RestoredStep, r.StepsReplayed, r.Fallback));
        Assert.IsType<Train>(Boundary(run, 0));
    }

    [Fact]
    public void Expert_exact_replays_a_failed_update_without_a_retry_and_falls_back_when_a_copy_is_missing_or_old()
    {
        var run = New(RecoveryPolicy.ExpertExact, every: 100);
        Complete(run, 1, 1);
        int g = run.Generation;
        Assert.IsType<ReplayFromCopy>(run.Decide(new Fault(["expert-0"], FaultKind.Failed, "boom", 1, StepPhase.Apply), true));
        Assert.Equal(g, run.Generation);                                         // the trainer asks the update again, in this attempt
        Assert.IsType<Ignore>(run.CopyRestored(0, 1));
        Complete(run, 1, 1);
        Assert.Equal("expert-exact", Assert.Single(Assert.IsType<ExactlyRecovered>(Boundary(run, 0)).Records).Policy);

        // no copy: global-rollback takes over, and its record says why
        run.Decide(new Fault(["expert-1"], FaultKind.Failed, "boom", 2, StepPhase.Backward), true);
        var rb = Assert.IsType<RollBack>(run.CopyRestored(1, -1));
        Assert.Equal("expert-exact: expert-1 had no in-memory copy, not one of step 2", rb.Fallback);
        var rec = run.Restored(0).Recovery!;
        Assert.Equal(("global-rollback", 0L, rb.Fallback), (rec.Policy, rec.RestoredStep, rec.Fallback));

        // a copy of another step is no better
        run.Decide(new Fault(["expert-1"], FaultKind.Failed, "boom", 0, StepPhase.Forward), true);
        Assert.Contains("an in-memory copy of step 7, not one of step 0", Assert.IsType<RollBack>(run.CopyRestored(1, 7)).Fallback);
    }

    [Theory]
    [InlineData(FaultKind.Failed, StepPhase.Checkpoint, true, "expert-exact: expert-1 failed outside a forward, backward or update")]
    [InlineData(FaultKind.Failed, StepPhase.Forward, false, "expert-exact: expert-1 failed while no step was being trained")]   // a cut, a restore
    [InlineData(FaultKind.Lost, StepPhase.Other, false, "expert-exact: expert-1 lost while no step was being trained")]
    public void Expert_exact_leaves_what_no_copy_can_mend_to_global_rollback_and_says_why(FaultKind kind, StepPhase phase, bool training, string why)
    {
        var run = New(RecoveryPolicy.ExpertExact);
        var d = Assert.IsType<RollBack>(run.Decide(new Fault(["expert-1"], kind, "boom", 0, phase), training));
        Assert.Equal(why, d.Fallback);
        Assert.Equal("", Assert.IsType<RollBack>(run.Decide(new Fault(["router"], FaultKind.Failed, "boom", 0, StepPhase.Forward), true)).Fallback);
    }

    /// <summary>A node lost mid-step: its experts come back elsewhere from their peer copies and the step is retried once
    /// every copy is back; a copy one step behind (the last one was still in flight) falls back and says so.</summary>
    [Fact]
    public void Expert_exact_retries_the_step_a_node_was_lost_in_once_every_lost_expert_has_put_back_its_peer_copy()
    {
        var run = New(RecoveryPolicy.ExpertExact, every: 100);
        for (int i = 0; i < 4; i++) Complete(run, 1, 1, 1);
        int g = run.Generation;
        var d = run.Decide(new Fault(["expert-0", "expert-2"], FaultKind.Lost, "lost with its node", 4), training: true);
        Assert.Equal([0, 2], Assert.IsType<RetryFromCopy>(d).Experts);
        Assert.False(run.Retry(new StepFailed(4, g, "the supervisor cancelled the step")));
        Assert.IsType<Ignore>(run.CopyRestored(2, 4));                           // expert-0 is not back yet
        Assert.IsType<RetryStep>(run.CopyRestored(0, 4));
        Assert.Equal((4L, g + 1), (Assert.IsType<Train>(Boundary(run, 0)).Command.Step, run.Generation));
        Complete(run, 1, 1, 1);
        var records = Assert.IsType<ExactlyRecovered>(Boundary(run, 0)).Records;
        Assert.Equal(["expert-0", "expert-2"], records.Select(r => r.Owner).Order());
        Assert.All(records, r => Assert.Equal(("expert-exact", 4L, ""), (r.Policy, r.Step, r.Fallback)));

        run.Decide(new Fault(["expert-1"], FaultKind.Lost, "lost with its node", 5), training: true);
        var rb = Assert.IsType<RollBack>(run.CopyRestored(1, 4));
        Assert.Equal("expert-exact: expert-1 had an in-memory copy of step 4, not one of step 5", rb.Fallback);

        var off = new ExpertExactPolicy(Backoff, peerCopies: false).Decide(new Fault(["expert-1"], FaultKind.Lost, "lost with its node", 5), new FaultContext(true, 1));
        Assert.Equal("expert-exact: expert-1 lost with its node, and peer copies are off (moce.actors.peer-copies)", Assert.IsType<RollBack>(off).Fallback);
    }

    [Fact]
    public void An_expert_exact_recovery_that_a_rollback_overtakes_is_recorded_as_a_fallback()
    {
        var run = New(RecoveryPolicy.ExpertExact);
        run.Decide(new Fault(["expert-2"], FaultKind.Failed, "boom", 0, StepPhase.Apply), true);
        run.Decide(Failed("trainer", 0), true);                                 // its replay failed, and so did the trainer's step
        var r = run.Restored(0).Recovery!;
        Assert.Equal(("trainer", "global-rollback"), (r.Owner, r.Policy));
        Assert.Equal("expert-exact could not finish recovering expert-2: trainer failed (boom)", r.Fallback);
    }
}
