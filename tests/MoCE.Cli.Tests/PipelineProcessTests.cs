using System.Text.Json;
using static MoCE.Cli.Tests.PretrainProcessTests;

namespace MoCE.Cli.Tests;

/// <summary>The whole method through the real `moce` binary on the committed sample, with a baby model.</summary>
public class PipelineProcessTests
{
    private static readonly string[] Baby =
    [
        .. MoCE.Cli.Tests.Baby.Model,
        "-o", "pretrain.steps=20", "-o", "train.steps=10", "-o", "pretrain.batch-size=32", "-o", "train.batch-size=32",
        "-o", "pretrain.log-every=10", "-o", "train.log-every=5",
        "-o", "eval.train-images=400", "-o", "eval.test-images=200", "-o", "eval.probe-epochs=3",
    ];

    private static string NewRun() => Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N"));

    [Fact]
    public void Pipeline_runs_every_phase_and_a_rerun_skips_finished_work()
    {
        var run = NewRun();
        var (code, output) = Moce(["pipeline", "--run", run, .. Baby]);
        Assert.True(code == 0, output);

        var cluster = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, "cluster", "report.json"))).RootElement;
        Assert.Equal(3000, cluster.GetProperty("images").GetInt32());
        Assert.Equal(4, cluster.GetProperty("clusters").GetArrayLength());
        Assert.InRange(cluster.GetProperty("nmi").GetDouble(), 0.0, 1.0);

        foreach (var m in new[] { "moce", "token-moe", "dense" })
        {
            Assert.Equal(11, File.ReadAllLines(Path.Combine(run, $"train-{m}", "metrics.csv")).Length);
            Assert.True(File.Exists(Path.Combine(run, $"train-{m}", "summary.json")), m);
        }
        // per-expert routing of every MoCE step: 10 steps × 2 layers × 3 experts
        var experts = File.ReadAllLines(Path.Combine(run, "train-moce", "experts.csv"));
        Assert.Equal("step,block,expert,tokens,loss_share,gate_entropy", experts[0]);
        Assert.Equal(1 + 10 * 2 * 3, experts.Length);

        var custom = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, "customize", "footwear", "report.json"))).RootElement;
        Assert.Equal(2, custom.GetProperty("Experts").GetArrayLength());
        Assert.Equal(custom.GetProperty("DenseParameters").GetInt64(), custom.GetProperty("ExtractedParameters").GetInt64());
        Assert.True(custom.GetProperty("FullParameters").GetInt64() > custom.GetProperty("ExtractedParameters").GetInt64());

        var results = File.ReadAllLines(Path.Combine(run, "eval", "results.csv"));
        Assert.Equal(1 + 3 * 4, results.Length); // 3 tasks × 4 models
        foreach (var model in new[] { "dense MAE", "TokenMoE", "MoCE (full)", "MoCE-customized" })
            Assert.Equal(3, results.Count(r => r.Split(',')[1] == model));
        Assert.Contains("| MoCE-customized |", File.ReadAllText(Path.Combine(run, "eval", "results.md")));

        (code, output) = Moce(["pipeline", "--run", run, .. Baby]);
        Assert.True(code == 0, output);
        Assert.Contains("Run already complete at step 20", output);
        Assert.Contains("Clustering already done", output);
        Assert.Equal(11, File.ReadAllLines(Path.Combine(run, "train-moce", "metrics.csv")).Length);
    }

    [Fact]
    public void Phases_out_of_order_are_clear_errors()
    {
        var run = NewRun();
        var (code, output) = Moce(["cluster", "--run", run, .. Baby]);
        Assert.Equal(2, code);
        Assert.Contains("run `moce pretrain` on this run first", output);

        (code, output) = Moce(["pretrain", "--run", run, .. Baby]);
        Assert.True(code == 0, output);
        (code, output) = Moce(["train", "--run", run, .. Baby]);
        Assert.Equal(2, code);
        Assert.Contains("run `moce cluster` on this run first", output);

        (code, output) = Moce(["train", "--run", run, "--method", "sparse", .. Baby]);
        Assert.Equal(2, code);
        Assert.Contains("expected moce, token-moe or dense", output);
        (code, output) = Moce(["customize", "--run", run, "--task", "shoes", .. Baby]);
        Assert.Equal(2, code);
        Assert.Contains("no task 'shoes'", output);
    }
}
