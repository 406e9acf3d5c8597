using Akka.Actor;

namespace MoCE.Actors.Placement;

/// <summary>Which node hosts which expert: a plain type the supervisor drives from membership (hosts come and go)
/// and tests drive without actors. An expert goes to the host with the fewest experts, ties broken by node address,
/// so a placement is a pure function of the hosts present and the order experts are placed in.</summary>
public sealed class ExpertPlacement
{
    private readonly SortedDictionary<string, IActorRef> hosts = new(StringComparer.Ordinal);
    private readonly Dictionary<int, string> assigned = [];
    private readonly Dictionary<int, (string node, int attempt)> placing = [];     // asked of a host, not yet hosted
    private readonly Dictionary<int, (string node, string device)> homes = [];     // where each expert was last hosted
    private readonly Dictionary<int, int> timeouts = [];
    private int attempts;

    public int Hosts => hosts.Count;
    public IReadOnlyCollection<string> HostNodes => hosts.Keys;
    public IActorRef? HostAt(string node) => hosts.GetValueOrDefault(node);
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

    /// <summary>The experts to move to <paramref name="node"/> (just joined, holding none) so that loads even out: one at a
    /// time from the busiest other node (its highest-numbered expert), while that node holds more than the newcomer will.</summary>
    public IReadOnlyList<int> Rebalance(string node)
    {
        if (!hosts.ContainsKey(node)) return [];
        int target = assigned.Count / hosts.Count;                       // what the newcomer should end with
        var load = hosts.Keys.Where(n => n != node).ToDictionary(n => n, n => assigned.Values.Count(v => v == n));
        var moving = new List<int>();
        while (moving.Count < target && load.Count > 0)
        {
            var busiest = load.OrderByDescending(kv => kv.Value).ThenBy(kv => kv.Key, StringComparer.Ordinal).First();
            if (busiest.Value <= moving.Count + 1) break;                   // moving one more would not even things out
            moving.Add(assigned.Where(kv => kv.Value == busiest.Key && !moving.Contains(kv.Key)).Max(kv => kv.Key));
            load[busiest.Key]--;
        }
        return moving.Order().ToList();
    }

    /// <summary>Expert e is asked of <paramref name="node"/>'s host: the attempt's number, which a timer bounds.</summary>
    public int Placing(int expert, string node)
    {
        placing[expert] = (node, ++attempts);
        return attempts;
    }

    public bool IsPlacing(int expert) => placing.ContainsKey(expert);

    /// <summary>Its host created expert e: false when that request was withdrawn (timed out, or its node left).</summary>
    public bool Hosted(int expert, string node, string device)
    {
        if (!placing.Remove(expert)) return false;
        homes[expert] = (node, device);
        return true;
    }

    /// <summary>Expert e was lost while being placed (its node left): withdraw the request. False when none was pending.</summary>
    public bool Withdraw(int expert) => placing.Remove(expert);

    /// <summary>The attempt of placing expert e timed out: the node it was asked of (the expert has no home now) and how
    /// many of its attempts timed out; null when that attempt was answered or withdrawn.</summary>
    public (string node, int timeouts)? TimedOut(int expert, int attempt)
    {
        if (!placing.TryGetValue(expert, out var p) || p.attempt != attempt) return null;
        placing.Remove(expert);
        assigned.Remove(expert);
        return (p.node, timeouts[expert] = timeouts.GetValueOrDefault(expert) + 1);
    }

    /// <summary>Where expert e was last hosted, and on which device ("" when never).</summary>
    public (string node, string device) Home(int expert) => homes.GetValueOrDefault(expert, ("", ""));

    /// <summary>The experts on <paramref name="node"/>, ascending.</summary>
    public List<int> On(string node) => assigned.Where(kv => kv.Value == node).Select(kv => kv.Key).Order().ToList();

    /// <summary>Expert e already runs on <paramref name="node"/> (found there after a coordinator failover): keep it there.</summary>
    public void Keep(int expert, string node) => assigned[expert] = node;

    /// <summary>The node that keeps a copy of expert e's state besides its own (expert-exact): the next host after the
    /// expert's node in address order, wrapping around. Null when the expert has no node or there is no other host.</summary>
    public string? PeerOf(int expert)
    {
        if (!assigned.TryGetValue(expert, out var node) || hosts.Count < 2) return null;
        return hosts.Keys.FirstOrDefault(n => string.CompareOrdinal(n, node) > 0) ?? hosts.Keys.First(n => n != node);
    }

    /// <summary>Where expert e goes: where it is kept, else the least-loaded host; null when there is none.</summary>
    public (string node, IActorRef host)? Choose(int expert)
    {
        if (assigned.TryGetValue(expert, out var kept) && hosts.TryGetValue(kept, out var keptHost)) return (kept, keptHost);
        if (hosts.Count == 0) return null;
        var load = hosts.Keys.ToDictionary(n => n, n => assigned.Values.Count(v => v == n));
        var node = hosts.Keys.MinBy(n => load[n])!;                 // SortedDictionary: the first minimum is the lowest address
        assigned[expert] = node;
        return (node, hosts[node]);
    }
}
