using System.Globalization;
using System.Text;
using System.Text.Json;
using MoCE.Actors;
using MoCE.Actors.Messages;
using MoCE.Core.Config;
using MoCE.Core.Training;

namespace MoCE.Cli.Commands;

/// <summary><c>moce chaos compare --chaos FILE [--run DIR] [--straggler-timeout MS] ...</c>: one chaos schedule under
/// each recovery policy, against the baseline without faults, all from the run's dense MAE and clustering (run
/// `moce pretrain` and `moce cluster` first) with the same seed. Each policy trains in its own run directory under
/// DIR/chaos-compare/ (resumable, each skipped once finished); then one table (compare.md) and one loss plot.</summary>
public static class ChaosCommand
{
    /// <summary>The policies compared: name, overrides.</summary>
    private static IReadOnlyList<(string name, string[] overrides)> Policies(double stragglerMs) =>
    [
        ("baseline", []),
        ("global-rollback", ["moce.actors.policy=global-rollback"]),
        ("expert-local", ["moce.actors.policy=expert-local"]),
        ("expert-exact", ["moce.actors.policy=expert-exact"]),
        ("straggler-timeout", ["moce.actors.policy=global-rollback", string.Create(CultureInfo.InvariantCulture, $"moce.actors.straggler-timeout={stragglerMs}")]),
    ];

    public static int Run(CliArgs cli, CancellationToken ct)
    {
        if (cli.Positionals is not ["compare"])
            throw new ConfigException("chaos", $"expected the subcommand compare: moce chaos compare --chaos FILE (got '{string.Join(" ", cli.Positionals)}')");
        cli.RejectFlagsExcept("chaos", "straggler-timeout");
        var file = cli.Flags.TryGetValue("chaos", out var f) ? f : throw new ConfigException("--chaos", "is required: the schedule to compare the policies under");
        ChaosSchedule.Load(file);                                                    // a bad schedule fails before any training
        double stragglerMs = cli.Flags.TryGetValue("straggler-timeout", out var t)
            ? double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out var ms) && ms > 0 ? ms : throw new ConfigException("--straggler-timeout", $"expected milliseconds > 0, got '{t}'")
            : 200;
        var root = Path.GetFullPath(cli.RunDir);
        foreach (var needed in new[] { "pretrain", "cluster" })
            if (!Directory.Exists(Path.Combine(root, needed)))
                throw new ConfigException("--run", $"{root} has no {needed}/: run `moce pretrain` and `moce cluster` on it first");

        var results = new List<(string policy, string dir)>();
        foreach (var (name, overrides) in Policies(stragglerMs))
        {
            var run = Path.Combine(root, "chaos-compare", name);
            var phase = Path.Combine(run, Artifacts.TrainPhase(MoeMethod.Moce));
            if (!File.Exists(Path.Combine(phase, "summary.json")))
            {
                CopyPrepared(root, run);
                var sub = cli with { Command = "train", Run = run, Overrides = [.. cli.Overrides, .. overrides], Flags = new Dictionary<string, string>(), Positionals = [] };
                var s = Session.Open(sub.Request);
                Serilog.Log.Information("chaos compare: {Policy}", name);
                var plan = name == "baseline" ? null : ChaosSchedule.Load(file);
                if (plan is not null) File.Copy(file, Path.Combine(s.Run.Phase(Artifacts.TrainPhase(MoeMethod.Moce)), "chaos.conf"), overwrite: true);
                TrainingPhase.Execute(s, MoeMethod.Moce, "actors", ct, chaos: plan);
                ct.ThrowIfCancellationRequested();
            }
            results.Add((name, phase));
        }
        var baseline = results[0].dir;
        foreach (var (_, dir) in results.Skip(1)) ReportCommand.Write(dir, baseline);
        var out_ = Path.Combine(root, "chaos-compare");
        var md = Table(results, file);
        File.WriteAllText(Path.Combine(out_, "compare.md"), md);
        LossPlot(Path.Combine(out_, "loss.png"), results);
        Console.WriteLine(md);
        Console.WriteLine($"written: {Path.Combine(out_, "compare.md")}, {Path.Combine(out_, "loss.png")}, and a report per policy in chaos-compare/POLICY/train-moce/report/");
        return 0;
    }

    /// <summary>The run's prepared phases (config, pretrain, cluster) into a policy's run directory, with a run id of its own.</summary>
    private static void CopyPrepared(string from, string to)
    {
        if (File.Exists(Path.Combine(to, "config.conf"))) return;                    // prepared by an earlier call: resume it
        Directory.CreateDirectory(to);
        File.Copy(Path.Combine(from, "config.conf"), Path.Combine(to, "config.conf"));
        foreach (var phase in new[] { "pretrain", "cluster" })
        {
            foreach (var d in Directory.GetDirectories(Path.Combine(from, phase), "*", SearchOption.AllDirectories)) Directory.CreateDirectory(d.Replace(from, to));
            Directory.CreateDirectory(Path.Combine(to, phase));
            foreach (var f in Directory.GetFiles(Path.Combine(from, phase), "*", SearchOption.AllDirectories)) File.Copy(f, f.Replace(from, to));
        }
    }

    private static string Table(List<(string policy, string dir)> results, string schedule)
    {
        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        md.AppendLine($"# Recovery policies under `{schedule}`");
        md.AppendLine();
        md.AppendLine("| policy | final loss | gap to baseline | wall (s) | images/s | recoveries | recovery time (ms, total) | steps replayed | steps missed | images rerouted |");
        md.AppendLine("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        double? baseLoss = null;
        foreach (var (policy, dir) in results)
        {
            var rows = File.ReadLines(Path.Combine(dir, "metrics.csv")).Skip(1).Select(l => l.Split(',')).ToList();
            double loss = rows.TakeLast(20).Average(p => double.Parse(p[1], inv));
            double wall = double.Parse(rows[^1][6], inv);
            double ips = rows.Count * double.Parse(rows[0][4], inv) / Math.Max(1e-9, wall);
            baseLoss ??= loss;
            var rec = File.Exists(Path.Combine(dir, "recoveries.json"))
                ? JsonSerializer.Deserialize<List<RecoveryRecord>>(File.ReadAllText(Path.Combine(dir, "recoveries.json"))) ?? [] : [];
            md.AppendLine(string.Create(inv, $"| {policy} | {loss:F4} | {loss - baseLoss.Value:+0.0000;-0.0000;0} | {wall:F1} | {ips:F0} | {rec.Count} | {rec.Sum(r => r.DetectionToRecoveredMs):F0} | {rec.Sum(r => r.StepsReplayed)} | {rec.Sum(r => r.StepsMissed)} | {rec.Sum(r => r.ReroutedImages)} |"));
        }
        md.AppendLine();
        md.AppendLine("Final loss: the mean of the last 20 steps. Wall and images/s: the phase's own clock, recoveries and waits");
        md.AppendLine("included. Global-rollback replays to the exact run without faults; expert-local and the straggler timeout go");
        md.AppendLine("on with experts missing (their rows rerouted) and are approximate. One report per policy with the fault table");
        md.AppendLine("is in chaos-compare/POLICY/train-moce/report/.");
        return md.ToString();
    }

    private static void LossPlot(string path, List<(string policy, string dir)> results)
    {
        var plt = new ScottPlot.Plot();
        foreach (var (policy, dir) in results)
        {
            var rows = File.ReadLines(Path.Combine(dir, "metrics.csv")).Skip(1).Select(l => l.Split(','))
                .Select(p => (step: double.Parse(p[0], CultureInfo.InvariantCulture), loss: double.Parse(p[1], CultureInfo.InvariantCulture))).ToList();
            var line = plt.Add.ScatterLine(rows.Select(r => r.step).ToArray(), ReportCommand.Smooth(rows.Select(r => r.loss).ToList(), 10));
            line.LegendText = policy;
        }
        plt.Title("Loss (mean of 10 steps) under each recovery policy");
        plt.XLabel("step");
        plt.YLabel("loss");
        plt.ShowLegend();
        plt.SavePng(path, 900, 420);
    }
}
