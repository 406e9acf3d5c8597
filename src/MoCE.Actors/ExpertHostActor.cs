using Akka.Actor;
using Akka.Actor.Internal;
using Akka.Event;
using MoCE.Actors.Messages;
using MoCE.Actors.Placement;
using MoCE.Core.Checkpoints;
using TorchSharp;

namespace MoCE.Actors;

/// <summary>What a node gives the experts it hosts: its devices (each expert claims the least used one), their
/// threads, and the process's fault plan.</summary>
public sealed record NodeResources(IReadOnlyList<string> Devices, int OwnerThreads, ChaosPlan Chaos, EngineThreads Threads, bool AcceptKill = false)
{
    /// <summary>The in-memory copies of the experts hosted here (expert-exact): they outlive an expert's restart.</summary>
    public ExpertCopies Copies { get; } = new();

    /// <summary>Checks every device name now, so that a node with a bad device list fails at start, not at placement.</summary>
    public NodeResources Validated()
    {
        if (Devices.Count == 0) throw new MoCE.Core.Config.ConfigException("moce.node.devices", "is empty: list at least one device (\"cpu\", \"cuda:0\", ...)");
        foreach (var d in Devices)
        {
            try { _ = new torch.Device(d); }
            catch (Exception e) { throw new MoCE.Core.Config.ConfigException("moce.node.devices", $"'{d}' is not a device: {e.Message}"); }
        }
        return this;
    }
}

/// <summary>A node's expert host, at /user/expert-host on every node with the `experts` role (and in the single
/// process). It creates the experts the supervisor places here, from the run's <see cref="ExpertSpec"/> and this
/// node's own <see cref="NodeResources"/>; no Props or tensor crosses a node to do it. It is the experts' parent:
/// a failing expert is restarted here and the failure reported to its supervisor, which applies the recovery policy
/// (an expert that cannot even be created is stopped, and the supervisor sees it terminate).</summary>
public sealed class ExpertHostActor : ReceiveActor
{
    public const string Name = "expert-host";

    private sealed record Hosted(IActorRef Supervisor, string Owner, string Device, string RunId, int Expert);

    private readonly NodeResources resources;
    private readonly string node;
    private readonly ILoggingAdapter log = Context.GetLogger();
    private readonly Dictionary<IActorRef, Hosted> hosted = [];
    private readonly Dictionary<IActorRef, Hosted> stopping = [];
    private readonly Dictionary<string, (HostExpert request, IActorRef sender)> waiting = [];   // for an old instance to stop

    public static Props Props(NodeResources resources) => Akka.Actor.Props.Create(() => new ExpertHostActor(resources));

    public ExpertHostActor(NodeResources resources)
    {
        this.resources = resources.Validated();
        node = ((ExtendedActorSystem)Context.System).Provider.DefaultAddress.ToString();
        Receive<GetHostInfo>(m => Sender.Tell(new HostInfo(m.Step, node, resources.Devices, hosted.Values.Select(h => $"{h.RunId}/{h.Expert}").ToList())));
        Receive<HostExpert>(Host);
        Receive<Wire.MalformedFrame>(m => log.Error(m.Failure(Sender).Message));   // a request that did not parse: nothing to do
        Receive<ExpertRecovered>(m => { if (hosted.TryGetValue(Sender, out var h)) h.Supervisor.Tell(m); });
        Receive<ExpertCopyRestored>(m => { if (hosted.TryGetValue(Sender, out var h)) h.Supervisor.Tell(m); });
        Receive<PeerCopy>(KeepPeerCopy);
        Receive<StopExpert>(m =>
        {
            var child = Context.Child(ChildName(m.RunId, m.Expert));
            if (child.IsNobody() || !hosted.Remove(child, out var h)) return;
            stopping[child] = h;                                                 // its copy goes once it has stopped
            Context.Stop(child);
        });
        Receive<KillNode>(m =>
        {
            // a chaos schedule's node kill, only where this node was started to allow it (moce.node.chaos-kill): any peer
            // could send it, and it ends the process
            if (!resources.AcceptKill)
            {
                log.Warning("Refused KillNode (step {0}) from {1}: this node does not accept a chaos schedule's kill (moce.node.chaos-kill = false)", m.Step, Sender.Path.Address);
                return;
            }
            // the process dies as under SIGKILL, with no leaving and no flush
            log.Warning("Chaos: this node is killed at step {0}", m.Step);
            System.Diagnostics.Process.GetCurrentProcess().Kill();
        });
        Receive<Terminated>(t =>
        {
            if (hosted.Remove(t.ActorRef, out var h) || stopping.Remove(t.ActorRef, out h)) resources.Copies.Drop(h.RunId, h.Expert);
            if (waiting.Remove(t.ActorRef.Path.Name, out var w)) Self.Tell(w.request, w.sender);   // its name is free now
        });
    }

    private void Host(HostExpert m)
    {
        var name = ChildName(m.Spec.RunId, m.Expert);
        var child = Context.Child(name);
        if (!child.IsNobody() && !hosted.ContainsKey(child))
        {
            waiting[name] = (m, Sender);                                          // being stopped (StopExpert): create it anew after
            return;
        }
        if (!child.IsNobody() && hosted.TryGetValue(child, out var existing))
        {
            // a new supervisor (the coordinator failed over) finds the expert where the old one placed it: same owner,
            // same weights until its restore; failures now go to the new supervisor
            hosted[child] = existing with { Supervisor = Sender };
            Sender.Tell(new ExpertHosted(m.Step, m.Expert, child, node, existing.Device));
            return;
        }
        var device = resources.Devices.MinBy(d => hosted.Values.Count(h => h.Device == d))!;
        var setup = new ExpertSetup(m.Spec, m.Expert, CheckpointStores.Open(m.Spec.Store), new torch.Device(device),
                                    resources.OwnerThreads, resources.Chaos, resources.Threads, m.Recover, resources.Copies);
        var expert = Context.ActorOf(ExpertActor.Props(setup), name);
        Context.Watch(expert);
        hosted[expert] = new Hosted(Sender, OwnerRegistry.ExpertId(m.Expert), device, m.Spec.RunId, m.Expert);
        log.Info("Hosting {0} of run {1} on {2}", OwnerRegistry.ExpertId(m.Expert), m.Spec.RunId, device);
        Sender.Tell(new ExpertHosted(m.Step, m.Expert, expert, node, device));
    }

    /// <summary>An expert on another node sent its state (expert-exact): kept in this node's copies, where the expert finds
    /// it if it is placed here after its node is lost. Ignored while the expert runs here (a late copy from its old node).</summary>
    private void KeepPeerCopy(PeerCopy m)
    {
        if (hosted.Values.Any(h => h.RunId == m.RunId && h.Expert == m.Expert)) { foreach (var (_, t) in m.State) t.Dispose(); return; }
        resources.Copies.For(m.RunId, m.Expert).Take(m.Step, m.State, m.OptimizerSteps);   // the copy owns the message's tensors
    }

    private static string ChildName(string runId, int expert) =>
        runId.Length == 0 ? OwnerRegistry.ExpertId(expert) : $"{runId}-{OwnerRegistry.ExpertId(expert)}";

    /// <summary>A failed expert is restarted, one that cannot be created is stopped; either way its supervisor hears of it.</summary>
    protected override SupervisorStrategy SupervisorStrategy() => new ReportingStrategy((child, cause, restart) =>
    {
        if (!hosted.TryGetValue(child, out var h)) return;
        var (step, phase, error) = cause is StepPhaseException p
            ? (p.Step, p.Phase, $"{cause.GetBaseException().Message} (in the {p.Phase.ToString().ToLowerInvariant()} of step {p.Step})")
            : (-1L, StepPhase.Other, cause.GetBaseException().Message);
        h.Supervisor.Tell(new OwnerFailure(step, h.Owner, error, restart, phase));
    });
}
