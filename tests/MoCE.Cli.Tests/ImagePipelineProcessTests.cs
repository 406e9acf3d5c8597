using System.Diagnostics;
using System.Text.Json;
using MoCE.Core.Checkpoints;
using static MoCE.Cli.Tests.PretrainProcessTests;

namespace MoCE.Cli.Tests;

/// <summary>The real `moce` binary on the committed RGB sample (preset shapes: an image folder of JPEG/PNG, augmented).</summary>
public class ImagePipelineProcessTests
{
    private static readonly string[] Shapes =
    [
        "--preset", "shapes", "-o", "pretrain.steps=40", "-o", "pretrain.checkpoint-every=20", "-o", "pretrain.log-every=1",
        "-o", "train.steps=24", "-o", "train.checkpoint-every=8", "-o", "train.log-every=1", "-o", "data.workers=2", "-o", "eval.probe-epochs=5",
    ];

    private static string NewRun() => Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N"));

    [Fact]
    public void The_pipeline_runs_on_a_folder_of_rgb_images_with_augmentation()
    {
        var run = NewRun();
        var (code, output) = Moce(["pipeline", "--run", run, .. Shapes]);
        Assert.True(code == 0, output);
        Assert.Contains("Dataset shapes Train: 240 images", output);
        var cluster = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, "cluster", "report.json"))).RootElement;
        Assert.Equal(240, cluster.GetProperty("images").GetInt32());
        Assert.Equal(25, File.ReadAllLines(Path.Combine(run, "train-moce", "metrics.csv")).Length);
        // TensorBoard beside metrics.csv, in every phase: the actor engine's with the experts' tokens and gate entropy
        var board = MoCE.Tests.Shared.TensorBoardEvents.Read(Path.Combine(run, "train-moce", "tensorboard"));
        Assert.Equal(Enumerable.Range(0, 24).Select(i => (long)i), board.Where(p => p.Tag == "loss").Select(p => p.Step));
        foreach (var tag in new[] { "experts/block1/tokens/expert0", "experts/block3/tokens/expert2", "experts/block1/gate_entropy" })
            Assert.Equal(24, board.Count(p => p.Tag == tag));
        Assert.All(board.Where(p => p.Tag == "experts/block1/gate_entropy"), p => Assert.InRange(p.Value, 0f, (float)Math.Log(3) + 1e-4f));
        Assert.Equal(40, MoCE.Tests.Shared.TensorBoardEvents.Read(Path.Combine(run, "pretrain", "tensorboard")).Count(p => p.Tag == "loss"));
        var results = File.ReadAllLines(Path.Combine(run, "eval", "results.csv"));
        Assert.Equal(1 + 2 * 4, results.Length);                      // 2 tasks × 4 models
        Assert.True(File.Exists(Path.Combine(run, "customize", "smooth", "report.json")));
        var losses = File.ReadAllLines(Path.Combine(run, "pretrain", "metrics.csv")).Skip(1).Select(l => double.Parse(l.Split(',')[1], System.Globalization.CultureInfo.InvariantCulture)).ToArray();
        Assert.True(losses[^5..].Average() < 0.7 * losses[..5].Average(), $"pre-training on the RGB sample did not learn: {losses[..5].Average():F3} → {losses[^5..].Average():F3}");
    }

    /// <summary>Starts `moce ARGS` and sends it SIGINT (Ctrl-C) once its log shows step <paramref name="target"/> done.</summary>
    private static (int code, string output) Interrupted(string[] args, string pattern, int target, Action? atTarget = null)
    {
        // SIGINT at its default in the child: a suite started as a background job (`bash .ci/run &`) inherits SIGINT
        // ignored, as POSIX shells start such jobs, and .NET keeps an inherited SIG_IGN, so Ctrl-C would never arrive
        var psi = new ProcessStartInfo("env") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("--default-signal=INT");
        psi.ArgumentList.Add("dotnet");
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "moce.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        using var reached = new ManualResetEventSlim();
        var log = new System.Text.StringBuilder();
        void OnLine(string line)
        {
            lock (log) log.AppendLine(line);
            var m = System.Text.RegularExpressions.Regex.Match(line, pattern);
            if (!m.Success || int.Parse(m.Groups[1].Value) < target || reached.IsSet) return;
            atTarget?.Invoke();
            reached.Set();
            using var kill = Process.Start("kill", ["-INT", p.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
            kill.WaitForExit();
        }
        // each stream on a thread of its own, so that a busy thread pool cannot delay the step's line and the signal
        Thread Reader(StreamReader r, Action<string> onLine)
        {
            var t = new Thread(() => { while (r.ReadLine() is { } line) onLine(line); }) { IsBackground = true };
            t.Start();
            return t;
        }
        var readers = new[] { Reader(p.StandardOutput, OnLine), Reader(p.StandardError, l => { lock (log) log.AppendLine(l); }) };
        bool exited = p.WaitForExit(ProcessTimeout);
        if (!exited) p.Kill(entireProcessTree: true);
        p.WaitForExit();
        foreach (var t in readers) t.Join(TimeSpan.FromSeconds(30));             // the streams end with the process
        Assert.True(exited, $"moce {args[0]} did not exit within {ProcessTimeout.TotalMinutes:F0} min of Ctrl-C:\n{log}");
        Assert.True(reached.IsSet, $"step {target} was not reached:\n{log}");
        return (p.ExitCode, log.ToString());
    }

    private static int FreePort()
    {
        using var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        return ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
    }

    /// <summary>One scrape of a Prometheus endpoint: every moce_ sample line, "name{labels}" → value.</summary>
    private static Dictionary<string, double> Scrape(int port)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        return http.GetStringAsync($"http://127.0.0.1:{port}/metrics").GetAwaiter().GetResult().Split('\n')
            .Where(l => l.StartsWith("moce_", StringComparison.Ordinal))
            .Select(l => l.Split(' ')).ToDictionary(p => p[0], p => double.Parse(p[1], System.Globalization.CultureInfo.InvariantCulture));
    }

    private static Dictionary<string, float[]> Weights(string run, string phase, long step)
    {
        var store = new CheckpointStore(Path.Combine(run, phase, "checkpoints"));
        var commits = new CommitLog(store).Commits;
        Assert.Equal(step, commits[^1].Step);
        var w = new Dictionary<string, float[]>();
        foreach (var part in commits[^1].Parts)
        {
            using var c = store.Load(part);
            foreach (var (n, t) in TrainerCheckpoint.ModelWeights(c)) w[n] = t.data<float>().ToArray();
        }
        return w;
    }

    private static string[] Losses(string run, string phase) =>
        File.ReadAllLines(Path.Combine(run, phase, "metrics.csv")).Select(l => string.Join(',', l.Split(',')[..2])).ToArray();

    [Fact]
    public void Ctrl_c_then_resume_with_augmentation_and_workers_equals_an_uninterrupted_run_bit_for_bit()
    {
        var a = NewRun();
        var b = a + "-uninterrupted";
        foreach (var phase in new[] { "pretrain", "cluster", "train" })
        {
            string[] args = [phase, "--run", b, .. Shapes, .. phase == "train" ? new[] { "--engine", "actors" } : []];
            var (code, output) = Moce(args);
            Assert.True(code == 0, output);
        }

        // the interrupt points, drawn from a seed; Ctrl-C goes out as soon as the step's line is read
        var rng = new Random(19);
        int pretrainAt = rng.Next(3, 35), trainAt = rng.Next(2, 20);
        var (c1, o1) = Interrupted(["pretrain", "--run", a, .. Shapes], @"\] step (\d+)/40", pretrainAt);
        Assert.True(o1.Contains("Ctrl-C", StringComparison.Ordinal), $"pre-training ended before Ctrl-C at step {pretrainAt} took effect:\n{o1}");

        // pre-training serves the Prometheus metrics: scraped from a run that cannot end while the scrape takes
        int port = FreePort();
        Dictionary<string, double>? scraped = null;
        var (_, om) = Interrupted(["pretrain", "--run", a + "-metrics", .. Shapes, "-o", "pretrain.steps=100000", "-o", $"metrics.port={port}"],
                                  @"\] step (\d+)/100000", 3, () => scraped = Scrape(port));
        Assert.True(om.Contains("Ctrl-C", StringComparison.Ordinal), om);
        Assert.NotNull(scraped);
        Assert.True(scraped["moce_steps_total"] >= 3, $"moce_steps_total {scraped["moce_steps_total"]} at step 3");
        Assert.True(scraped["moce_loss"] > 0 && scraped.ContainsKey("moce_committed_step") && scraped.ContainsKey("moce_images_per_second"), string.Join(", ", scraped.Keys));
        var (code2, o2) = Moce(["pretrain", "--run", a, .. Shapes]);
        Assert.True(code2 == 0, o2);
        Assert.Contains("Resumed from committed checkpoint", o2);
        (code2, o2) = Moce(["cluster", "--run", a, .. Shapes]);
        Assert.True(code2 == 0, o2);
        var (c3, o3) = Interrupted(["train", "--run", a, "--engine", "actors", .. Shapes], @"\[actors\] step (\d+)/24", trainAt);
        Assert.True(o3.Contains("Ctrl-C", StringComparison.Ordinal), $"training ended before Ctrl-C at step {trainAt} took effect:\n{o3}");
        (code2, o2) = Moce(["train", "--run", a, "--engine", "actors", .. Shapes]);
        Assert.True(code2 == 0, o2);

        foreach (var (phase, steps) in new[] { ("pretrain", 40L), ("train-moce", 24L) })
        {
            Assert.Equal(Losses(b, phase), Losses(a, phase));          // every step once, with the same loss
            var expected = Weights(b, phase, steps);
            var got = Weights(a, phase, steps);
            Assert.Equal(expected.Keys.Order(), got.Keys.Order());
            double max = expected.Max(kv => kv.Value.Zip(got[kv.Key], (x, y) => Math.Abs(x - y)).Max());
            Assert.True(max == 0, $"{phase}: max |Δw| = {max} after Ctrl-C at step {(phase == "pretrain" ? pretrainAt : trainAt)} (exit {(phase == "pretrain" ? c1 : c3)}) and a resume");
        }
    }
}
