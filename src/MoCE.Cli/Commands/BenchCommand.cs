using System.Diagnostics;
using MoCE.Cli.Configuration;
using MoCE.Core.Data;
using MoCE.Core.Training;
using Serilog;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Cli.Commands;

/// <summary><c>moce bench</c>: times the dense reference trainer's step on the bench configuration, and a
/// 1024×1024 fp32 matmul in the same run, so the result can be read as a ratio that survives noisy machines.</summary>
public static class BenchCommand
{
    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept("warmup", "steps");
        int warmup = cli.FlagInt("warmup", 10), steps = cli.FlagInt("steps", 50);
        var merged = ConfigLoader.Merge(new ConfigLoader.Sources(cli.Preset ?? "bench", cli.Files, cli.Overrides));
        var (cfg, _) = ConfigLoader.Resolve(merged);
        if (cfg.Threads > 0) torch.set_num_threads(cfg.Threads);
        var loc = FashionMnist.Locate(cfg.Data.Path, cfg.Data.FallbackToSample);
        using var data = FashionMnist.Load(loc.Directory, Split.Train);
        var m = cfg.Model;
        Log.Information("bench: image {Img}, patch {P}, dim {D}, depth {Depth}, heads {H}; decoder {Dd}/{Ddepth}/{Dh}; mask {R}; batch {B}; fp32; {T} threads; data {Src}",
            m.ImageSize, m.PatchSize, m.Dim, m.Depth, m.Heads, m.DecoderDim, m.DecoderDepth, m.DecoderHeads, m.MaskRatio, cfg.Pretrain.BatchSize, torch.get_num_threads(), data.Source);

        double matmulMs = MatmulMs();
        var train = cfg.Pretrain with { Steps = warmup + steps, CheckpointEvery = long.MaxValue };
        using var trainer = new DenseTrainer(m, train, cfg.Data, data, new Device(cfg.Device));
        for (int i = 0; i < warmup; i++) trainer.TrainStep();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < steps; i++) trainer.TrainStep();
        double stepMs = sw.Elapsed.TotalMilliseconds / steps;
        double matmulAfter = MatmulMs();
        double matmul = (matmulMs + matmulAfter) / 2;

        Console.WriteLine($"dense reference step: {stepMs:F2} ms  ({cfg.Pretrain.BatchSize * 1000 / stepMs:F0} images/s) over {steps} steps after {warmup} warm-up");
        Console.WriteLine($"1024x1024 fp32 matmul: {matmul:F2} ms ({2.0 * 1024 * 1024 * 1024 / (matmul * 1e6):F1} GFLOP/s)");
        Console.WriteLine($"ratio dense-step / matmul: {stepMs / matmul:F2}");
        return 0;
    }

    private static double MatmulMs()
    {
        using var scope = NewDisposeScope();
        var a = randn(1024, 1024);
        var b = randn(1024, 1024);
        for (int i = 0; i < 3; i++) a.matmul(b).Dispose();
        var sw = Stopwatch.StartNew();
        const int n = 20;
        for (int i = 0; i < n; i++) a.matmul(b).Dispose();
        return sw.Elapsed.TotalMilliseconds / n;
    }
}
