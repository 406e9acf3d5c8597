using TorchSharp;

namespace MoCE.Actors.Messages;

// Trainer → teacher: the distillation targets. A target is a pure function of the step number (the step's batch,
// its mask and the frozen weights), so a replayed step gets the same target, and the teacher can work ahead.

/// <summary>Command: compute step s's target now and keep it until it is asked for (the trainer sends it for step
/// s + 1 while it trains step s, so the teacher's forward overlaps the student's).</summary>
public sealed record Prefetch(long Step) : IStepMessage;

/// <summary>Query: step s's target, from the prefetched ones or computed on demand.</summary>
public sealed record GetTarget(long Step) : IStepMessage;

/// <summary>The teacher's encoder latent on step s's visible patches [N, 1 + L_vis, D]. Ownership passes to the
/// receiver, which disposes it; the teacher keeps no handle to it.</summary>
public sealed record Target(long Step, torch.Tensor Latent) : IStepMessage;
