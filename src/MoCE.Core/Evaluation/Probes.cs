using MoCE.Core.Training;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MoCE.Core.Evaluation;

/// <summary>Frozen-feature evaluation: a linear probe and a weighted k-NN classifier.</summary>
public static class Probes
{
    /// <summary>Linear probe: features standardized with the training set's statistics (MAE's linear probe puts a
    /// BatchNorm without affine before the head), then softmax regression trained with AdamW in mini-batches.
    /// Returns the test accuracy.</summary>
    public static double LinearProbe(Tensor trainX, long[] trainY, Tensor testX, long[] testY, int classes,
                                     int epochs, double lr, double weightDecay, int batch, long seed)
    {
        using var scope = NewDisposeScope();
        var mu = trainX.mean(new long[] { 0 }, keepdim: true);
        var sd = trainX.std(0, keepdim: true) + 1e-6;
        var xs = (trainX - mu) / sd;
        var xt = (testX - mu) / sd;
        var ys = tensor(trainY);
        long n = xs.shape[0], d = xs.shape[1];
        using var gen = Seeds.Generator(seed, Seeds.Stream.Probe, 0);
        var head = nn.Linear(d, classes);
        using (no_grad())
        {
            head.weight!.copy_(randn(head.weight.shape, generator: gen) * 0.01);
            head.bias!.zero_();
        }
        var cfg = new Config.TrainConfig { WeightDecay = weightDecay, Beta2 = 0.999 };
        using var opt = new AdamW(head.named_parameters(), cfg);
        long stepsPerEpoch = (n + batch - 1) / batch, total = epochs * stepsPerEpoch, t = 0;
        for (int e = 0; e < epochs; e++)
        {
            var perm = randperm(n, generator: gen);
            for (long s = 0; s < n; s += batch, t++)
            {
                using var step = NewDisposeScope();
                var idx = perm.narrow(0, s, Math.Min(batch, n - s));
                var loss = F.cross_entropy(head.forward(xs.index_select(0, idx)), ys.index_select(0, idx));
                opt.ZeroGrad();
                loss.backward();
                opt.Step(lr * 0.5 * (1 + Math.Cos(Math.PI * t / total))); // cosine decay
            }
        }
        using (no_grad())
        {
            var pred = head.forward(xt).argmax(1);
            return pred.eq(tensor(testY)).to_type(ScalarType.Float64).mean().item<double>();
        }
    }

    /// <summary>Weighted k-NN on cosine similarity (as in DINO / InstDisc): the k nearest training features vote
    /// with weight exp(sim / T). Test rows are processed in chunks to bound memory.</summary>
    public static double Knn(Tensor trainX, long[] trainY, Tensor testX, long[] testY, int classes, int k, double temperature, int chunk = 1024)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var tr = F.normalize(trainX, dim: 1);
        var te = F.normalize(testX, dim: 1);
        var ys = tensor(trainY);
        long correct = 0;
        int kk = (int)Math.Min(k, tr.shape[0]);
        for (long s = 0; s < te.shape[0]; s += chunk)
        {
            using var c = NewDisposeScope();
            var q = te.narrow(0, s, Math.Min(chunk, te.shape[0] - s));
            var (sim, idx) = q.matmul(tr.t()).topk(kk, dim: 1);                       // [B, k]
            var votes = zeros(q.shape[0], classes).scatter_add_(1, ys[idx], (sim / temperature).exp());
            var pred = votes.argmax(1);
            correct += pred.eq(tensor(testY[(int)s..(int)(s + q.shape[0])])).sum().item<long>();
        }
        return correct / (double)te.shape[0];
    }
}
