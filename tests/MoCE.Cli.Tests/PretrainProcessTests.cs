using System.Diagnostics;
using MoCE.Core.Checkpoints;
using MoCE.Core.Data;

namespace MoCE.Cli.Tests;

/// <summary>Runs the real `moce` binary in a child process on the committed sample.</summary>
public class PretrainProcessTests
{
    private static readonly string[] TinyModel =
    [
        "-o", "model.patch-size=7", "-o", "model.dim=32", "-o", "model.depth=2", "-o", "model.heads=2",
        "-o", "model.decoder-dim=16", "-o", "model.decoder-depth=1", "-o", "model.decoder-heads=2",
        "-o", "moe.layers=[0, 1]", "-o", "pretrain.batch-size=16", "-o", "pretrain.log-every=5", "-o", "pretrain.checkpoint-every=10",
        "-o", $"datasets.fashion-mnist.path={Datasets.SampleDir("fashion-mnist-sample")}", "-o", $"datasets.mnist.path={Datasets.SampleDir("mnist-sample")}", "-o", "threads=1",
    ];

    /// <summary>A hang fails the test with the output so far. The bound is generous: it catches a process that never
    /// ends, not a slow one on a busy machine (these runs take seconds to a minute).</summary>
    public static readonly TimeSpan ProcessTimeout = TimeSpan.FromMinutes(10);

    public static (int code, string output) Moce(params string[] args) => MoceWith(new Dictionary<string, string>(), args);

    /// <summary><see cref="Moce"/> with environment variables set for the child only.</summary>
    public static (int code, string output) MoceWith(IReadOnlyDictionary<string, string> env, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var (k, v) in env) psi.Environment[k] = v;
        psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "moce.dll"));
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(ProcessTimeout))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            throw new TimeoutException($"moce {string.Join(' ', args.Take(1))} did not finish in {ProcessTimeout.TotalMinutes:F0} min:\n{stdout.Result}{stderr.Result}");
        }
        p.WaitForExit();                                                     // the output is read to its end
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    [Fact]
    public void Pretrain_writes_the_run_and_a_second_invocation_resumes_it()
    {
        var run = Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N"));
        var (code, output) = Moce(["pretrain", "--run", run, "-o", "pretrain.steps=20", .. TinyModel]);
        Assert.True(code == 0, output);
        Assert.Contains("step 20/20", output);
        Assert.True(File.Exists(Path.Combine(run, "config.conf")));
        Assert.True(File.Exists(Path.Combine(run, "logs", "moce.log")));
        var metrics = File.ReadAllLines(Path.Combine(run, "pretrain", "metrics.csv"));
        Assert.Equal(21, metrics.Length); // header + 20 steps
        Assert.True(File.Exists(Path.Combine(run, "pretrain", "summary.json")));

        // extend the same run: it resumes from the committed step 20 and runs 10 more
        (code, output) = Moce(["pretrain", "--run", run, "-o", "pretrain.steps=30", .. TinyModel]);
        Assert.True(code == 0, output);
        Assert.Contains("Resumed from committed checkpoint 20", output);
        Assert.Contains("step 30/30", output);
        Assert.Equal(31, File.ReadAllLines(Path.Combine(run, "pretrain", "metrics.csv")).Length);
        var commits = new CommitLog(new CheckpointStore(Path.Combine(run, "pretrain", "checkpoints"))).Commits;
        Assert.Equal(30, commits[^1].Step);

        // changing the architecture of an existing run is refused, naming the key
        (code, output) = Moce(["pretrain", "--run", run, "-o", "pretrain.steps=30", .. TinyModel, "-o", "model.dim=64"]);
        Assert.Equal(2, code);
        Assert.Contains("moce.model.dim", output);
    }

    [Fact]
    public void Bad_input_is_a_clear_error_with_exit_code_2()
    {
        var (code, output) = Moce("pretrain", "--run", Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N")), "-o", "datasets.fashion-mnist.path=/nonexistent/dir");
        Assert.Equal(2, code);
        Assert.Contains("/nonexistent/dir: no fashion-mnist training split in this directory", output);
        Assert.Contains("train-images-idx3-ubyte", output);
        (code, output) = Moce("frobnicate");
        Assert.Equal(2, code);
        Assert.Contains("Unrecognized command or argument 'frobnicate'", output);
    }
}
