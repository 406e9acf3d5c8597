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

// Expert-exact across nodes: each expert's state also lives on one peer node, so that an expert lost with its node
// comes back there exactly.

/// <summary>Supervisor → expert (expert-exact, in a cluster): after each update and each restore, send your state (the
/// start of the next step) to this expert host, on another node (your peer). Nobody: there is no other node.</summary>
public sealed record CopyTo(long Step, Akka.Actor.IActorRef Host) : IStepMessage;

/// <summary>Expert → its peer node's expert host: the expert's state at the start of Step (weights and AdamW moments by
/// name, and the optimizer's step count). The host keeps it for the expert, which is placed there, and puts it back,
/// when its own node is lost. The tensors belong to the message: the host disposes them once it has copied them.</summary>
public sealed record PeerCopy(long Step, string RunId, int Expert, long OptimizerSteps, IReadOnlyList<(string Name, torch.Tensor Tensor)> State) : IStepMessage;
