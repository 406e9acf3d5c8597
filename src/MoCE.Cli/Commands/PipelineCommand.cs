using MoCE.Runs;

namespace MoCE.Cli.Commands;

/// <summary><c>moce pipeline</c>: runs <see cref="Pipeline"/> on the run.</summary>
public static class PipelineCommand
{
    public static int Run(CliArgs cli, CancellationToken ct)
    {
        cli.RejectFlagsExcept();
        Pipeline.Execute(Session.Open(cli.Request), ct);
        return 0;
    }
}
