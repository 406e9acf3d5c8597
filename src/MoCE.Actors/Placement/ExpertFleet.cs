using Akka.Actor;
using Akka.Event;
using MoCE.Actors.Messages;

namespace MoCE.Actors.Placement;

/// <summary>Timer: attempt <c>Attempt</c> to place expert e was not answered within the ask timeout.</summary>
public sealed record PlacementTimedOut(int Expert, int Attempt);

/// <summary>The supervisor's experts: who runs where (the <see cref="OwnerRegistry"/>), where each goes
/// (<see cref="ExpertPlacement"/>, whose decisions it carries out), and the HostExpert requests still pending, each
/// bounded by a timer. It runs on the supervisor's thread, sends as the supervisor and watches through its context.</summary>
public sealed class ExpertFleet(string runId, OwnerRegistry registry, IActorContext context, ITimerScheduler timers, TimeSpan askTimeout, ILoggingAdapter log)
{
    public ExpertPlacement Placement { get; } = new();

    public bool AllPlaced(int experts) => Enumerable.Range(0, experts).All(e => registry.Contains(OwnerRegistry.ExpertId(e)));

    /// <summary>The experts' refs by index (Nobody for one being placed): what the trainer and router route to.</summary>
    public IReadOnlyList<IActorRef> Refs(int experts) => Enumerable.Range(0, experts).Select(e => registry[OwnerRegistry.ExpertId(e)] ?? ActorRefs.Nobody).ToList();

    /// <summary>A host answered GetHostInfo: it is a host of the run from now on. <paramref name="keepWhatItRuns"/> (before the
    /// run begins, say after a coordinator failover): experts of this run it already runs stay there. True when it joined.</summary>
    public bool HostAnswered(HostInfo m, IActorRef host, bool keepWhatItRuns)
    {
        bool joined = !Placement.HostNodes.Contains(m.Node);
        Placement.AddHost(m.Node, host);
        foreach (var h in m.Hosting)
            if (keepWhatItRuns && h.StartsWith(runId + "/", StringComparison.Ordinal) && int.TryParse(h.AsSpan(runId.Length + 1), out var e))
                Placement.Keep(e, m.Node);
        return joined;
    }

    /// <summary>Asks a host for every expert that has no home and is not being placed. <paramref name="recover"/>: they were
    /// lost (under expert-local each comes back from its own snapshot).</summary>
    public void PlaceMissing(int experts, long step, Func<int, ExpertSpec> spec, bool recover)
    {
        foreach (var e in Enumerable.Range(0, experts).Where(e => !registry.Contains(OwnerRegistry.ExpertId(e)) && !Placement.IsPlacing(e)))
        {
            if (Placement.Choose(e) is not { } where)
            {
                log.Warning("No expert host is left for {0}; waiting for a node with the '{1}' role", OwnerRegistry.ExpertId(e), NodeRoles.Experts);
                return;
            }
            timers.StartSingleTimer($"place-{e}", new PlacementTimedOut(e, Placement.Placing(e, where.node)), askTimeout);
            where.host.Tell(new HostExpert(step, e, spec(e), recover));
        }
    }

    /// <summary>A host created an expert: it is registered and watched. False when that request was withdrawn.</summary>
    public bool Hosted(ExpertHosted m)
    {
        if (!Placement.Hosted(m.Expert, m.Node, m.Device)) return false;
        timers.Cancel($"place-{m.Expert}");
        registry.Set(OwnerRegistry.ExpertId(m.Expert), m.Ref);
        context.Watch(m.Ref);
        log.Info("{0} runs on {1} ({2})", OwnerRegistry.ExpertId(m.Expert), m.Node, m.Device);
        return true;
    }

    /// <summary>A placement timed out: the request is withdrawn (StopExpert, in case the host answers late). Why, and how
    /// many of this expert's attempts timed out; null when that attempt was answered or withdrawn already.</summary>
    public (string why, int timeouts)? TimedOut(PlacementTimedOut m, long step)
    {
        if (Placement.TimedOut(m.Expert, m.Attempt) is not { } t) return null;
        Placement.HostAt(t.node)?.Tell(new StopExpert(step, runId, m.Expert));
        var why = $"its host on {t.node} did not answer within {askTimeout.TotalSeconds:F0} s (moce.actors.ask-timeout)";
        log.Warning("Placing {0}: {1}; placing it again", OwnerRegistry.ExpertId(m.Expert), why);
        return (why, t.timeouts);
    }

    /// <summary>A node left: the experts being placed there are withdrawn (true when there were any, to place again).
    /// Placed ones come back through their Terminated.</summary>
    public bool NodeRemoved(string node) => Placement.RemoveNode(node).Count(Placement.Withdraw) > 0;   // withdraws every one

    /// <summary>Expert actor <paramref name="t"/> stopped: it and, when its node went, every expert there have no home
    /// any more. Returns them, ascending.</summary>
    public List<int> Lose(Terminated t, int experts)
    {
        var lost = Enumerable.Range(0, experts).Where(e => registry[OwnerRegistry.ExpertId(e)] is { } r
            && (r.Equals(t.ActorRef) || (t.AddressTerminated && r.Path.Address.Equals(t.ActorRef.Path.Address)))).ToList();
        foreach (var e in lost)
        {
            registry.Remove(OwnerRegistry.ExpertId(e));
            Placement.Unassign(e);
        }
        return lost;
    }

    /// <summary>A planned move: these experts stop where they run (their host forgets them, so one can come back to that
    /// node as a new instance) and have no home until they are placed again.</summary>
    public void Stop(IEnumerable<int> experts, long step)
    {
        foreach (var e in experts)
        {
            var id = OwnerRegistry.ExpertId(e);
            if (registry[id] is { } actor)
            {
                context.Unwatch(actor);
                registry.Remove(id);
                if (Placement.Assigned.TryGetValue(e, out var node) && Placement.HostAt(node) is { } host) host.Tell(new StopExpert(step, runId, e));
                else actor.Tell(PoisonPill.Instance);
            }
            Placement.Unassign(e);
        }
    }

    /// <summary>One expert for `moce experts list`: its home, its tokens in the last step, and whether it is up, down
    /// (out of the steps), placing or lost.</summary>
    public ExpertInfo Info(int e, bool down, long tokens)
    {
        var (node, device) = Placement.Home(e);
        var state = down ? "down" : registry.Contains(OwnerRegistry.ExpertId(e)) ? "up" : Placement.IsPlacing(e) ? "placing" : "lost";
        return new ExpertInfo(e, node, device, tokens, state);
    }
}
