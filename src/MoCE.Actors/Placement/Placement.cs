using Akka.Actor;

namespace MoCE.Actors.Placement;

/// <summary>Which node hosts which expert: a plain type the supervisor drives from membership (hosts come and go)
/// and tests drive without actors. An expert goes to the host with the fewest experts, ties broken by node address,
/// so a placement is a pure function of the hosts present and the order experts are placed in.</summary>
public sealed class ExpertPlacement
{
    private readonly SortedDictionary<string, IActorRef> hosts = new(StringComparer.Ordinal);
    private readonly Dictionary<int, string> assigned = [];

    public int Hosts => hosts.Count;
    public IReadOnlyCollection<string> HostNodes => hosts.Keys;
    public IReadOnlyDictionary<int, string> Assigned => assigned;

    /// <summary>A host joined (or answered again after a restart of the supervisor).</summary>
    public void AddHost(string node, IActorRef host) => hosts[node] = host;

    /// <summary>A node left: its host is gone, and the experts it held (returned, ascending) have no home.</summary>
    public IReadOnlyList<int> RemoveNode(string node)
    {
        hosts.Remove(node);
        var lost = assigned.Where(kv => kv.Value == node).Select(kv => kv.Key).Order().ToList();
        foreach (var e in lost) assigned.Remove(e);
        return lost;
    }

    /// <summary>The expert no longer has a home (it was lost on its own, the node staying up).</summary>
    public void Unassign(int expert) => assigned.Remove(expert);

    /// <summary>Assigns expert e to the least-loaded host; null when there is none.</summary>
    public (string node, IActorRef host)? Choose(int expert)
    {
        if (hosts.Count == 0) return null;
        var load = hosts.Keys.ToDictionary(n => n, n => assigned.Values.Count(v => v == n));
        var node = hosts.Keys.MinBy(n => load[n])!;                 // SortedDictionary: the first minimum is the lowest address
        assigned[expert] = node;
        return (node, hosts[node]);
    }
}
