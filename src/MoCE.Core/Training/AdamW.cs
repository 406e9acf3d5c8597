using MoCE.Core.Config;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace MoCE.Core.Training;

/// <summary>AdamW (Loshchilov &amp; Hutter), written out so that every owner of parameters (the dense
/// trainer, the router, each expert) steps and checkpoints its own state the same way. Matches
/// torch.optim.AdamW's single-tensor update. Weight decay skips 1-D parameters (biases, norm weights), as
/// MAE's add_weight_decay does. Parameters with requires_grad = false (fixed position embeddings) are not
/// optimized. A parameter without a gradient in a step (an expert with no rows) is skipped, as torch does after
/// zero_grad(set_to_none=True); t counts the owner's steps, those too.</summary>
public sealed class AdamW : IDisposable
{
    private sealed record Slot(string Name, Parameter Param, bool Decay, Tensor ExpAvg, Tensor ExpAvgSq);

    private readonly List<Slot> slots = [];
    private readonly TrainConfig cfg;

    /// <summary>Optimizer steps taken (t in the bias corrections).</summary>
    public long StepCount { get; private set; }

    public AdamW(IEnumerable<(string name, Parameter param)> parameters, TrainConfig cfg)
    {
        this.cfg = cfg;
        foreach (var (name, p) in parameters)
        {
            if (!p.requires_grad) continue;
            slots.Add(new Slot(name, p, p.dim() > 1, zeros_like(p).DetachFromDisposeScope(), zeros_like(p).DetachFromDisposeScope()));
        }
    }

    public IEnumerable<string> ParameterNames => slots.Select(s => s.Name);

    /// <summary>Clears every gradient (PyTorch 2's zero_grad(set_to_none=True)). A parameter that gets no gradient in
    /// the next step (an expert that got no rows) then has none, and <see cref="Step"/> leaves it and its moments alone:
    /// an update depends only on the step and the committed state. Zeroing instead made it depend on the process's
    /// history: a long-lived owner kept a zero gradient and applied decay and momentum to an idle expert; a fresh one
    /// (resumed, restarted, moved) had none and did not.</summary>
    public void ZeroGrad()
    {
        foreach (var s in slots) s.Param.grad = null;
    }

    /// <summary>Σ‖g‖² over this optimizer's parameters (one owner's share of the global norm).</summary>
    public double SquaredGradNorm()
    {
        using var scope = NewDisposeScope();
        var parts = slots.Where(s => s.Param.grad is not null).Select(s => s.Param.grad!.pow(Runtime.Scalars.Two).sum()).ToArray();
        return parts.Length == 0 ? 0.0 : stack(parts).sum().to_type(ScalarType.Float64).item<double>();
    }

    /// <summary>Clip coefficient for step <paramref name="step"/>'s global norm, as torch's clip_grad_norm_:
    /// min(1, max / (norm + 1e-6)). A norm that is not finite is a <see cref="NonFiniteStepException"/>: applied, it would
    /// make every weight NaN and every later commit useless (MAE's training loop stops on a non-finite loss likewise).
    /// <paramref name="culprits"/> names where it came from (the owners whose share was not finite).</summary>
    public static double ClipScale(long step, double globalNorm, double maxNorm, string culprits = "") =>
        !double.IsFinite(globalNorm) ? throw new NonFiniteStepException(step, $"the gradient norm is {globalNorm}{(culprits.Length > 0 ? $" ({culprits})" : "")}")
        : maxNorm <= 0 ? 1.0 : Math.Min(1.0, maxNorm / (globalNorm + 1e-6));

    /// <summary>One AdamW update with learning rate <paramref name="lr"/>, gradients multiplied by
    /// <paramref name="gradScale"/> (the clip coefficient) first.</summary>
    public void Step(double lr, double gradScale = 1.0)
    {
        StepCount++;
        double b1 = cfg.Beta1, b2 = cfg.Beta2;
        double bc1 = 1 - Math.Pow(b1, StepCount), bc2 = 1 - Math.Pow(b2, StepCount);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        // the step's numbers as scalars held until it ends (an implicit temporary can be freed mid-call: Runtime.Scalars)
        using Scalar scale = gradScale.ToScalar(), decay = (1 - lr * cfg.WeightDecay).ToScalar(), beta1 = b1.ToScalar(), rest1 = (1 - b1).ToScalar(),
                     beta2 = b2.ToScalar(), rest2 = (1 - b2).ToScalar(), root2 = Math.Sqrt(bc2).ToScalar(), eps = cfg.Eps.ToScalar(), rate = (-lr / bc1).ToScalar();
        foreach (var s in slots)
        {
            var g = s.Param.grad;
            if (g is null) continue;                          // no gradient in this step: no decay, no moment update
            if (gradScale != 1.0) g.mul_(scale);
            if (s.Decay && cfg.WeightDecay > 0) s.Param.mul_(decay);
            // m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²
            s.ExpAvg.mul_(beta1).add_(g, alpha: rest1);
            s.ExpAvgSq.mul_(beta2).addcmul_(g, g, value: rest2);
            // θ ← θ − lr/(1−β1ᵗ) · m / (sqrt(v)/sqrt(1−β2ᵗ) + ε)
            var denom = (s.ExpAvgSq.sqrt() / root2).add_(eps);
            s.Param.addcdiv_(s.ExpAvg, denom, value: rate);
        }
    }

    /// <summary>The optimizer's state as named tensors (references, not copies) for a checkpoint.</summary>
    public IEnumerable<(string name, Tensor tensor)> StateTensors()
    {
        foreach (var s in slots)
        {
            yield return ($"exp_avg.{s.Name}", s.ExpAvg);
            yield return ($"exp_avg_sq.{s.Name}", s.ExpAvgSq);
        }
    }

    /// <summary>Restores the state written by <see cref="StateTensors"/>; every slot must be present.</summary>
    public void LoadState(IReadOnlyDictionary<string, Tensor> tensors, long stepCount)
    {
        using var _ = no_grad();
        foreach (var s in slots)
        {
            s.ExpAvg.copy_(Get($"exp_avg.{s.Name}", s.ExpAvg));
            s.ExpAvgSq.copy_(Get($"exp_avg_sq.{s.Name}", s.ExpAvgSq));
        }
        StepCount = stepCount;

        Tensor Get(string key, Tensor like) =>
            tensors.TryGetValue(key, out var t) && t.shape.SequenceEqual(like.shape)
                ? t
                : throw new InvalidDataException($"optimizer state '{key}' is missing or has the wrong shape");
    }

    public void Dispose()
    {
        foreach (var s in slots) { s.ExpAvg.Dispose(); s.ExpAvgSq.Dispose(); }
        slots.Clear();
    }
}

/// <summary>A step whose loss or gradient is not finite (NaN or infinite): nothing of it is applied. The reference
/// trainers stop; the actor engine treats it as the trainer's failure, so the step is replayed from the last commit.</summary>
public sealed class NonFiniteStepException(long step, string what) : Exception($"step {step}: {what}; nothing of the step was applied")
{
    public long Step { get; } = step;
}

/// <summary>Per-step learning rate: linear warmup from 0, then half-cycle cosine to min-lr, as MAE's
/// util/lr_sched.adjust_learning_rate (there per fractional epoch, here per step).</summary>
public static class LrSchedule
{
    public static double At(long step, TrainConfig c)
    {
        double peak = c.PeakLr;
        if (step < c.WarmupSteps) return peak * step / c.WarmupSteps;
        double progress = (step - c.WarmupSteps) / (double)Math.Max(1, c.Steps - c.WarmupSteps);
        return c.MinLr + (peak - c.MinLr) * 0.5 * (1 + Math.Cos(Math.PI * Math.Min(1.0, progress)));
    }
}
