using System.Diagnostics;
using MoCE.Core.Config;
using MoCE.Core.Data;
using static TorchSharp.torch;

namespace MoCE.Core.Training;

/// <summary>What the loader supplies against what the trainer consumes, measured in one run on one dataset and model:
/// the images/s that decoding and augmentation reach on the loader's workers alone, and the images/s of the dense trainer
/// (data included, the next batch decoded ahead) with its step time.</summary>
public static class LoaderBench
{
    public sealed record Result(double DecodeImagesPerSecond, double TrainImagesPerSecond, double StepMs, int Workers, int Steps, int Batch)
    {
        /// <summary>Above 1 the loader keeps the trainer fed.</summary>
        public double Headroom => DecodeImagesPerSecond / TrainImagesPerSecond;
    }

    /// <summary><paramref name="warmup"/> untimed, then <paramref name="steps"/> timed batches of each kind, on the calling
    /// thread (the trainer's) with the dataset's workers.</summary>
    public static Result Run(ImageDataset data, MaeConfig model, TrainConfig train, int warmup, int steps, Device device)
    {
        var sampler = new EpochSampler(data.Count, train.BatchSize, train.Seed);
        for (int s = 0; s < warmup; s++) data.TrainPixels(sampler.Batch(s), s, train.Seed);
        var clock = Stopwatch.StartNew();
        for (int s = warmup; s < warmup + steps; s++) data.TrainPixels(sampler.Batch(s), s, train.Seed);
        double decode = (double)steps * train.BatchSize / clock.Elapsed.TotalSeconds;

        using var trainer = new DenseTrainer(model, train with { Steps = warmup + steps, CheckpointEvery = long.MaxValue }, data, device);
        for (int s = 0; s < warmup; s++) trainer.TrainStep();
        clock.Restart();
        for (int s = 0; s < steps; s++) trainer.TrainStep();
        double seconds = clock.Elapsed.TotalSeconds;
        return new Result(decode, steps * train.BatchSize / seconds, seconds * 1000 / steps, data.Workers, steps, train.BatchSize);
    }
}
