using MoCE.Cli;
using MoCE.Cli.Commands;
using MoCE.Runs.Configuration;
using MoCE.Core.Checkpoints;
using MoCE.Core.Clustering;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Runtime;
using Serilog;

OpenMp.UseDefaultSpinCount();   // before the first torch call: libgomp reads it when libtorch loads

CliArgs cli;
try { cli = CliArgs.Parse(args); }
catch (ConfigException e) { Console.Error.WriteLine($"moce: {e.Message}"); return 2; }

Log.Logger = Logging.Console();
using var cts = new CancellationTokenSource();
// a tool (moce node drain, moce experts, moce stop) only waits for the run's answer: stopping it commits nothing
bool tool = cli.Command is "experts" or "stop" || (cli.Command == "node" && cli.Positionals.Count > 0);
string stopping = tool ? "stopping the wait for the run's answer" : "finishing the current step and committing a checkpoint";
Console.CancelKeyPress += (_, e) =>
{
    if (cts.IsCancellationRequested) return; // a second Ctrl-C kills the process
    e.Cancel = true;
    Log.Warning("Ctrl-C: {Stopping} (press again to abort)", stopping);
    cts.Cancel();
};

// SIGTERM (docker stop, systemd, kill) stops like the first Ctrl-C: commit, leave the cluster, exit
using var sigterm = System.Runtime.InteropServices.PosixSignalRegistration.Create(System.Runtime.InteropServices.PosixSignal.SIGTERM, ctx =>
{
    ctx.Cancel = true;
    if (cts.IsCancellationRequested) return;
    Log.Warning("SIGTERM: {Stopping}", stopping);
    cts.Cancel();
});

try
{
    // the main thread never computes: a command's torch work runs on a thread that exits with it (ComputeThread)
    return ComputeThread.Run($"moce-{cli.Command}", 0, () => cli.Command switch
    {
        "help" => Help(),
        "config" => PrintConfig(cli),
        "pretrain" => PretrainCommand.Run(cli, cts.Token),
        "cluster" => ClusterCommand.Run(cli),
        "train" => TrainCommand.Run(cli, cts.Token),
        "customize" => CustomizeCommand.Run(cli),
        "eval" => EvalCommand.Run(cli),
        "finetune" => FineTuneCommand.Run(cli, cts.Token),
        "data" => DataCommand.Run(cli),
        "shard" => DataCommand.Shard(cli),
        "export" => ExportCommand.Run(cli),
        "pipeline" => PipelineCommand.Run(cli, cts.Token),
        "ablate" => AblateCommand.Run(cli, cts.Token),
        "node" => NodeCommand.Run(cli, cts.Token),
        "experts" => ExpertsCommand.Run(cli, cts.Token),
        "stop" => StopCommand.Run(cli, cts.Token),
        "status" => StatusCommand.Run(cli),
        "report" => ReportCommand.Run(cli),
        "chaos" => ChaosCommand.Run(cli, cts.Token),
        "cert" => CertCommand.Run(cli),
        "bench-recovery" => RecoveryBenchCommand.Run(cli),
        "bench" => BenchCommand.Run(cli),
        "bench-data" => DataBenchCommand.Run(cli),
        "bench-cluster" => ClusterBenchCommand.Run(cli),
        _ => throw new ConfigException(cli.Command, "unknown command; see moce --help"),
    });
}
catch (Exception e) when (e is ConfigException or DataFormatException or CheckpointCorruptException or RunMismatchException)
{
    Log.Error("{Error}", e.Message);
    return 2;
}
catch (Exception e) when (e is MoCE.Actors.RunFailedException or MoCE.Actors.ClusterUnreachableException)
{
    // the run cannot go on (failures kept coming, an owner cannot be created, no commit verifies): the message names
    // the owner, the step and the cause, and says the last commit is intact; or a cluster client lost the cluster.
    // A stack trace would add nothing
    Log.Error("{Error}", e.Message);
    return 1;
}
catch (OperationCanceledException) when (tool)
{
    // a tool (moce experts add, moce node drain) stopped waiting; the run goes on with what it accepted
    Log.Warning("Stopped waiting for the run's answer (Ctrl-C); what was asked goes on if the run accepted it: moce experts list shows the experts");
    return 130;
}
catch (OperationCanceledException)
{
    Log.Warning("Stopped by Ctrl-C; run the same command again to resume");
    return 130;
}
catch (Exception e)
{
    Log.Fatal(e, "moce {Command} failed", cli.Command);
    return 1;
}
finally
{
    Log.CloseAndFlush();
}

static int Help() => 0;                                                            // CliArgs.Parse printed it

static int PrintConfig(CliArgs cli)
{
    cli.RejectFlagsExcept();
    var merged = ConfigLoader.Merge(new ConfigLoader.Sources(cli.Preset, cli.Files, cli.Overrides));
    ConfigLoader.Resolve(merged); // validates
    Console.Write(ConfigLoader.Render(merged));
    return 0;
}
