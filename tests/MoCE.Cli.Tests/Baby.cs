using MoCE.Core.Data;

namespace MoCE.Cli.Tests;

/// <summary>The "baby" model the process tests train: tiny, on the committed sample, one torch thread.</summary>
public static class Baby
{
    public static readonly string[] Model =
    [
        "-o", "model.patch-size=7", "-o", "model.dim=32", "-o", "model.depth=2", "-o", "model.heads=2",
        "-o", "model.decoder-dim=16", "-o", "model.decoder-depth=1", "-o", "model.decoder-heads=2",
        "-o", "moe.layers=[0, 1]", "-o", "moe.experts=3", "-o", "cluster.k=4",
        "-o", $"datasets.fashion-mnist.path={Datasets.SampleDir("fashion-mnist-sample")}", "-o", $"datasets.mnist.path={Datasets.SampleDir("mnist-sample")}", "-o", "threads=1",
    ];
}
