using MoCE.Runs.Configuration;
using MoCE.Core.Data;
using Serilog;
using TorchSharp;

namespace MoCE.Runs;

/// <summary>What every command that trains needs: the resolved config, the run directory with its log file,
/// torch's threads and device, and the located dataset.</summary>
public sealed class Session
{
    /// <summary>What opened it: a run inside this one (<see cref="Pipeline.Sub"/>) opens with the same sources.</summary>
    public required RunRequest Request { get; init; }
    public required MoceConfig Config { get; init; }
    public required RunDirectory Run { get; init; }
    public required torch.Device Device { get; init; }
    public required DataSources Data { get; init; }
    /// <summary>The run whose pretrain and cluster phases this run trains from (moce.train.from-run; else this run).</summary>
    public required RunDirectory Upstream { get; init; }
    public bool Resumed { get; init; }

    /// <summary>Serves the Prometheus metrics (moce.metrics) while a phase trains, whichever engine; null when off.</summary>
    public IDisposable? ServeMetrics()
    {
        var server = MoCE.Actors.NodeMetrics.Serve(Config.MetricsHost, Config.MetricsPort);
        if (server is not null) Log.Information("Prometheus metrics on http://{Host}:{Port}/metrics", Config.MetricsHost, Config.MetricsPort);
        return server;
    }

    /// <summary><paramref name="logName"/>: the log file under the run's logs/ (moce.log; each node of a cluster its own).</summary>
    public static Session Open(RunRequest request, string logName = "moce.log")
    {
        var merged = ConfigLoader.Merge(new ConfigLoader.Sources(request.Preset, request.Files, request.Overrides));
        var (config, _) = ConfigLoader.Resolve(merged);
        var run = new RunDirectory(request.RunDir);
        Log.Logger = Logging.ConsoleAndFile(Path.Combine(run.Root, "logs", logName));
        bool resumed = run.AdoptConfig(merged, Log.Logger);
        Log.Information("moce {Command} in {Run} ({Mode})", request.Command, run.Root, resumed ? "resuming" : "new run");
        Log.Debug("Resolved configuration:\n{Config}", ConfigLoader.Render(merged));
        Log.Information("Configuration written to {Path}", run.ConfigPath);

        if (config.Threads > 0) torch.set_num_threads(config.Threads);
        var device = new torch.Device(config.Device);
        if (device.type == DeviceType.CUDA && !torch.cuda.is_available())
            throw new MoCE.Core.Config.ConfigException("moce.device", $"\"{config.Device}\" requested but CUDA is not available in this build/machine");

        var upstream = config.FromRun.Length == 0 ? run : new RunDirectory(config.FromRun);
        if (config.FromRun.Length > 0) Log.Information("Pre-training and clustering from run {Run}", upstream.Root);
        Log.Information("torch {Threads} threads on {Device}", torch.get_num_threads(), device);
        return new Session { Request = request, Config = config, Run = run, Device = device, Data = new DataSources(config.Data, config.Model, config.Seed), Upstream = upstream, Resumed = resumed };
    }
}
