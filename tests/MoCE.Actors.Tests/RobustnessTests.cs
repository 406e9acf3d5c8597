using System.Diagnostics;
using MoCE.Actors;
using MoCE.Core.Config;
using MoCE.Core.Tests;
using Serilog;
using Serilog.Core;
using Serilog.Events;

namespace MoCE.Actors.Tests;

public class RobustnessTests(MoceFixture fx) : IClassFixture<MoceFixture>
{
    private static readonly MoeConfig Moe = MoceFixture.Moe with { Layers = [0, 1] };

    private sealed class Capture : ILogEventSink
    {
        public readonly List<string> Messages = [];
        public void Emit(LogEvent e) { lock (Messages) Messages.Add(e.RenderMessage()); }
    }

    [Fact]
    public void Cancelling_commits_at_the_current_step_and_the_resumed_run_equals_an_uninterrupted_one()
    {
        var train = Tiny.Train(steps: 30);
        var run = new ActorRun(fx, Moe, train);
        using var cts = new CancellationTokenSource();
        var stopped = run.Run(until: 30, checkpointEvery: 10, afterStep: s => { if (s == 16) cts.Cancel(); }, ct: cts.Token);
        Assert.InRange(stopped.Step, 17, 29);                            // stopped mid-run, not at a scheduled commit
        Assert.NotEmpty(Directory.GetFiles(Path.Combine(run.RunDir, "checkpoints"), $"trainer-{stopped.Step:D8}-*.ckpt"));

        run.Losses.Clear();
        Assert.Equal(30, run.Run(until: 30, checkpointEvery: 10).Step);
        Assert.Equal(stopped.Step, run.Losses.Keys.First());              // resumed exactly where it stopped
        Assert.True(ActorRun.MaxAbsDiff(run.Reference(out _), run.CommittedWeights(30)) <= 1e-5);
    }

    /// <summary>A process killed after the journal took commit s but before commits.json recorded it: commits.json (what
    /// later phases, `moce status` and `moce export` read) must still name only files the store keeps. It mirrors the
    /// commits the journal keeps when the journal is recovered, and before any older file is deleted. Before, it
    /// appended commits on its own: one missed commit, and later it named a commit whose files the journal's
    /// retention had deleted (seen: a SIGKILL process test, "trainer-00000120-….ckpt: file is missing").</summary>
    [Fact]
    public void Commits_json_names_only_kept_files_after_a_process_died_before_recording_its_last_commit()
    {
        var train = Tiny.Train(steps: 30) with { KeepCheckpoints = 2 };
        var run = new ActorRun(fx, Moe, train);
        var store = new Core.Checkpoints.CheckpointStore(Path.Combine(run.RunDir, "checkpoints"));
        long Go(long until)
        {
            using var recorder = new RunRecorder(run.RunDir, train, store, "moce", Log.Logger, Moe);
            return ActorEngine.Run(run.Setup(), run.RunDir, until, checkpointEvery: 10, keep: 2, recorder.Hooks, timeout: run.Timeout).Step;
        }
        long[] Listed() => [.. new Core.Checkpoints.CommitLog(store).Commits.Select(c => c.Step)];
        void Forget() { var log = new Core.Checkpoints.CommitLog(store); log.Mirror(log.Commits.Take(1)); }   // as if killed before recording the last

        Assert.Equal(20, Go(20));
        Assert.Equal([10, 20], Listed());
        Forget();
        Assert.Equal([10], Listed());
        Assert.Equal(20, Go(20));                                                  // a process that resumes and has nothing to do
        Assert.Equal([10, 20], Listed());                                          // mirrored from the recovered journal
        Forget();
        Assert.Equal(30, Go(30));
        Assert.Equal([20, 30], Listed());
        foreach (var c in new Core.Checkpoints.CommitLog(store).Commits) foreach (var p in c.Parts) store.Verify(p);
    }

    [Fact]
    public void A_corrupt_newest_commit_is_reported_by_name_and_the_run_falls_back_to_the_previous_one()
    {
        var train = Tiny.Train(steps: 30);
        var run = new ActorRun(fx, Moe, train);
        Assert.Equal(20, run.Run(until: 20, checkpointEvery: 10).Step);

        var trainerFile = Directory.GetFiles(Path.Combine(run.RunDir, "checkpoints"), "trainer-00000020-*.ckpt").Single();
        File.AppendAllText(trainerFile, "corruption");
        var capture = new Capture();
        Log.Logger = new LoggerConfiguration().WriteTo.Sink(capture).CreateLogger();
        run.Losses.Clear();
        Assert.Equal(30, run.Run(until: 30, checkpointEvery: 10).Step);

        Assert.Equal(10, run.Losses.Keys.First());                      // replayed from commit 10, not 20
        lock (capture.Messages)
            Assert.Contains(capture.Messages, m => m.Contains("Commit 20 is unusable") && m.Contains(Path.GetFileName(trainerFile)) && m.Contains("sha256 mismatch"));
        Assert.True(ActorRun.MaxAbsDiff(run.Reference(out _), run.CommittedWeights(30)) <= 1e-5);
    }
}

/// <summary>Resident memory is a process-wide number, so this test runs alone: no other test class allocates
/// while it measures.</summary>
[CollectionDefinition("memory", DisableParallelization = true)]
public sealed class MemoryCollection : ICollectionFixture<MoceFixture>;

[Collection("memory")]
public class MemoryTests(MoceFixture fx, Xunit.Abstractions.ITestOutputHelper output)
{
    private static readonly MoeConfig Moe = MoceFixture.Moe with { Layers = [0, 1] };

    /// <summary>Resident memory, and the exact count behind the classic TorchSharp leak: tensors the compute threads
    /// create outside any dispose scope, which only a finalizer frees (a .grad read outside a scope leaks one handle per
    /// parameter per step). Resident memory alone hides such a leak until the collector runs; the count does not.</summary>
    [Fact]
    public void Resident_memory_and_unscoped_tensors_stay_flat_from_step_100_to_step_500()
    {
        var train = Tiny.Train(steps: 500);
        var run = new ActorRun(fx, Moe, train);
        var rss = new Dictionary<long, long>();
        var unscoped = new Dictionary<long, long>();
        var setup = run.Setup();
        ActorEngine.Run(setup, run.RunDir, 500, 250, 2, new SupervisorHooks(OnStep: m =>
        {
            if (m.Step is not (99 or 499)) return;
            unscoped[m.Step] = setup.Threads.TensorsCreatedOutsideScope;
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
            using var self = Process.GetCurrentProcess();
            rss[m.Step] = self.WorkingSet64;
        }), timeout: TimeSpan.FromMinutes(10));
        double growth = (rss[499] - rss[99]) / (double)rss[99];
        output.WriteLine($"RSS after step 100: {rss[99] >> 20} MiB; after step 500: {rss[499] >> 20} MiB ({growth:+0.0%;-0.0%}); " +
                         $"tensors created outside a dispose scope: {unscoped[99]} -> {unscoped[499]}");
        Assert.True(growth <= 0.05, $"RSS {rss[99] >> 20} MiB at step 100, {rss[499] >> 20} MiB at step 500 (+{growth:P1})");
        Assert.True(unscoped[499] == unscoped[99], $"the compute threads created {unscoped[499] - unscoped[99]} tensors outside a dispose scope in steps 100..499");
    }
}
