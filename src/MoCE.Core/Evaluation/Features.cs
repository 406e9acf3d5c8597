using MoCE.Core.Data;
using MoCE.Core.Model;
using static TorchSharp.torch;

namespace MoCE.Core.Evaluation;

/// <summary>Frozen features of a model over a set of images, in batches under no_grad.</summary>
public static class Features
{
    /// <summary>[N, D] features of the images at <paramref name="indices"/>. <paramref name="gate"/> gives the
    /// routing of a batch (cluster ids, forced route) for models with experts; null for dense models.</summary>
    public static Tensor Extract(MaskedAutoencoder model, ImageDataset data, IReadOnlyList<int> indices,
                                 Func<int[], GateInput?>? gate = null, int batch = 512, Device? device = null,
                                 Action<int, int>? progress = null)
    {
        bool wasTraining = model.training;
        model.eval();
        var parts = new List<Tensor>();
        try
        {
            using var _ = no_grad();
            for (int s = 0; s < indices.Count; s += batch)
            {
                using var scope = NewDisposeScope();
                var idx = indices.Skip(s).Take(batch).ToArray();
                var imgs = data.Batch(idx).to(device ?? CPU);
                parts.Add(model.ForwardFeatures(imgs, gate?.Invoke(idx)).cpu().MoveToOuterDisposeScope());
                progress?.Invoke(Math.Min(s + batch, indices.Count), indices.Count);
            }
            return cat(parts, 0);
        }
        finally
        {
            foreach (var p in parts) p.Dispose();
            model.train(wasTraining);
        }
    }
}
