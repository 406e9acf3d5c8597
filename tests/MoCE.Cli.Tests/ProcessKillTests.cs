using System.Diagnostics;
using MoCE.Core.Checkpoints;
using static MoCE.Cli.Tests.PretrainProcessTests;

namespace MoCE.Cli.Tests;

/// <summary>Kills the real `moce train` process (actor engine) with SIGKILL at steps drawn from a seed, resumes it,
/// and compares the result with an uninterrupted run bit for bit.</summary>
public class ProcessKillTests
{
    private static readonly string[] Baby =
    [
        .. MoCE.Cli.Tests.Baby.Model,
        "-o", "pretrain.steps=20", "-o", "pretrain.batch-size=32", "-o", "train.batch-size=16",
        "-o", "train.steps=150", "-o", "train.checkpoint-every=10", "-o", "train.log-every=1",   // every step logged: any step can be a kill point
    ];

    private static string[] Train(string run) => ["train", "--run", run, "--engine", "actors", .. Baby];

    private static Dictionary<string, float[]> FinalWeights(string run, long steps = 150)
    {
        var store = new CheckpointStore(Path.Combine(run, "train-moce", "checkpoints"));
        var commits = new CommitLog(store).Commits;
        foreach (var c in commits) foreach (var p in c.Parts) store.Verify(p);     // every kept commit verifies
        var w = new Dictionary<string, float[]>();
        foreach (var p in commits[^1].Parts)
        {
            using var c = store.Load(p);
            foreach (var (n, t) in TrainerCheckpoint.ModelWeights(c)) w[n] = t.data<float>().ToArray();
        }
        Assert.Equal(steps, commits[^1].Step);
        return w;
    }

    [Fact]
    public void Sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run()
    {
        var a = Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N"));
        var (code, output) = Moce(["pretrain", "--run", a, .. Baby]);
        Assert.True(code == 0, output);
        (code, output) = Moce(["cluster", "--run", a, .. Baby]);
        Assert.True(code == 0, output);
        var b = a + "-uninterrupted";
        CopyDirectory(a, b);

        (code, output) = Moce(Train(b));
        Assert.True(code == 0, output);

        // three kills at steps drawn from the seed: the moment the log shows that step done (the process is then
        // already in the next one, between commits), not after a wall-clock delay
        var rng = new Random(1234);
        int kills = 0;
        foreach (int target in new[] { rng.Next(20, 50), rng.Next(60, 90), rng.Next(100, 130) })
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "moce.dll"));
            foreach (var arg in Train(a)) psi.ArgumentList.Add(arg);
            using var p = Process.Start(psi)!;
            using var reached = new ManualResetEventSlim();
            p.OutputDataReceived += (_, e) =>
            {
                var m = e.Data is null ? null : System.Text.RegularExpressions.Regex.Match(e.Data, @"\[actors\] step (\d+)/");
                if (m is not { Success: true } || int.Parse(m.Groups[1].Value) < target || reached.IsSet) return;
                p.Kill(entireProcessTree: true);   // SIGKILL: no shutdown, no final commit
                reached.Set();
            };
            p.ErrorDataReceived += (_, _) => { };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            if (reached.Wait(ProcessTimeout)) kills++;                   // bounded against a hang, not a busy machine
            else p.Kill(entireProcessTree: true);
            Assert.True(p.WaitForExit(ProcessTimeout), "the killed process did not exit");
            Assert.True(reached.IsSet, $"kill {kills + 1}: step {target} was not reached within {ProcessTimeout.TotalMinutes:F0} min");
        }
        Assert.Equal(3, kills);
        (code, output) = Moce(Train(a));
        Assert.True(code == 0, output);

        var expected = FinalWeights(b);
        var got = FinalWeights(a);
        Assert.Equal(expected.Keys.Order(), got.Keys.Order());
        double max = expected.Max(kv => kv.Value.Zip(got[kv.Key], (x, y) => Math.Abs(x - y)).Max());
        Assert.True(max == 0, $"max |Δw| = {max} after {kills} kills: resume must be bit for bit (one AdamW step moves a weight by less than 1e-5 here)");
        Assert.Equal(151, File.ReadAllLines(Path.Combine(a, "train-moce", "metrics.csv")).Length); // every step once

        (code, output) = Moce("status", a);
        Assert.True(code == 0, output);
        Assert.Contains("train-moce (actors): committed step 150", output);
        foreach (var owner in new[] { "trainer", "router", "expert-0", "expert-1", "expert-2" })
            Assert.Matches($@"{owner}\s+step 150 .* ok", output);
    }

    /// <summary>A commit is written in the background while training goes on, and journaled only once every part is
    /// durable. Here the router's part of the cut after step 20 takes ten minutes to write (a chaos slow-persist): the run
    /// trains on past step 23 with that commit still unjournaled, and is SIGKILLed there. The journal still ends at commit
    /// 10, the resume restores it, and the resumed run equals an uninterrupted one bit for bit.</summary>
    [Fact]
    public void Sigkill_during_a_background_persist_loses_nothing_and_the_interrupted_commit_is_never_journaled()
    {
        string[] baby = [.. MoCE.Cli.Tests.Baby.Model, "-o", "pretrain.steps=20", "-o", "pretrain.batch-size=32", "-o", "train.batch-size=16",
                         "-o", "train.steps=40", "-o", "train.checkpoint-every=10", "-o", "train.log-every=1"];
        var a = Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N"));
        foreach (var cmd in new[] { "pretrain", "cluster" })
        {
            var (c, o) = Moce([cmd, "--run", a, .. baby]);
            Assert.True(c == 0, o);
        }
        var b = a + "-uninterrupted";
        CopyDirectory(a, b);
        var (code, output) = Moce(["train", "--run", b, "--engine", "actors", .. baby]);
        Assert.True(code == 0, output);

        var schedule = Path.Combine(a, "slow-persist.conf");
        File.WriteAllText(schedule, "chaos { events = [ { kind = slow-persist, owner = router, step = 20, ms = 600000 } ] }");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "moce.dll"));
        foreach (var arg in (string[])["train", "--run", a, "--engine", "actors", "--chaos", schedule, .. baby]) psi.ArgumentList.Add(arg);
        using var p = Process.Start(psi)!;
        using var reached = new ManualResetEventSlim();
        var log = new System.Collections.Concurrent.ConcurrentQueue<string>();
        void Read(StreamReader r) => new Thread(() =>
        {
            while (r.ReadLine() is { } line)
            {
                log.Enqueue(line);
                var m = System.Text.RegularExpressions.Regex.Match(line, @"\[actors\] step (\d+)/");
                if (m.Success && int.Parse(m.Groups[1].Value) >= 23 && !reached.IsSet) { p.Kill(entireProcessTree: true); reached.Set(); }
            }
        }) { IsBackground = true }.Start();
        Read(p.StandardOutput);
        Read(p.StandardError);
        bool killed = reached.Wait(ProcessTimeout);                      // bounded against a hang, not a busy machine
        if (!killed) p.Kill(entireProcessTree: true);
        Assert.True(p.WaitForExit(ProcessTimeout), "the killed process did not exit");
        Assert.True(killed, "step 23 was not reached: training did not go on while the commit of step 20 was written\n" + string.Join("\n", log));
        Assert.Contains(log, l => l.Contains("slow-persist", StringComparison.Ordinal));
        Assert.DoesNotContain(log, l => l.Contains("Committed checkpoint 20", StringComparison.Ordinal));

        (code, output) = Moce("status", a);                              // what the journal holds after the kill
        Assert.True(code == 0, output);
        Assert.Contains("train-moce (actors): committed step 10", output);

        (code, output) = Moce(["train", "--run", a, "--engine", "actors", .. baby]);
        Assert.True(code == 0, output);
        Assert.Contains("Resumed from committed checkpoint 10", output);
        var expected = FinalWeights(b, 40);
        var got = FinalWeights(a, 40);
        Assert.Equal(expected.Keys.Order(), got.Keys.Order());
        double max = expected.Max(kv => kv.Value.Zip(got[kv.Key], (x, y) => Math.Abs(x - y)).Max());
        Assert.True(max == 0, $"max |Δw| = {max}: the resume from commit 10 must equal the uninterrupted run bit for bit");
    }

    private static void CopyDirectory(string from, string to)
    {
        foreach (var d in Directory.GetDirectories(from, "*", SearchOption.AllDirectories)) Directory.CreateDirectory(d.Replace(from, to));
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from, "*", SearchOption.AllDirectories)) File.Copy(f, f.Replace(from, to));
    }
}

/// <summary>A run that cannot go on ends with one clear error line and exit code 1, not a stack trace.</summary>
public class RunFailureProcessTests
{
    [Fact]
    public void A_run_whose_commits_are_all_corrupt_stops_with_one_clear_error_line()
    {
        var run = Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N"));
        string[] baby = [.. Baby.Model, "-o", "pretrain.steps=10", "-o", "pretrain.batch-size=32", "-o", "train.batch-size=16",
                         "-o", "train.steps=20", "-o", "train.checkpoint-every=10", "-o", "train.log-every=10"];
        foreach (var cmd in new[] { "pretrain", "cluster", "train" })
        {
            var (c, o) = Moce([cmd, "--run", run, .. baby]);
            Assert.True(c == 0, o);
        }
        foreach (var f in Directory.GetFiles(Path.Combine(run, "train-moce", "checkpoints"), "*.ckpt"))
        {
            var bytes = File.ReadAllBytes(f);
            bytes[bytes.Length / 2] ^= 0xFF;                                       // real bytes flipped on disk
            File.WriteAllBytes(f, bytes);
        }
        var (code, output) = Moce(["train", "--run", run, .. baby]);
        Assert.True(code == 1, output);
        Assert.Contains("no committed checkpoint of the", output);
        Assert.Contains("Stopping;", output);
        Assert.DoesNotContain("   at ", output);                                  // no stack trace
        Assert.DoesNotContain("FTL", output);
    }
}
