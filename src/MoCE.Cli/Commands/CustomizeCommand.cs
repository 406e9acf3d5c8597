using MoCE.Core.Config;
using MoCE.Runs;
using MoCE.Runs.Configuration;
using Serilog;

namespace MoCE.Cli.Commands;

/// <summary><c>moce customize --task NAME</c>: parses its flags and runs <see cref="CustomizePhase"/>.</summary>
public static class CustomizeCommand
{
    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept("task");
        var task = cli.Flags.TryGetValue("task", out var t) ? t : throw new ConfigException("--task", "is required: moce customize --task NAME");
        CustomizePhase.Execute(Session.Open(cli.Request), task);
        return 0;
    }
}
