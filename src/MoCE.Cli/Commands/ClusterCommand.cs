using MoCE.Core.Config;
using MoCE.Runs;
using MoCE.Runs.Configuration;
using Serilog;

namespace MoCE.Cli.Commands;

/// <summary><c>moce cluster</c>: parses its flags and runs <see cref="ClusterPhase"/>.</summary>
public static class ClusterCommand
{
    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept();
        ClusterPhase.Execute(Session.Open(cli.Request));
        return 0;
    }
}
