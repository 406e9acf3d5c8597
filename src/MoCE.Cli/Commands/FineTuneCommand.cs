using MoCE.Core.Config;
using MoCE.Runs;
using MoCE.Runs.Configuration;
using Serilog;

namespace MoCE.Cli.Commands;

/// <summary><c>moce finetune [--models a,b] [--tasks x,y]</c>: parses its flags and runs <see cref="FineTunePhase"/>.</summary>
public static class FineTuneCommand
{
    public static int Run(CliArgs cli, CancellationToken ct)
    {
        cli.RejectFlagsExcept("models", "tasks");
        var s = Session.Open(cli.Request);
        static List<string> Split(string v) => [.. v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)];
        var models = cli.Flags.TryGetValue("models", out var m) ? Split(m) : FineTunePhase.Encoders.Where(s.Config.Eval.Models.Contains).ToList();
        foreach (var x in models)
            if (!FineTunePhase.Encoders.Contains(x)) throw new ConfigException("--models", $"'{x}' cannot be fine-tuned: a dense encoder is one of {string.Join(", ", FineTunePhase.Encoders)}");
        var tasks = cli.Flags.TryGetValue("tasks", out var t) ? Split(t) : [.. s.Config.Eval.Tasks];
        foreach (var x in tasks)
            if (!s.Config.Tasks.ContainsKey(x)) throw new ConfigException("--tasks", $"no task '{x}' (defined: {string.Join(", ", s.Config.Tasks.Keys)})");
        FineTunePhase.Execute(s, models, tasks, ct);
        return 0;
    }
}
