using MoCE.Runs.Configuration;
using MoCE.Core.Data;
using MoCE.Core.Runtime;
using MoCE.Core.Training;
using Serilog;
using static TorchSharp.torch;

namespace MoCE.Cli.Commands;

/// <summary><c>moce bench-data</c>: the images/s the loader decodes and augments against the images/s the dense trainer
/// consumes, on the configured pre-training data and model (<see cref="LoaderBench"/>).</summary>
public static class DataBenchCommand
{
    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept("warmup", "steps");
        int warmup = cli.FlagInt("warmup", 2), steps = cli.FlagInt("steps", 10);
        var cfg = ConfigLoader.Load(new ConfigLoader.Sources(cli.Preset, cli.Files, cli.Overrides));
        using var data = new DataSources(cfg.Data, cfg.Model, cfg.Seed).PretrainSet();
        var m = cfg.Model;
        Log.Information("bench-data: {Source}, {Count} images; model {C}×{Img}² patch {P} dim {D} depth {Depth}; batch {B} ({Accum} parts); augment {Aug}; {W} workers; {T} torch threads on {Device}",
            data.Source, data.Count, m.InChans, m.ImageSize, m.PatchSize, m.Dim, m.Depth, cfg.Pretrain.BatchSize, cfg.Pretrain.AccumSteps, data.Augment is not null, data.Workers, cfg.Threads, cfg.Device);
        var r = ComputeThread.Run("bench-data", cfg.Threads, () => LoaderBench.Run(data, m, cfg.Pretrain, warmup, steps, new Device(cfg.Device)));
        Log.Information("bench-data: the loader decodes {Decode:F0} images/s with {Workers} workers; the trainer consumes {Train:F1} images/s ({StepMs:F0} ms a step of {Batch}); headroom {Headroom:F1}× ({Verdict})",
            r.DecodeImagesPerSecond, r.Workers, r.TrainImagesPerSecond, r.StepMs, r.Batch, r.Headroom, r.Headroom >= 1 ? "the loader keeps up" : "the trainer waits for data: raise moce.data.workers");
        return 0;
    }
}
