using System.Diagnostics;
using System.Text.Json;
using MoCE.Core.Config;
using MoCE.Core.Runtime;
using Serilog;

namespace MoCE.Cli.Commands;

/// <summary><c>moce pipeline</c>: the whole method on one run: pretrain → cluster → train (MoCE, TokenMoE, dense)
/// → customize (each evaluated task) → eval. Every phase resumes or skips what is already committed, so running
/// it again after an interruption continues where it stopped.</summary>
public static class PipelineCommand
{
    public static int Run(CliArgs cli, CancellationToken ct)
    {
        cli.RejectFlagsExcept();
        var s = Session.Open(cli);
        var timings = new Dictionary<string, double>();
        var total = Stopwatch.StartNew();
        void Phase(string name, Action a)
        {
            ct.ThrowIfCancellationRequested();
            Log.Information("== {Phase} ==", name);
            var sw = Stopwatch.StartNew();
            ComputeThread.Run(name, s.Config.Threads, a);      // the phase's OpenMP pool ends with its thread
            timings[name] = Math.Round(sw.Elapsed.TotalSeconds, 1);
            Log.Information("{Phase} took {Seconds:F0} s", name, sw.Elapsed.TotalSeconds);
        }
        Phase("pretrain", () => PretrainCommand.Execute(s, ct));
        Phase("cluster", () => ClusterCommand.Execute(s));
        foreach (var m in new[] { MoeMethod.Moce, MoeMethod.TokenMoe, MoeMethod.Dense })
            Phase(Artifacts.TrainPhase(m), () => TrainCommand.Execute(s, m, s.Config.Engine, ct));
        foreach (var task in s.Config.Eval.Tasks)
            Phase($"customize-{task}", () => CustomizeCommand.Execute(s, task));
        Phase("eval", () => EvalCommand.Execute(s));
        timings["total"] = Math.Round(total.Elapsed.TotalSeconds, 1);
        File.WriteAllText(Path.Combine(s.Run.Root, "pipeline.json"), JsonSerializer.Serialize(timings, new JsonSerializerOptions { WriteIndented = true }));
        Log.Information("Pipeline done in {Seconds:F0} s; results in {Path}", total.Elapsed.TotalSeconds, Path.Combine(s.Run.Root, "eval", "results.md"));
        return 0;
    }
}
