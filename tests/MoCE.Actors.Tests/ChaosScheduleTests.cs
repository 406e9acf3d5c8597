using MoCE.Core.Config;
using MoCE.Core.Tests;

namespace MoCE.Actors.Tests;

/// <summary>A chaos schedule with a fault of every kind, from HOCON, through the real paths: an expert failing in each
/// phase, the router failing, a straggler, a dropped, a duplicated and a delayed message, a checkpoint file with a
/// flipped byte, an expert's gradients turned NaN, and a journal that refuses writes. Under global-rollback the run ends bit-equal to the run without
/// faults; the same schedule and seed give the same events and weights again.</summary>
public class ChaosScheduleTests(MoceFixture fx, Xunit.Abstractions.ITestOutputHelper output) : IClassFixture<MoceFixture>
{
    private static readonly MoeConfig Moe = MoceFixture.Moe with { Layers = [0, 1] };
    private const long Steps = 60;

    /// <summary>The first step ≥ <paramref name="from"/> at which expert e got rows in the run without faults: a message
    /// fault needs a message to act on.</summary>
    private static long Busy(ActorRun baseline, int e, long from) =>
        baseline.Routing.First(kv => kv.Key >= from && kv.Value.Any(r => r.Expert == e && r.Tokens > 0)).Key;

    private static string Schedule(ActorRun baseline) => $$"""
        chaos {
          seed = 11
          events = [
            { kind = fail, owner = expert-0, step = 5 }
            { kind = fail, owner = expert-1, step = 12, phase = backward }
            { kind = fail, owner = expert-2, step = 17, phase = apply }
            { kind = fail, owner = expert-0, step = 20, phase = checkpoint }
            { kind = fail, owner = router, step = 24 }
            { kind = straggler, owner = expert-1, from = 26, to = 28, factor = 3, ms = 5 }
            { kind = straggler, owner = router, from = 45, to = 46, ms = 20 }
            { kind = drop, owner = expert-0, step = {{Busy(baseline, 0, 31)}}, message = output }
            { kind = duplicate, owner = expert-1, step = {{Busy(baseline, 1, 34)}}, message = backward }
            { kind = delay, owner = expert-2, step = {{Busy(baseline, 2, 36)}}, message = output, ms = 300 }
            { kind = corrupt-checkpoint, owner = router, step = 40 }
            { kind = nan-gradient, owner = expert-2, step = {{Busy(baseline, 2, 44)}} }
            { kind = journal-refuses, step = 50, ms = 1500 }
            { kind = fail, owner = trainer, probability = 0.05 }
          ]
        }
        """;

    private (ActorRun run, RunFinishedAndEvents result) RunWith(string schedule)
    {
        // the ask timeout finds the dropped output; 10 s: no reply of this tiny model comes near it on a busy machine, so
        // it fires for the drop alone (the recovery count below is exact)
        var run = new ActorRun(fx, Moe, Tiny.Train(steps: Steps)) { AskTimeout = TimeSpan.FromSeconds(10) };
        var plan = ChaosSchedule.Parse(Akka.Configuration.ConfigurationFactory.ParseString(schedule));
        var done = run.Run(until: Steps, checkpointEvery: 10, plan);
        return (run, new RunFinishedAndEvents(done, plan.Events.OrderBy(e => e.Step).ThenBy(e => e.Owner).ThenBy(e => e.Kind).ToList()));
    }

    private sealed record RunFinishedAndEvents(Messages.RunFinished Done, List<Messages.ChaosFired> Events);

    [Fact]
    public void Every_kind_of_fault_is_injected_reported_and_recovered_and_the_run_ends_bit_equal_to_the_run_without_faults()
    {
        var baseline = new ActorRun(fx, Moe, Tiny.Train(steps: Steps));
        Assert.Equal(Steps, baseline.Run(until: Steps, checkpointEvery: 10).Step);
        var expected = baseline.CommittedWeights(Steps);
        var schedule = Schedule(baseline);

        var (run, r) = RunWith(schedule);
        Assert.Equal(Steps, r.Done.Step);
        var kinds = r.Events.Select(e => e.Kind).ToList();
        foreach (var k in new[] { "straggler", "drop", "duplicate", "delay", "corrupt-checkpoint", "nan-gradient", "journal-refuses" })
            Assert.Contains(k, kinds);
        Assert.Equal(["apply", "backward", "checkpoint", "forward"], r.Events.Where(e => e.Kind == "fail" && e.Owner.StartsWith("expert-"))
            .Select(e => e.Detail.Split(' ')[2]).Distinct().Order());
        Assert.Contains(r.Events, e => e.Kind == "fail" && e.Owner == "router");
        Assert.Contains(r.Events, e => e.Kind == "straggler" && e.Owner == "router");
        // each failure was recovered by a restore: the four phases, the router, the dropped output (found by the ask
        // timeout), the corrupt part (found before the commit) and the NaN gradients (found before they were applied)
        var recoveries = r.Done.Recoveries;
        foreach (var e in r.Events) output.WriteLine($"chaos: step {e.Step} {e.Owner} {e.Kind}: {e.Detail}");
        foreach (var x in recoveries) output.WriteLine($"recovery: step {x.Step} {x.Owner}: {x.Error} → commit {x.RestoredStep}, {x.StepsReplayed} replayed, {x.DetectionToRecoveredMs:F0} ms");
        // one restore per fault that breaks a step, and none for the straggler, the duplicate or the delay: a
        // duplicated backward is ignored by the expert (without that, autograd refuses the second pass and the step fails)
        Assert.Equal(r.Events.Count(e => e.Kind == "fail") + 3, recoveries.Count);
        Assert.Contains(recoveries, x => x.Error.Contains("the gradient norm is NaN (expert-2's share)", StringComparison.Ordinal));
        Assert.All(recoveries, x => Assert.Equal("global-rollback", x.Policy));
        Assert.Contains(recoveries, x => x.Error.Contains("sha256 mismatch", StringComparison.Ordinal));
        Assert.Contains(recoveries, x => x.Error.Contains("Timeout", StringComparison.OrdinalIgnoreCase) || x.Error.Contains("timed out", StringComparison.OrdinalIgnoreCase));
        // the database refused the commit of step 50: Akka stopped the supervisor, which was started again and resumed
        // from the commit before it (again, while the refusal lasts: how often depends on the replay's speed)
        Assert.NotEmpty(run.Resumes);
        Assert.All(run.Resumes, s => Assert.Equal(40, s));
        Assert.Equal(0.0, ActorRun.MaxAbsDiff(expected, run.CommittedWeights(Steps)));

        // the same schedule and seed again: the same faults at the same steps, the same weights
        var (again, r2) = RunWith(schedule);
        Assert.Equal(r.Events.Select(e => (e.Step, e.Owner, e.Kind)), r2.Events.Select(e => (e.Step, e.Owner, e.Kind)));
        Assert.Equal(0.0, ActorRun.MaxAbsDiff(expected, again.CommittedWeights(Steps)));
    }

    [Fact]
    public void A_schedule_with_a_bad_key_or_value_names_it()
    {
        static string Error(string events) => Assert.Throws<ConfigException>(() =>
            ChaosSchedule.Parse(Akka.Configuration.ConfigurationFactory.ParseString($"chaos {{ events = [ {events} ] }}"))).Message;
        Assert.Contains("chaos.events[0].owner", Error("{ kind = fail, owner = gpu-3, step = 1 }"));
        Assert.Contains("chaos.events[0].phase", Error("{ kind = fail, owner = router, step = 1, phase = backward }"));
        Assert.Contains("chaos.events[0].stpe", Error("{ kind = fail, owner = router, step = 1, stpe = 2 }"));
        Assert.Contains("chaos.events[0].message", Error("{ kind = drop, owner = expert-0, step = 1, message = apply }"));
        Assert.Contains("chaos.events[0].kind", Error("{ kind = meteor, owner = expert-0, step = 1 }"));
        Assert.Contains("chaos.events[0].owner", Error("{ kind = fail-in-move, move = 1, phase = cut, owner = expert-0 }"));
        Assert.Contains("chaos.events[0].phase", Error("{ kind = fail-in-move, move = 1, phase = apply, owner = router }"));
    }

    [Fact]
    public void A_fail_in_move_fires_once_for_its_move_and_phase()
    {
        var plan = ChaosSchedule.Parse(Akka.Configuration.ConfigurationFactory.ParseString(
            "chaos { events = [ { kind = fail-in-move, move = 2, phase = restore, owner = router } ] }"));
        Assert.False(plan.IsEmpty);
        Assert.Null(plan.InMove(1, MovePhase.Restore, 10));                      // another move
        Assert.Null(plan.InMove(2, MovePhase.Cut, 10));                          // another phase
        Assert.Equal("router", plan.InMove(2, MovePhase.Restore, 20));
        Assert.Null(plan.InMove(2, MovePhase.Restore, 20));                      // once
        Assert.Equal(new Messages.ChaosFired(20, "router", "fail-in-move", "throws in the restore of planned move 2"), Assert.Single(plan.Events));
    }

    [Fact]
    public void A_slow_persist_delays_one_write_at_or_after_its_step_and_a_lost_copy_fires_once()
    {
        var plan = ChaosSchedule.Parse(Akka.Configuration.ConfigurationFactory.ParseString(
            "chaos { events = [ { kind = slow-persist, owner = router, step = 20, ms = 1500 }, { kind = lose-copy, owner = expert-1 } ] }"));
        Assert.Equal(TimeSpan.Zero, plan.PersistDelay("router", 10));            // before its step
        Assert.Equal(TimeSpan.Zero, plan.PersistDelay("trainer", 30));           // another owner
        Assert.Equal(TimeSpan.FromMilliseconds(1500), plan.PersistDelay("router", 30));
        Assert.Equal(TimeSpan.Zero, plan.PersistDelay("router", 40));            // once
        Assert.False(plan.LosesCopy("expert-0"));
        Assert.True(plan.LosesCopy("expert-1"));
        Assert.False(plan.LosesCopy("expert-1"));
        Assert.Equal(["slow-persist", "lose-copy"], plan.Events.Select(e => e.Kind));
        static string Error(string events) => Assert.Throws<ConfigException>(() =>
            ChaosSchedule.Parse(Akka.Configuration.ConfigurationFactory.ParseString($"chaos {{ events = [ {events} ] }}"))).Message;
        Assert.Contains("chaos.events[0].owner", Error("{ kind = slow-persist, owner = teacher, step = 1 }"));
        Assert.Contains("chaos.events[0].owner", Error("{ kind = lose-copy, owner = router }"));
    }
}

/// <summary>moce.actors.straggler-timeout: a straggler stalls every step it computes in; past the timeout the router
/// gives up on it, the step is retried without it (its rows to the next-best expert), and it sits out before it takes
/// rows again.
///
/// No margin here is one that machine load can erode. The straggler's extra 2 s is a sleep, so it passes the 1 s
/// timeout however busy the cores are, while a tiny expert's normal answer stays far below 1 s even then. A sleep
/// still running when the expert rejoins (the sit-out's five steps can take less than what is left of it) can make
/// it miss one more sit-out, so the window of slow steps is short and the run goes on long after it: whatever the
/// load, it is back, computing, well before the end.</summary>
public class StragglerTimeoutTests(MoceFixture fx) : IClassFixture<MoceFixture>
{
    private static readonly MoeConfig Moe = MoceFixture.Moe with { Layers = [0, 1] };

    [Fact]
    public void A_straggler_past_the_timeout_sits_out_its_rows_go_elsewhere_and_it_comes_back()
    {
        var run = new ActorRun(fx, Moe, Tiny.Train(steps: 40)) { StragglerTimeout = TimeSpan.FromSeconds(1), StragglerSitOut = 5 };
        var chaos = new ChaosPlan().Straggle("expert-1", 10, 14, ms: 2000);
        var done = run.Run(until: 40, checkpointEvery: 10, chaos);
        Assert.Equal(40, done.Step);
        var sat = done.Recoveries.Where(r => r.Policy == "straggler-timeout").ToList();
        Assert.NotEmpty(sat);
        Assert.All(sat, r => Assert.Equal("expert-1", r.Owner));
        var first = sat[0];
        Assert.InRange(first.Step, 10, 14);
        Assert.True(sat.Count <= 2, $"sat out {sat.Count} times, at steps {string.Join(", ", sat.Select(r => r.Step))}");  // the window, and at most one leftover sleep
        Assert.Equal(5, first.StepsMissed);                                     // it sat out its five steps
        Assert.True(first.ReroutedImages > 0, "its images went to other experts meanwhile");
        // while it sat out, no row went to it; after, it computed again
        Assert.All(sat, r => Assert.All(run.Routing.Where(kv => kv.Key >= r.Step && kv.Key < r.Step + 5), kv => Assert.DoesNotContain(kv.Value, e => e.Expert == 1 && e.Tokens > 0)));
        Assert.Contains(run.Routing.Where(kv => kv.Key >= sat[^1].Step + 5).SelectMany(kv => kv.Value), e => e.Expert == 1 && e.Tokens > 0);
        Assert.Contains(run.CommittedWeights(40).Keys, k => k.Contains(".experts.1.", StringComparison.Ordinal));   // in every cut, sitting out or not
    }

    /// <summary>A sit-out that outlasts the run ends with it: the final commit does not wait for the straggler (alive,
    /// in the cuts, it never sends ExpertRecovered; the run used to wait for one forever), and its outage is recorded.</summary>
    [Fact]
    public void A_straggler_sitting_out_at_the_end_does_not_hold_the_final_commit()
    {
        var run = new ActorRun(fx, Moe, Tiny.Train(steps: 20)) { StragglerTimeout = TimeSpan.FromSeconds(1), StragglerSitOut = 50, Timeout = TimeSpan.FromMinutes(2) };
        var done = run.Run(until: 20, checkpointEvery: 10, new ChaosPlan().Straggle("expert-1", 15, 15, ms: 2000));
        Assert.Equal(20, done.Step);
        var sat = Assert.Single(done.Recoveries, r => r.Policy == "straggler-timeout");
        Assert.Equal(("expert-1", 15L), (sat.Owner, sat.Step));
        Assert.Equal(5, sat.StepsMissed);                                          // steps 15..19, cut short by the end
        Assert.Contains(run.CommittedWeights(20).Keys, k => k.Contains(".experts.1.", StringComparison.Ordinal));
    }
}
