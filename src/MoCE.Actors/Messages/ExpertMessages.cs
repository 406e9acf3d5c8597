using TorchSharp;

namespace MoCE.Actors.Messages;

// Router ↔ expert. Generation counts the supervisor's recoveries, so a reply from an attempt that a rollback
// abandoned is recognised and dropped. Tensors travel by reference between local actors: the receiver owns what it receives, and the
// sender neither touches nor disposes it after sending.

/// <summary>Command: run this expert's MLP of block b on its rows [R_e, T, D].</summary>
public sealed record ExpertForward(long Step, int Generation, int Block, torch.Tensor Input) : IStepMessage;
public sealed record ExpertOutput(long Step, int Generation, int Block, int Expert, torch.Tensor Output) : IStepMessage;

/// <summary>Command: backpropagate dL/dOutput through block b's MLP; accumulate the parameter gradients and return
/// dL/dInput.</summary>
public sealed record ExpertBackward(long Step, int Generation, int Block, torch.Tensor GradOutput) : IStepMessage;
public sealed record ExpertInputGrad(long Step, int Generation, int Block, int Expert, torch.Tensor GradInput) : IStepMessage;
