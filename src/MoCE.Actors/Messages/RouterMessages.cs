using TorchSharp;

namespace MoCE.Actors.Messages;

// Trainer ↔ router, one pair per MoE block per step.

/// <summary>Command: route block b's MLP input h [N, T, D] by the images' clusters; reply with the combined
/// expert output. Rows whose chosen expert is in <c>Down</c> (recovering, expert-local) go to their best
/// available expert with the same weight.</summary>
public sealed record Route(long Step, int Generation, int Block, torch.Tensor Hidden, torch.Tensor ClusterIds, IReadOnlySet<int> Down) : IStepMessage;

/// <summary>The combined output y [N, T, D], and the routing (gate probabilities, top-k choice) for metrics.</summary>
public sealed record Routed(long Step, int Block, torch.Tensor Output, torch.Tensor Probs, torch.Tensor Choice, long TokensPerRow, int ReroutedRows) : IStepMessage;

/// <summary>Command: backpropagate dL/dy of block b (plus λ·aux, which the router owns); reply with dL/dh.</summary>
public sealed record RouteBackward(long Step, int Generation, int Block, torch.Tensor GradOutput) : IStepMessage;
public sealed record RoutedBackward(long Step, int Block, torch.Tensor GradHidden) : IStepMessage;

/// <summary>Router → supervisor (moce.actors.straggler-timeout): Experts did not answer block Block of attempt
/// Generation within the timeout. The router fails the attempt; the supervisor retries the step without them (their
/// rows go to the next-best expert, as for a down expert under expert-local) and lets them back after a sit-out.</summary>
public sealed record ExpertsSlow(long Step, int Generation, int Block, IReadOnlyList<int> Experts, double WaitedMs) : IStepMessage;
