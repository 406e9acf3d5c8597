using System.Text.Json;
using static MoCE.Cli.Tests.PretrainProcessTests;

namespace MoCE.Cli.Tests;

/// <summary>The researchers' commands with the real binary on the baby run: `moce chaos compare` trains one schedule
/// under each policy against the baseline, `moce report` draws a run's faults and recoveries, `moce status` lists
/// the faults, and a bad schedule is refused by key before anything trains. The straggler sleeps 1 s per block against
/// a 250 ms timeout: what separates it from the other experts is a sleep, which no machine load shortens.</summary>
public class ChaosProcessTests
{
    private static readonly string[] Baby =
    [
        .. MoCE.Cli.Tests.Baby.Model, "-o", "pretrain.steps=20", "-o", "pretrain.batch-size=32", "-o", "train.batch-size=16",
        "-o", "train.steps=60", "-o", "train.checkpoint-every=10", "-o", "train.log-every=20",
    ];

    private const string Schedule = """
        chaos {
          seed = 5
          events = [
            { kind = fail, owner = expert-1, step = 12, phase = backward }
            { kind = straggler, owner = expert-2, from = 20, to = 21, ms = 1000 }
            { kind = corrupt-checkpoint, owner = router, step = 30 }
            { kind = fail, owner = router, step = 41 }
          ]
        }
        """;

    [Fact]
    public void Chaos_compare_and_report_draw_a_real_run_s_faults_and_global_rollback_equals_the_baseline()
    {
        var run = Path.Combine(Path.GetTempPath(), "moce-tests", "chaos-" + Guid.NewGuid().ToString("N"));
        var (code, output) = Moce(["pretrain", "--run", run, .. Baby]);
        Assert.True(code == 0, output);
        (code, output) = Moce(["cluster", "--run", run, .. Baby]);
        Assert.True(code == 0, output);
        var schedule = Path.Combine(run, "schedule.conf");
        File.WriteAllText(schedule, Schedule);

        // a bad schedule names its key, before anything trains
        var bad = Path.Combine(run, "bad.conf");
        File.WriteAllText(bad, "chaos { events = [ { kind = fail, owner = expert-1, step = 3, phase = sideways } ] }");
        (code, output) = Moce(["train", "--run", run, "--chaos", bad, .. Baby]);
        Assert.Equal(2, code);                                                   // a configuration error
        Assert.Contains("chaos.events[0].phase", output);
        Assert.False(Directory.Exists(Path.Combine(run, "train-moce", "checkpoints")));

        (code, output) = Moce(["chaos", "compare", "--run", run, "--chaos", schedule, "--straggler-timeout", "250", .. Baby]);   // 4× below the straggler's sleep, far above a baby expert's answer on a busy machine
        Assert.True(code == 0, output);
        var compare = Path.Combine(run, "chaos-compare");
        var table = File.ReadAllText(Path.Combine(compare, "compare.md"));
        foreach (var policy in new[] { "baseline", "global-rollback", "expert-local", "straggler-timeout" }) Assert.Contains($"| {policy} |", table);
        AssertPng(Path.Combine(compare, "loss.png"));

        // global-rollback replays to the run without faults: the same loss at every step
        static string[] Losses(string dir) => File.ReadAllLines(Path.Combine(dir, "train-moce", "metrics.csv")).Select(l => string.Join(",", l.Split(',')[..2])).ToArray();
        Assert.Equal(Losses(Path.Combine(compare, "baseline")), Losses(Path.Combine(compare, "global-rollback")));
        // under the straggler timeout the slow expert sat out; under expert-local the failed expert did
        Assert.Contains("\"Policy\": \"straggler-timeout\"", File.ReadAllText(Path.Combine(compare, "straggler-timeout", "train-moce", "recoveries.json")));
        Assert.Contains("\"Policy\": \"expert-local\"", File.ReadAllText(Path.Combine(compare, "expert-local", "train-moce", "recoveries.json")));

        // the recoveries are on TensorBoard too, and the loss series holds every step once after the replays
        var rollback = Path.Combine(compare, "global-rollback");
        var board = MoCE.Tests.Shared.TensorBoardEvents.Read(Path.Combine(rollback, "train-moce", "tensorboard"));
        Assert.Contains(board, p => p.Tag == "recovery/global-rollback" && p.Step == 12 && p.Value > 0);
        Assert.Equal(Losses(rollback).Length - 1, board.Where(p => p.Tag == "loss").Select(p => p.Step).Distinct().Count());

        // moce report on the global-rollback run: every fault in the table, with its recovery; the plots
        (code, output) = Moce(["report", rollback, "--baseline", Path.Combine(compare, "baseline")]);
        Assert.True(code == 0, output);
        var report = Path.Combine(rollback, "train-moce", "report");
        var md = File.ReadAllText(Path.Combine(report, "report.md"));
        Assert.Contains("| 12 | expert-1 | fail: throws in backward | global-rollback, commit 10 |", md);
        Assert.Contains("| 41 | router | fail: throws in forward | global-rollback, commit 40 |", md);
        Assert.Contains("corrupt-checkpoint", md);
        Assert.Contains("straggler", md);
        Assert.Contains("+0.0000", md.Replace("-0.0000", "+0.0000"));                // the loss gap under global-rollback is 0
        foreach (var png in new[] { "loss.png", "tokens.png", "routing-block0-start.png", "routing-block0-end.png", "routing-block1-end.png" })
            AssertPng(Path.Combine(report, png));
        var chaos = JsonSerializer.Deserialize<List<JsonElement>>(File.ReadAllText(Path.Combine(rollback, "train-moce", "chaos.json")))!;
        Assert.Equal(4, chaos.Count);

        (code, output) = Moce(["status", rollback]);
        Assert.True(code == 0, output);
        Assert.Contains("injected faults: 4", output);
        Assert.Contains("step 30: router corrupt-checkpoint", output);
    }

    private static void AssertPng(string path)
    {
        Assert.True(File.Exists(path), path);
        var bytes = File.ReadAllBytes(path);
        Assert.True(bytes.Length > 5000, $"{path}: {bytes.Length} bytes");
        Assert.Equal(new byte[] { 0x89, (byte)'P', (byte)'N', (byte)'G' }, bytes[..4]);
    }
}
