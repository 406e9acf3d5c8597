using MoCE.Core.Config;
using MoCE.Runs;
using MoCE.Runs.Configuration;
using Serilog;

namespace MoCE.Cli.Commands;

/// <summary><c>moce eval [--models a,b] [--tasks x,y]</c>: parses its flags and runs <see cref="EvalPhase"/>.</summary>
public static class EvalCommand
{
    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept("models", "tasks");
        var s = Session.Open(cli.Request);
        var models = cli.Flags.TryGetValue("models", out var m) ? Split(m) : null;
        var tasks = cli.Flags.TryGetValue("tasks", out var t) ? Split(t) : null;
        foreach (var x in models ?? [])
            if (!EvalConfig.KnownModels.Contains(x)) throw new ConfigException("--models", $"unknown model '{x}' (known: {string.Join(", ", EvalConfig.KnownModels)})");
        EvalPhase.Execute(s, models, tasks);
        return 0;
    }

    private static List<string> Split(string v) => v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).ToList();
}
