using Akka.Actor;
using MoCE.Actors.Placement;

namespace MoCE.Actors.Tests;

/// <summary>Placement and the owner registry as plain types: experts spread evenly, ties go to the lowest address, a
/// lost node's experts are the ones handed back, and owners are found by id and by ref.</summary>
public sealed class PlacementTests : IDisposable
{
    private readonly ActorSystem system = ActorSystem.Create("placement");
    public void Dispose() => system.Terminate().Wait(TimeSpan.FromSeconds(10));

    [Fact]
    public void Experts_spread_evenly_and_a_lost_node_s_experts_go_to_the_nodes_left()
    {
        var p = new ExpertPlacement();
        IActorRef a = system.ActorOf(Props.Empty, "a"), b = system.ActorOf(Props.Empty, "b");
        p.AddHost("akka.tcp://moce@127.0.0.1:5002", b);
        p.AddHost("akka.tcp://moce@127.0.0.1:5001", a);
        var nodes = Enumerable.Range(0, 4).Select(e => p.Choose(e)!.Value.node).ToList();
        Assert.Equal(["akka.tcp://moce@127.0.0.1:5001", "akka.tcp://moce@127.0.0.1:5002", "akka.tcp://moce@127.0.0.1:5001", "akka.tcp://moce@127.0.0.1:5002"], nodes);

        Assert.Equal([1, 3], p.RemoveNode("akka.tcp://moce@127.0.0.1:5002"));
        Assert.Equal(1, p.Hosts);
        Assert.Equal(a, p.Choose(1)!.Value.host);
        Assert.Equal(a, p.Choose(3)!.Value.host);
        Assert.Equal(4, p.Assigned.Count(kv => kv.Value == "akka.tcp://moce@127.0.0.1:5001"));
        Assert.Empty(p.RemoveNode("akka.tcp://moce@127.0.0.1:9999"));

        Assert.Equal(4, p.RemoveNode("akka.tcp://moce@127.0.0.1:5001").Count);
        Assert.Null(p.Choose(0));                                              // no host: the supervisor waits for one
    }

    /// <summary>expert-exact's peers: each expert's copy is on the next node in address order (wrapping), never its own;
    /// a lost expert kept on its peer is placed there; with one host left there is no peer.</summary>
    [Fact]
    public void Each_expert_s_peer_is_the_next_other_node_and_a_lost_expert_can_be_kept_on_it()
    {
        var p = new ExpertPlacement();
        IActorRef a = system.ActorOf(Props.Empty, "pa"), b = system.ActorOf(Props.Empty, "pb"), c = system.ActorOf(Props.Empty, "pc");
        p.AddHost("n2", b);
        p.AddHost("n1", a);
        Assert.Null(p.PeerOf(0));                                              // not placed
        foreach (var e in Enumerable.Range(0, 3)) p.Choose(e);                  // n1, n2, n1
        Assert.Equal(["n2", "n1", "n2"], Enumerable.Range(0, 3).Select(e => p.PeerOf(e)));
        p.AddHost("n3", c);
        Assert.Equal(["n2", "n3", "n2"], Enumerable.Range(0, 3).Select(e => p.PeerOf(e)));
        p.Keep(3, "n3");
        Assert.Equal("n1", p.PeerOf(3));                                       // wraps around

        Assert.Equal([1], p.RemoveNode("n2"));
        p.Keep(1, "n3");                                                       // the supervisor keeps the lost expert on its peer
        Assert.Equal(("n3", c), p.Choose(1)!.Value);
        Assert.Equal(["n3", "n1", "n3"], Enumerable.Range(0, 3).Select(e => p.PeerOf(e)));
        p.RemoveNode("n3");
        Assert.Null(p.PeerOf(0));                                              // one host: no peer
    }

    [Fact]
    public void A_node_that_joins_gets_experts_from_the_busiest_until_shares_are_even_and_kept_experts_stay_put()
    {
        var p = new ExpertPlacement();
        IActorRef a = system.ActorOf(Props.Empty, "ra"), b = system.ActorOf(Props.Empty, "rb"), c = system.ActorOf(Props.Empty, "rc");
        p.AddHost("n1", a);
        p.AddHost("n2", b);
        for (int e = 0; e < 5; e++) p.Choose(e);                               // n1: 0, 2, 4; n2: 1, 3
        p.AddHost("n3", c);
        Assert.Equal([4], p.Rebalance("n3"));                                   // 5 over 3 nodes: the newcomer takes 1, from n1
        Assert.Empty(new ExpertPlacement().Rebalance("nowhere"));

        var q = new ExpertPlacement();
        q.AddHost("n1", a);
        for (int e = 0; e < 4; e++) q.Choose(e);                               // all on n1
        q.AddHost("n2", b);
        Assert.Equal([2, 3], q.Rebalance("n2"));                                // 4 over 2: two move

        var f = new ExpertPlacement();                                          // after a coordinator failover
        f.AddHost("n1", a);
        f.AddHost("n2", b);
        f.Keep(0, "n2");                                                        // n2 already runs expert-0
        Assert.Equal("n2", f.Choose(0)!.Value.node);
        Assert.Equal("n1", f.Choose(1)!.Value.node);
    }

    [Fact]
    public void The_registry_finds_owners_by_id_and_by_ref_and_forgets_a_replaced_ref()
    {
        var r = new OwnerRegistry();
        IActorRef t = system.ActorOf(Props.Empty, "t"), e1 = system.ActorOf(Props.Empty, "e1"), e1b = system.ActorOf(Props.Empty, "e1b");
        r.Set("trainer", t);
        r.Set("expert-1", e1);
        r.Set("expert-1", e1b);                                                // moved to another node
        Assert.Null(r.IdOf(e1));
        Assert.Equal("expert-1", r.IdOf(e1b));
        Assert.Equal(["trainer", "expert-1"], r.ParameterOwners(3).Select(o => o.id));   // router and expert-0 absent, fixed order
        r.Remove("expert-1");
        Assert.False(r.Contains("expert-1"));
    }
}
