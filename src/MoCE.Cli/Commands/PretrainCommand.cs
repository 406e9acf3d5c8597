using MoCE.Core.Config;
using MoCE.Runs;
using MoCE.Runs.Configuration;
using Serilog;

namespace MoCE.Cli.Commands;

/// <summary><c>moce pretrain</c>: parses its flags and runs <see cref="PretrainPhase"/>.</summary>
public static class PretrainCommand
{
    public static int Run(CliArgs cli, CancellationToken ct)
    {
        cli.RejectFlagsExcept();
        PretrainPhase.Execute(Session.Open(cli.Request), ct);
        return 0;
    }
}
