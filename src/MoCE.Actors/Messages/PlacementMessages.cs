using Akka.Actor;
using MoCE.Core.Checkpoints;
using MoCE.Core.Config;

namespace MoCE.Actors.Messages;

// Supervisor ↔ each node's expert host: where experts live. A node that has the `experts` role (and the single
// process) runs one host at /user/expert-host; the supervisor asks it what it offers and has it create experts from
// an ExpertSpec: everything an expert needs that is not the node's own (its devices, threads, fault plan). Step is
// the supervisor's step when it sent the message.

/// <summary>What every expert of a run is built from, on whichever node it lands: the configuration, the shared
/// checkpoint store's location (a directory at the same path on every node) and the file of the experts' initial (upcycled) weights.</summary>
public sealed record ExpertSpec(string RunId, MaeConfig Model, MoeConfig Moe, TrainConfig Train, string Store, CheckpointRef Initial, RecoveryPolicy Policy);

/// <summary>Query to a host: what it offers.</summary>
public sealed record GetHostInfo(long Step) : IStepMessage;
/// <summary>A host's node (its address), its devices, and the experts it already runs, as "run-id/expert" (a supervisor
/// that took over after a coordinator failover keeps them where they are); the sender is the host.</summary>
public sealed record HostInfo(long Step, string Node, IReadOnlyList<string> Devices, IReadOnlyList<string> Hosting) : IStepMessage;

/// <summary>Command to a host: create expert e of the spec's run (or hand back the one it already hosts for that
/// run, after a coordinator failover). Recover: it was lost, and under expert-local it comes back from its own
/// snapshot.</summary>
public sealed record HostExpert(long Step, int Expert, ExpertSpec Spec, bool Recover) : IStepMessage;
/// <summary>Expert e runs as Ref on Node, computing on Device.</summary>
public sealed record ExpertHosted(long Step, int Expert, IActorRef Ref, string Node, string Device) : IStepMessage;

/// <summary>Host → supervisor: a hosted owner failed. Restarted: the host restarted it (the supervisor applies the
/// recovery policy); otherwise it could not be created and is stopped (the run cannot go on). Phase: where in a step
/// it failed (an expert says so; expert-exact retries a forward or backward and replays an update).</summary>
public sealed record OwnerFailure(long Step, string Owner, string Error, bool Restarted, StepPhase Phase = StepPhase.Other) : IStepMessage;

/// <summary>Supervisor → trainer and router: the experts' current refs, by expert index (after placement, and after
/// an expert moved to another node).</summary>
public sealed record UseExperts(long Step, IReadOnlyList<IActorRef> Experts) : IStepMessage;

/// <summary>Supervisor → router: expert e is gone (its node left); routings waiting on it fail at once.</summary>
public sealed record ExpertLost(long Step, int Expert) : IStepMessage;

/// <summary>Query (from `moce experts list`, through the cluster client): where every expert runs and how it is doing.</summary>
public sealed record GetExperts(long Step) : IStepMessage;
/// <summary>One expert: its node and device, the tokens routed to it in the last step (all MoE blocks), and its state:
/// up, down (recovering under expert-local), placing (being created on a node), or lost (no node can host it).</summary>
public sealed record ExpertInfo(int Expert, string Node, string Device, long TokensLastStep, string State);
public sealed record ExpertsStatus(long Step, long CommittedStep, IReadOnlyList<ExpertInfo> Experts) : IStepMessage;

/// <summary>Command (from `moce node drain`): move every expert off Node with nothing lost (commit at the current step,
/// create them on other nodes, every owner restores that commit), then have the node leave the cluster.</summary>
public sealed record DrainNode(long Step, string Node) : IStepMessage, Security.IControlCommand
{
    public Security.CommandSignature By { get; init; } = Security.CommandSignature.None;
    public string Canonical() => $"drain-node/{Node}";
    public IReadOnlyList<Security.PeerRole> Roles() => [Security.PeerRole.Operator];
    public Security.IControlCommand SignedWith(Security.CommandSignature by) => this with { By = by };
}
/// <summary>Node is drained: its experts (Moved) now run elsewhere from the commit of Step, and it was asked to leave.
/// Error: why it could not be drained (then nothing moved).</summary>
public sealed record NodeDrained(long Step, string Node, IReadOnlyList<int> Moved, string Error) : IStepMessage;

/// <summary>Command to a host (a planned move): stop the expert it runs for the run; it is being created elsewhere.
/// The host forgets it at once, so a later HostExpert for the same expert waits for the old instance to stop and gets
/// a new one, never the stopping one.</summary>
public sealed record StopExpert(long Step, string RunId, int Expert) : IStepMessage;

/// <summary>Command to a host (a chaos schedule's kill-node): kill this node's process at once, as SIGKILL would.</summary>
public sealed record KillNode(long Step) : IStepMessage;

/// <summary>Command (from `moce experts add`): add Count experts at the step boundary AtStep (−1: the next one), each
/// split from the busiest expert, on Node ("": where the placement policy puts them). The add commits, so nothing
/// before it is lost and nothing after it forgets it.</summary>
public sealed record AddExperts(long Step, int Count, string Node, long AtStep) : IStepMessage, Security.IControlCommand
{
    public Security.CommandSignature By { get; init; } = Security.CommandSignature.None;
    public string Canonical() => $"add-experts/{Count}/{Node}/{AtStep}";
    public IReadOnlyList<Security.PeerRole> Roles() => [Security.PeerRole.Operator];
    public Security.IControlCommand SignedWith(Security.CommandSignature by) => this with { By = by };
}
/// <summary>The answer: experts Added (split from Sources) run from the commit of Step; Error: why nothing was added.</summary>
public sealed record ExpertsAddedReply(long Step, IReadOnlyList<int> Added, IReadOnlyList<int> Sources, string Error) : IStepMessage;

/// <summary>Supervisor → a member that came up (with TLS): prove with your certificate that you may be a member with the
/// cluster roles you joined with. Nonce: fresh random, so a proof cannot be replayed.</summary>
public sealed record ProveMembership(long Step, string Nonce) : IStepMessage;
/// <summary>The member's answer (<see cref="MembershipActor"/>), signed with its certificate over the nonce, its address
/// and its cluster roles: a coordinator needs the coordinator role; an expert node the node or coordinator role
/// (<see cref="Security.MembershipGate.RolesFor"/>).</summary>
public sealed record MembershipProof(long Step, string Nonce, string Address, IReadOnlyList<string> ClusterRoles) : IStepMessage, Security.IControlCommand
{
    public Security.CommandSignature By { get; init; } = Security.CommandSignature.None;
    public string Canonical() => $"join/{Address}/{string.Join(",", ClusterRoles.Order(StringComparer.Ordinal))}/{Nonce}";
    public IReadOnlyList<Security.PeerRole> Roles() => Security.MembershipGate.RolesFor(ClusterRoles);
    public Security.IControlCommand SignedWith(Security.CommandSignature by) => this with { By = by };
}
