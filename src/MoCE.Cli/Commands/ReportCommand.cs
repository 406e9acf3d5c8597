using System.Globalization;
using System.Text;
using System.Text.Json;
using MoCE.Actors;
using MoCE.Actors.Messages;
using MoCE.Runs.Configuration;
using MoCE.Core.Config;

namespace MoCE.Cli.Commands;

/// <summary><c>moce report RUN [--baseline RUN] [--method moce]</c>: what a run's faults did, from its files
/// (metrics.csv, experts.csv, chaos.json, recoveries.json, routing.json): report.md and PNG plots (ScottPlot) in
/// RUN/train-METHOD/report/. Loss over steps against the baseline with each fault marked; tokens per expert over time;
/// the cluster → expert gate at the first and the last commit; a table per fault: its recovery, steps replayed, images
/// rerouted, and the loss gap to the baseline 50 and 200 steps later.</summary>
public static class ReportCommand
{
    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept("baseline", "method");
        var method = MoceConfig.MethodName(cli.Flags.TryGetValue("method", out var m) ? MoceConfig.ParseMethod("--method", m) : MoeMethod.Moce);
        var phase = Artifacts.TrainPhase(MoceConfig.ParseMethod("--method", method));
        var dir = PhaseDir(cli.RunDir, phase, "RUN");
        var baseline = cli.Flags.TryGetValue("baseline", out var b) ? PhaseDir(b, phase, "--baseline") : null;
        var written = Write(dir, baseline);
        Console.WriteLine($"report: {Path.Combine(dir, "report", "report.md")} with {written.Count} plots ({string.Join(", ", written.Select(Path.GetFileName))})");
        return 0;
    }

    private static string PhaseDir(string run, string phase, string what)
    {
        var dir = Path.Combine(Path.GetFullPath(run), phase);
        if (!File.Exists(Path.Combine(dir, "metrics.csv")))
            throw new ConfigException(what, $"{dir} holds no metrics.csv: run `moce train` on {run} first");
        return dir;
    }

    /// <summary>One step's metrics row.</summary>
    private sealed record Row(long Step, double Loss, double ImagesPerSecond, double Wall);

    private static List<Row> Metrics(string dir) =>
        File.ReadLines(Path.Combine(dir, "metrics.csv")).Skip(1).Select(l => l.Split(',')).Select(p => new Row(
            long.Parse(p[0], CultureInfo.InvariantCulture), double.Parse(p[1], CultureInfo.InvariantCulture),
            double.Parse(p[5], CultureInfo.InvariantCulture), double.Parse(p[6], CultureInfo.InvariantCulture))).ToList();

    private static List<T> Json<T>(string dir, string name) =>
        File.Exists(Path.Combine(dir, name)) ? JsonSerializer.Deserialize<List<T>>(File.ReadAllText(Path.Combine(dir, name))) ?? [] : [];

    /// <summary>The loss around a step (mean over ±5 steps): single-step losses are too noisy to compare.</summary>
    private static double? LossNear(IReadOnlyList<Row> rows, long step)
    {
        var near = rows.Where(r => Math.Abs(r.Step - step) <= 5).ToList();
        return near.Count == 0 ? null : near.Average(r => r.Loss);
    }

    /// <summary>One fault and what it took: the first recovery at or after its step (within 20 steps) belongs to it.</summary>
    public sealed record EventRow(ChaosFired Event, RecoveryRecord? Recovery, double? Gap50, double? Gap200);

    /// <summary>Whether a recovery answers a fault: a failure by its owner's; a corrupt part by the recovery that names
    /// its file; a straggler by its sit-out; a message fault by a recovery at its step (the timeout it caused).</summary>
    private static bool Caused(ChaosFired e, RecoveryRecord r) => e.Kind switch
    {
        "fail" => r.Owner.Split(',').Contains(e.Owner),
        "corrupt-checkpoint" => e.Detail.Split(' ')[^1] is var file && r.Error.Contains(file, StringComparison.Ordinal),
        "straggler" => r.Owner == e.Owner && r.Policy == "straggler-timeout",
        "drop" or "delay" or "duplicate" => r.Step == e.Step,
        _ => false,
    };

    public static List<string> Write(string dir, string? baselineDir)
    {
        var outDir = Path.Combine(dir, "report");
        Directory.CreateDirectory(outDir);
        var rows = Metrics(dir);
        var baseRows = baselineDir is null ? null : Metrics(baselineDir);
        var chaos = Json<ChaosFired>(dir, "chaos.json");
        var recoveries = Json<RecoveryRecord>(dir, "recoveries.json");
        var written = new List<string>();

        // the faults, each with the recovery it caused (if any)
        var unmatched = recoveries.ToList();
        var events = chaos.OrderBy(e => e.Step).Select(e =>
        {
            var r = unmatched.Where(x => x.Step >= e.Step && x.Step <= e.Step + 20 && Caused(e, x)).OrderBy(x => x.Step).FirstOrDefault();
            if (r is not null) unmatched.Remove(r);
            double? Gap(long after) => baseRows is null || LossNear(rows, e.Step + after) is not { } a || LossNear(baseRows, e.Step + after) is not { } b ? null : a - b;
            return new EventRow(e, r, Gap(50), Gap(200));
        }).ToList();

        written.Add(Plots.Loss(Path.Combine(outDir, "loss.png"), rows, baseRows, chaos));
        var experts = Path.Combine(dir, "experts.csv");
        if (File.Exists(experts)) written.Add(Plots.Tokens(Path.Combine(outDir, "tokens.png"), experts));
        var routing = Path.Combine(dir, "routing.json");
        if (File.Exists(routing) && JsonSerializer.Deserialize<RunRecorder.RoutingRecord>(File.ReadAllText(routing)) is { Start: { } start, End: { } end })
            foreach (var b in start.Blocks.Keys.Order())
            {
                written.Add(Plots.Routing(Path.Combine(outDir, $"routing-block{b}-start.png"), start.Blocks[b], $"block {b}: cluster → expert gate at commit {start.Step}"));
                written.Add(Plots.Routing(Path.Combine(outDir, $"routing-block{b}-end.png"), end.Blocks[b], $"block {b}: cluster → expert gate at commit {end.Step}"));
            }
        File.WriteAllText(Path.Combine(outDir, "report.md"), Markdown(dir, baselineDir, rows, baseRows, events, unmatched, written));
        return written;
    }

    private static string Markdown(string dir, string? baselineDir, List<Row> rows, List<Row>? baseRows, List<EventRow> events,
                                   List<RecoveryRecord> other, List<string> plots)
    {
        var inv = CultureInfo.InvariantCulture;
        var md = new StringBuilder();
        md.AppendLine($"# Run report: {dir}");
        md.AppendLine();
        md.AppendLine(string.Create(inv, $"{rows.Count} steps, final loss {LossNear(rows, rows[^1].Step):F4} (mean of the last steps), wall {rows[^1].Wall:F1} s") +
                      (baseRows is null ? "." : string.Create(inv, $"; baseline {baselineDir}: final loss {LossNear(baseRows, baseRows[^1].Step):F4}, wall {baseRows[^1].Wall:F1} s.")));
        md.AppendLine();
        md.AppendLine($"## Faults ({events.Count})");
        md.AppendLine();
        md.AppendLine("| step | owner | fault | recovered by | recovery (ms) | steps replayed / missed | images rerouted | loss gap +50 | loss gap +200 |");
        md.AppendLine("|---:|---|---|---|---:|---:|---:|---:|---:|");
        static string G(double? x) => x is { } v ? v.ToString("+0.0000;-0.0000", CultureInfo.InvariantCulture) : "—";
        foreach (var e in events)
        {
            var r = e.Recovery;
            md.AppendLine(string.Create(inv, $"| {e.Event.Step} | {e.Event.Owner} | {e.Event.Kind}: {e.Event.Detail} | ") +
                          (r is null ? "— (no step failed) | — | — | — | " :
                              string.Create(inv, $"{r.Policy}, {(r.Policy == "expert-exact" ? "its copy of step" : "commit")} {r.RestoredStep}{(r.Fallback.Length > 0 ? $" (fallback: {r.Fallback})" : "")} | {r.DetectionToRecoveredMs:F0} | {(r.Policy == "global-rollback" ? r.StepsReplayed : r.StepsMissed)} | {r.ReroutedImages} | ")) +
                          $"{G(e.Gap50)} | {G(e.Gap200)} |");
        }
        if (other.Count > 0)
        {
            md.AppendLine();
            md.AppendLine("Recoveries not caused by an injected fault:");
            foreach (var r in other) md.AppendLine(string.Create(inv, $"- step {r.Step}: {r.Owner}: {r.Error} ({r.Policy}, {r.DetectionToRecoveredMs:F0} ms)"));
        }
        md.AppendLine();
        md.AppendLine("The loss gap is this run's loss minus the baseline's, each the mean over ±5 steps around the step; under");
        md.AppendLine("global-rollback it is exactly 0 (the run equals the one without faults). A recovery's time runs from its");
        md.AppendLine("detection to the restored state (global-rollback) or to the expert's return (expert-local, straggler-timeout).");
        md.AppendLine();
        foreach (var p in plots) md.AppendLine($"![{Path.GetFileNameWithoutExtension(p)}]({Path.GetFileName(p)})");
        return md.ToString();
    }

    /// <summary>The mean of each value and the window − 1 before it.</summary>
    internal static double[] Smooth(IReadOnlyList<double> ys, int window)
    {
        var r = new double[ys.Count];
        for (int i = 0; i < ys.Count; i++)
        {
            int a = Math.Max(0, i - window + 1);
            double s = 0;
            for (int j = a; j <= i; j++) s += ys[j];
            r[i] = s / (i - a + 1);
        }
        return r;
    }

    /// <summary>The plots, drawn with ScottPlot.</summary>
    private static class Plots
    {
        public static string Loss(string path, List<Row> rows, List<Row>? baseline, List<ChaosFired> chaos)
        {
            var plt = new ScottPlot.Plot();
            if (baseline is not null)
            {
                var b = plt.Add.ScatterLine(baseline.Select(r => (double)r.Step).ToArray(), Smooth(baseline.Select(r => r.Loss).ToList(), 10));
                b.LegendText = "baseline";
                b.LineWidth = 2;
            }
            var s = plt.Add.ScatterLine(rows.Select(r => (double)r.Step).ToArray(), Smooth(rows.Select(r => r.Loss).ToList(), 10));
            s.LegendText = "this run";
            s.LineWidth = 1.5f;
            foreach (var e in chaos.Where(e => e.Step >= 0))
            {
                var v = plt.Add.VerticalLine(e.Step);
                v.Text = $"{e.Kind} {e.Owner}";
                v.LabelFontSize = 9;
                v.LabelOppositeAxis = true;                                         // above the plot, clear of the step ticks
                v.LinePattern = ScottPlot.LinePattern.Dashed;
                v.Color = ScottPlot.Colors.Gray;
            }
            plt.Title("Training loss (mean of 10 steps) and injected faults");
            plt.XLabel("step");
            plt.YLabel("loss");
            plt.ShowLegend();
            plt.SavePng(path, 900, 420);
            return path;
        }

        public static string Tokens(string path, string expertsCsv)
        {
            var byExpert = File.ReadLines(expertsCsv).Skip(1).Select(l => l.Split(','))
                .Select(p => (step: long.Parse(p[0], CultureInfo.InvariantCulture), expert: int.Parse(p[2], CultureInfo.InvariantCulture), tokens: double.Parse(p[3], CultureInfo.InvariantCulture)))
                .GroupBy(x => x.expert).OrderBy(g => g.Key);
            var plt = new ScottPlot.Plot();
            foreach (var g in byExpert)
            {
                var perStep = g.GroupBy(x => x.step).OrderBy(x => x.Key).ToList();
                var line = plt.Add.ScatterLine(perStep.Select(x => (double)x.Key).ToArray(), Smooth(perStep.Select(x => x.Sum(y => y.tokens)).ToList(), 10));
                line.LegendText = $"expert-{g.Key}";
            }
            plt.Title("Tokens per expert and step, all MoE blocks (mean of 10 steps)");
            plt.XLabel("step");
            plt.YLabel("tokens");
            plt.ShowLegend();
            plt.SavePng(path, 900, 420);
            return path;
        }

        public static string Routing(string path, double[][] gate, string title)
        {
            int c = gate.Length, e = gate[0].Length;
            var data = new double[c, e];
            for (int i = 0; i < c; i++) for (int j = 0; j < e; j++) data[i, j] = gate[i][j];
            var plt = new ScottPlot.Plot();
            var hm = plt.Add.Heatmap(data);
            hm.Colormap = new ScottPlot.Colormaps.Viridis();
            plt.Add.ColorBar(hm);
            plt.Title(title);
            plt.XLabel("expert");
            plt.YLabel("cluster");
            plt.SavePng(path, 520, 460);
            return path;
        }
    }
}
