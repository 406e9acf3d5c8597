using MoCE.Actors;
using MoCE.Actors.Messages;
using MoCE.Core.Config;

namespace MoCE.Cli.Commands;

/// <summary><c>moce stop --seeds HOST:PORT</c>: asks a cluster run's supervisor, as a cluster client, to commit at the next
/// step boundary and end the run, as a coordinator's Ctrl-C does. With TLS the stop is signed with --tls-certificate,
/// and only an operator's (or a coordinator's) is obeyed.</summary>
public static class StopCommand
{
    public static int Run(CliArgs cli, CancellationToken ct)
    {
        cli.RejectFlagsExcept("seeds", "tls-certificate", "tls-ca", "insecure", "host");
        Serilog.Log.Logger = Logging.StandardError();
        var config = ExpertsCommand.ClientConfig(cli);
        var answer = ExpertsCommand.Ask<RunStopping>(config, new SupervisorActor.StopAndCommit(), TimeSpan.FromMinutes(1), ct);
        if (answer.Error.Length > 0) throw new ConfigException("stop", answer.Error);
        Console.WriteLine($"stopping: the run commits at the step boundary after step {answer.Step} and ends");
        return 0;
    }
}
