using Akka.Actor;
using MoCE.Actors.Messages;
using MoCE.Core.Checkpoints;

namespace MoCE.Actors.Placement;

/// <summary>The run's owners by stable id ("trainer", "router", "teacher", "expert-N"): the supervisor's one source
/// of who is who. A failure, a Terminated or a checkpoint part is matched to its owner here, never by parsing an
/// actor's path, so an expert is the same owner on whichever node it runs.</summary>
public sealed class OwnerRegistry
{
    private readonly Dictionary<string, IActorRef> byId = new(StringComparer.Ordinal);
    private readonly Dictionary<IActorRef, string> byRef = [];

    public void Set(string id, IActorRef actor)
    {
        if (byId.Remove(id, out var old)) byRef.Remove(old);
        byId[id] = actor;
        byRef[actor] = id;
    }

    public void Remove(string id)
    {
        if (byId.Remove(id, out var old)) byRef.Remove(old);
    }

    public string? IdOf(IActorRef actor) => byRef.GetValueOrDefault(actor);
    public IActorRef? this[string id] => byId.GetValueOrDefault(id);
    public bool Contains(string id) => byId.ContainsKey(id);

    /// <summary>The parameter owners, in a fixed order (trainer, router, experts by index): what a cut or a restore asks.</summary>
    public IEnumerable<(string id, IActorRef actor)> ParameterOwners(int experts) =>
        new[] { TrainerActor.Name, RouterActor.Name }.Concat(Enumerable.Range(0, experts).Select(ExpertId))
            .Where(byId.ContainsKey).Select(id => (id, byId[id]));

    public static string ExpertId(int e) => $"expert-{e}";
}

/// <summary>The supervisor's asks of every parameter owner, composed off its thread.</summary>
public static class OwnerCalls
{
    /// <summary>Every owner restores its part of <paramref name="target"/> under this generation.</summary>
    public static Task Restore(IEnumerable<(string id, IActorRef actor)> owners, CheckpointCommitted target, int generation, TimeSpan timeout)
    {
        var parts = target.Manifest.ToDictionary(r => r.Owner);
        return Task.WhenAll(owners.Select(o => o.actor.Ask<Restored>(new RestoreCheckpoint(target.Step, parts[o.id], generation), timeout)));
    }
}

/// <summary>The roles of a node in a MoCE cluster.</summary>
public static class NodeRoles
{
    /// <summary>Can host the run's supervisor (a cluster singleton), trainer, router and teacher.</summary>
    public const string Coordinator = "coordinator";
    /// <summary>Hosts experts (an <see cref="ExpertHostActor"/>), each on one of the node's devices.</summary>
    public const string Experts = "experts";
}
