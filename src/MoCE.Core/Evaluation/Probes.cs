using MoCE.Core.Training;
using TorchSharp;
using static TorchSharp.torch;
using F = TorchSharp.torch.nn.functional;

namespace MoCE.Core.Evaluation;

/// <summary>A linear probe's test accuracy, the epochs it trained and whether it met the convergence criterion.</summary>
public sealed record ProbeResult(double Accuracy, int Epochs, bool Converged, double TrainLoss);

/// <summary>Frozen-feature evaluation: a linear probe and a weighted k-NN classifier.</summary>
public static class Probes
{
    /// <summary>Linear probe: features standardized with the training set's statistics (MAE's linear probe puts a
    /// BatchNorm without affine before the head), then softmax regression trained with AdamW in mini-batches, the
    /// learning rate constant for the first half of <paramref name="epochs"/> and cosine-decayed over the second.
    /// Convergence: after each epoch the cross-entropy over the whole training set is measured; the probe has
    /// converged, and stops, once two epochs in a row improve it by less than <paramref name="tol"/> (relative).
    /// A probe that reaches <paramref name="epochs"/> without that is reported as not converged.</summary>
    public static ProbeResult LinearProbe(Tensor trainX, long[] trainY, Tensor testX, long[] testY, int classes,
                                          int epochs, double lr, double weightDecay, int batch, long seed, double tol = 1e-3)
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
        long stepsPerEpoch = (n + batch - 1) / batch, total = epochs * stepsPerEpoch, t = 0, flat = total / 2;
        double TrainLoss() { using var _ = no_grad(); using var s = NewDisposeScope(); return F.cross_entropy(head.forward(xs), ys).item<float>(); }
        double last = TrainLoss();
        int small = 0, e = 0;
        bool converged = false;
        while (e < epochs && !converged)
        {
            var perm = randperm(n, generator: gen);
            for (long s = 0; s < n; s += batch, t++)
            {
                using var step = NewDisposeScope();
                var idx = perm.narrow(0, s, Math.Min(batch, n - s));
                var loss = F.cross_entropy(head.forward(xs.index_select(0, idx)), ys.index_select(0, idx));
                opt.ZeroGrad();
                loss.backward();
                opt.Step(t < flat ? lr : lr * 0.5 * (1 + Math.Cos(Math.PI * (t - flat) / (total - flat))));
            }
            e++;
            double now = TrainLoss();
            small = (last - now) < tol * last ? small + 1 : 0;
            converged = small >= 2;
            last = now;
        }
        using (no_grad())
        {
            var pred = head.forward(xt).argmax(1);
            return new ProbeResult(pred.eq(tensor(testY)).to_type(ScalarType.Float64).mean().item<double>(), e, converged, last);
        }
    }

    /// <summary>Weighted k-NN on cosine similarity (as in DINO / InstDisc): the k nearest training features vote
    /// with weight exp(sim / T). With <paramref name="centre"/> both sets are first centred on the training features'
    /// mean, so that the similarity is not dominated by the direction all features share. Test rows are processed in
    /// chunks to bound memory.</summary>
    public static double Knn(Tensor trainX, long[] trainY, Tensor testX, long[] testY, int classes, int k, double temperature, int chunk = 1024, bool centre = true)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var mean = centre ? trainX.mean([0], keepdim: true) : zeros(1, trainX.shape[1]);
        var tr = F.normalize(trainX - mean, dim: 1);
        var te = F.normalize(testX - mean, dim: 1);
        var ys = tensor(trainY);
        long correct = 0;
        int kk = (int)Math.Min(k, tr.shape[0]);
        for (long s = 0; s < te.shape[0]; s += chunk)
        {
            using var c = NewDisposeScope();
            var q = te.narrow(0, s, Math.Min(chunk, te.shape[0] - s));
            var (sim, idx) = q.matmul(tr.t()).topk(kk, dim: 1);                       // [B, k]
            var votes = zeros(q.shape[0], classes).scatter_add_(1, ys[idx], (sim / Runtime.Scalars.Of(temperature)).exp());
            var pred = votes.argmax(1);
            correct += pred.eq(tensor(testY[(int)s..(int)(s + q.shape[0])])).sum().item<long>();
        }
        return correct / (double)te.shape[0];
    }
}
