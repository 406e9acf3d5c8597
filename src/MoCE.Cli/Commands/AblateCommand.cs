using MoCE.Runs;

namespace MoCE.Cli.Commands;

/// <summary><c>moce ablate [--arms a,b]</c>: runs <see cref="Ablation"/> on the run, every arm or those named.</summary>
public static class AblateCommand
{
    public static int Run(CliArgs cli, CancellationToken ct)
    {
        cli.RejectFlagsExcept("arms");
        var only = cli.Flags.TryGetValue("arms", out var a) ? a.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) : null;
        Ablation.Execute(Session.Open(cli.Request), only, ct);
        return 0;
    }
}
