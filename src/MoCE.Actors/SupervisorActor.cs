using System.Diagnostics;
using Akka.Actor;
using Akka.Actor.Internal;
using Akka.Event;
using Akka.Persistence;
using Akka.Cluster;
using MoCE.Actors.Messages;
using MoCE.Actors.Placement;
using MoCE.Actors.Wire;
using MoCE.Core.Checkpoints;

namespace MoCE.Actors;

/// <summary>Callbacks for the host (metrics files, the commit export, progress). They run on the supervisor's thread
/// and must be quick. BeforeCommit runs after every owner wrote its part and before the commit is persisted:
/// whatever describes the steps up to the commit (metrics rows) must be durable by then.</summary>
public sealed record SupervisorHooks(Action<StepCompleted>? OnStep = null, Action<CheckpointCommitted>? OnCommit = null,
                                     Action<RecoveryRecord>? OnRecovery = null, Action<long>? BeforeCommit = null,
                                     Action<ChaosFired>? OnChaos = null, Action<long>? OnResume = null);

/// <summary>The run could not go on: failures kept coming (see <see cref="RestartBackoff"/>), an owner could not be
/// (re)created, or no commit verifies. The journal and the last commit are intact.</summary>
public sealed class RunFailedException(string message) : Exception(message);

/// <summary>The supervisor: owns the run. It creates the coordinator's owners (trainer, router) and the teacher as
/// its children, has the expert hosts of the cluster's `experts` nodes (or the process's own host) create the experts,
/// and keeps every owner in an <see cref="OwnerRegistry"/> by stable id, watching each one. It drives the step loop,
/// takes a consistent checkpoint every N steps (every owner writes its part, then <see cref="CheckpointCommitted"/>
/// is persisted: only that makes a checkpoint count), and on an owner's failure, or the loss of an expert's node,
/// applies the recovery policy, with backoff when failures repeat; lost experts are placed again on the nodes that
/// remain. Its journal (SQLite by default, PostgreSQL for a cluster) holds commits and recoveries, never tensors, so
/// a restarted process, or the other coordinator, resumes from the last commit.</summary>
public sealed class SupervisorActor : ReceivePersistentActor, IWithTimers
{
    public ITimerScheduler Timers { get; set; } = null!;

    /// <summary>Command: train until step <c>Until</c> (exclusive); the sender gets <see cref="RunFinished"/> (or the
    /// failure). Idempotent: every coordinator node sends it (again after a failover), and each is told the end.</summary>
    public sealed record Start(long Until);
    /// <summary>Command from the engine (Ctrl-C): commit a checkpoint at the current step and finish.</summary>
    public sealed record StopAndCommit;

    private sealed record CutDone(long Step, int Generation, CheckpointRef[] Refs);
    private sealed record RestoreDone(long Step, int Generation);
    private sealed record OperationFailed(int Generation, Exception Error);
    private sealed record OwnerFailed(string Owner, string Error);
    private sealed record RestoreAfterBackoff(int Generation);
    private sealed record PlacementTimedOut(int Expert, int Attempt);
    private sealed record RecoveryWaitTimedOut(int Generation);

    private readonly ActorContextSetup setup;
    private readonly SupervisorHooks hooks;
    private readonly long checkpointEvery;
    private readonly int keep;
    private readonly int minExpertNodes;
    private readonly ILoggingAdapter log = Context.GetLogger();
    private readonly SupervisorState state;
    private readonly OwnerRegistry registry = new();
    private readonly ExpertPlacement placement = new();
    // experts asked of a host and not yet hosted: which node, and which attempt (a timer bounds each)
    private readonly Dictionary<int, (string node, int attempt)> placing = [];
    private int placements;
    private readonly Dictionary<int, int> placementTimeouts = [];     // before the run begins: timeouts per expert
    private readonly HashSet<IActorRef> listeners = [];
    private readonly Dictionary<int, (string node, string device)> homes = [];   // where each expert was last hosted
    private IReadOnlyList<MoCE.Core.Training.ExpertStat> lastRouting = [];
    /// <summary>A planned move of experts at a step boundary: a drain (moce node drain: they leave a node, which then
    /// leaves the cluster) or a rebalance onto a node that joined (moce.actors.placement = spread).</summary>
    private sealed record PlannedMove(string What, IReadOnlyList<int> Experts, string? LeavingNode, IActorRef? Requester)
    {
        public bool Started { get; set; }
    }
    private PlannedMove? move;
    /// <summary>An add of experts (moce experts add), taken at a step boundary: commit, grow the commit, place, restore.</summary>
    private sealed record PendingAdd(int Count, string Node, long AtStep, IActorRef? Requester)
    {
        public bool Started { get; set; }
        public IReadOnlyList<int> Sources { get; set; } = [];
    }
    private PendingAdd? add;
    private sealed record Grown(int Generation, IReadOnlyList<int> Sources, CheckpointCommitted Commit);
    private sealed record GrowFailed(int Generation, Exception Error);
    // tokens per expert (all MoE blocks) of the last steps this supervisor saw, at most checkpoint-every of them: which
    // expert is busiest when one is split
    private readonly SortedDictionary<long, long[]> recentTokens = [];   // by step: a replayed step overwrites its first run
    private CheckpointRef initial = null!;                 // the experts' upcycled weights, which every expert loads first
    private ExpertSpec spec = null!;
    private IActorRef trainer = ActorRefs.Nobody, router = ActorRefs.Nobody;
    private long step, end;
    private int generation;
    private bool started, begun, restoreWaiting, recovering, stopRequested, waitingForExperts;
    private RunFinished? finished;
    private (string owner, string error, long step, Stopwatch clock)? failure;
    private RunFailedException? fatal;                  // a run that cannot go on
    private readonly Dictionary<string, string> stopCauses = [];
    // expert-local: experts recovering (no rows, no updates), those ready to rejoin, and what their downtime cost
    private readonly HashSet<int> down = [];
    private readonly Dictionary<int, long> sittingOut = [];      // straggler timeout: expert → the step it takes rows again
    private bool retryWithoutSlow;
    private readonly Dictionary<int, long> rejoining = [];
    private readonly Dictionary<int, Outage> outages = [];

    public override string PersistenceId { get; }

    /// <summary><paramref name="minExpertNodes"/>: how many expert hosts must be present before the experts are
    /// placed (1 in a single process; in a cluster, the `experts` nodes the run is meant to spread over).</summary>
    public static Props Props(ActorContextSetup setup, SupervisorHooks hooks, long checkpointEvery, int keep, int minExpertNodes = 1) =>
        Akka.Actor.Props.Create(() => new SupervisorActor(setup, hooks, checkpointEvery, keep, minExpertNodes));

    /// <summary>The supervisor under a <see cref="Akka.Pattern.BackoffSupervisor"/>, which is what a run hosts: Akka stops a
    /// persistent actor whose journal write fails (the database is down, or refuses); it is started again after the
    /// run's backoff, recovers the journal, finds the experts where they run, and resumes from the last commit, as a
    /// coordinator failover does. At the run's max-failures in a row it stops for good (and the run with it). The count
    /// resets only when a commit is journaled (manual reset), never because some time passed: with Akka's automatic
    /// reset, a journal that fails only after a while (a slow or loaded machine) restarted the supervisor forever.
    /// Messages to it go to the supervisor.</summary>
    public static Props Restartable(ActorContextSetup setup, SupervisorHooks hooks, long checkpointEvery, int keep, int minExpertNodes = 1) =>
        Akka.Pattern.BackoffSupervisor.Props(Akka.Pattern.Backoff.OnStop(Props(setup, hooks, checkpointEvery, keep, minExpertNodes), "supervisor",
            setup.Backoff.Min, setup.Backoff.Max, 0.0, setup.Backoff.MaxFailures).WithManualReset());

    public SupervisorActor(ActorContextSetup setup, SupervisorHooks hooks, long checkpointEvery, int keep, int minExpertNodes)
    {
        this.setup = setup;
        this.hooks = hooks;
        this.checkpointEvery = checkpointEvery;
        this.keep = keep;
        this.minExpertNodes = Math.Max(1, minExpertNodes);
        PersistenceId = $"{setup.RunId}-supervisor";
        state = new SupervisorState(setup.Policy, setup.Backoff, setup.Moe.Experts);

        Recover<CheckpointCommitted>(state.Apply);
        Recover<RecoveryRecord>(state.Apply);
        Recover<ExpertsAdded>(state.Apply);
        Recover<ChaosFired>(state.Apply);
        Command<ChaosFired>(e => Persist(e, ChaosJournaled));
        Command<Start>(HandleStart);
        Command<HostInfo>(HandleHostInfo);
        Command<ExpertHosted>(HandleExpertHosted);
        Command<PlacementTimedOut>(HandlePlacementTimedOut);
        Command<RecoveryWaitTimedOut>(m =>
        {
            if (m.Generation != generation || !waitingForExperts || fatal is not null) return;
            Fail($"all steps are done, but experts [{string.Join(",", down)}] did not come back within {RecoveryWait.TotalSeconds:F0} s " +
                 "(2 × moce.actors.ask-timeout) for the final commit");
        });
        Command<ClusterEvent.MemberUp>(m => AskHost(m.Member));
        Command<ClusterEvent.MemberRemoved>(m => HandleNodeRemoved(m.Member.Address.ToString()));
        Command<ClusterEvent.IMemberEvent>(_ => { });
        Command<StepCompleted>(HandleStepCompleted);
        Command<CutDone>(HandleCutDone);
        Command<RestoreDone>(HandleRestoreDone);
        Command<OwnerFailed>(HandleOwnerFailed);
        Command<OwnerFailure>(m =>
        {
            if (m.Restarted) HandleOwnerFailed(new OwnerFailed(m.Owner, m.Error));
            else stopCauses[m.Owner] = m.Error;                                 // its Terminated follows
        });
        Command<RestoreAfterBackoff>(m => { if (m.Generation == generation && fatal is null) Restore(); });
        Command<Terminated>(HandleTerminated);
        Command<OperationFailed>(m => { if (m.Generation == generation) Self.Tell(new OwnerFailed("supervisor", m.Error.Message)); });
        Command<StopAndCommit>(_ => stopRequested = true);
        Command<StepFailed>(HandleStepFailed);
        Command<ExpertsSlow>(HandleExpertsSlow);
        Command<ExpertRecovered>(m =>
        {
            if (!down.Contains(m.Expert)) return;
            rejoining[m.Expert] = m.Step;
            if (waitingForExperts) { waitingForExperts = false; Next(); }
        });
        Command<DrainNode>(HandleDrain);
        Command<AddExperts>(HandleAddExperts);
        Command<Grown>(HandleGrown);
        Command<GrowFailed>(m =>
        {
            if (m.Generation != generation || add is null) return;
            log.Error("Adding experts failed, nothing was added: {0}", m.Error.Message);
            add.Requester?.Tell(new ExpertsAddedReply(step, [], [], $"growing the commit of step {step} failed: {m.Error.Message}"));
            add = null;
            Next();
        });
        Command<MalformedFrame>(m => log.Error(m.Failure(Sender).Message));          // a request that did not parse: nothing to do
        Command<GetRunStatus>(m => Sender.Tell(new RunStatusResponse(step, state.LastCommit?.Step ?? -1, state.Recoveries)));
        Command<GetExperts>(_ => Sender.Tell(new ExpertsStatus(step, state.LastCommit?.Step ?? -1, Enumerable.Range(0, E).Select(e =>
        {
            var (node, device) = homes.GetValueOrDefault(e, ("", ""));
            var st = down.Contains(e) ? "down" : registry.Contains(OwnerRegistry.ExpertId(e)) ? "up" : placing.ContainsKey(e) ? "placing" : "lost";
            return new ExpertInfo(e, node, device, lastRouting.Where(r => r.Expert == e).Sum(r => r.Tokens), st);
        }).ToList())));
    }

    /// <summary>The run's experts: the configured ones and those added since (from the journal).</summary>
    private int E => state.Experts;

    /// <summary>What expert e is created from: the run's spec, with an added expert's first part as its initial weights.</summary>
    private ExpertSpec SpecFor(int e) => state.BirthOf(e) is { } birth ? spec with { Initial = birth } : spec;

    private bool InCluster => ((ExtendedActorSystem)Context.System).Provider is ClusterActorRefProvider;

    protected override void PreStart()
    {
        base.PreStart();
        var self = Self;
        if (!setup.Chaos.IsEmpty) setup.Chaos.Observer = e => self.Tell(e);     // every firing is journaled
        // the experts' initial weights, for nodes that have neither the dense model nor the clustering: content-addressed,
        // so every coordinator writes the same file
        initial = setup.Store.Save("initial", 0, new Dictionary<string, string> { ["kind"] = "initial-experts" },
            setup.Initial.Where(kv => kv.Key.Contains(".mlp.experts.", StringComparison.Ordinal)).Select(kv => (kv.Key, kv.Value)));
        spec = new ExpertSpec(setup.RunId, setup.Model, setup.Moe, setup.Train, setup.Store.Location, initial, setup.Policy);
        router = Own(RouterActor.Name, RouterActor.Props(setup));
        var teacher = setup.Teacher is null ? null : Own(TeacherActor.Name, TeacherActor.Props(setup));
        trainer = Own(TrainerActor.Name, TrainerActor.Props(setup, router, teacher));
        if (InCluster)
            Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents,
                typeof(ClusterEvent.MemberUp), typeof(ClusterEvent.MemberRemoved));
        else
            Context.ActorSelection($"/user/{ExpertHostActor.Name}").Tell(new GetHostInfo(step));
    }

    protected override void PostStop()
    {
        if (InCluster) Cluster.Get(Context.System).Unsubscribe(Self);
        base.PostStop();
    }

    private IActorRef Own(string id, Props props)
    {
        var child = Context.ActorOf(props, id);
        registry.Set(id, child);
        Context.Watch(child);
        return child;
    }

    /// <summary>Every failed child (trainer, router, teacher) is restarted (a fresh instance) and the failure is handed
    /// to the policy. One that cannot even be created is stopped: its Terminated ends the run. Experts are their
    /// host's children; the host reports their failures the same way (<see cref="OwnerFailure"/>).</summary>
    protected override SupervisorStrategy SupervisorStrategy() => new NamingStrategy(this);

    private sealed class NamingStrategy(SupervisorActor sup)
        : OneForOneStrategy(-1, -1, e => e is ActorInitializationException ? Directive.Stop : Directive.Restart)
    {
        public override void ProcessFailure(IActorContext context, bool restart, IActorRef child, Exception cause, ChildRestartStats stats, IReadOnlyCollection<ChildRestartStats> children)
        {
            var id = sup.registry.IdOf(child) ?? child.Path.Name;
            if (restart) sup.Self.Tell(new OwnerFailed(id, cause.Message));
            else sup.stopCauses[id] = cause.GetBaseException().Message;             // runs on the supervisor's own thread
            base.ProcessFailure(context, restart, child, cause, stats, children);
        }
    }

    // ---- placement -----------------------------------------------------------------------------------------------

    private void AskHost(Member m)
    {
        if (m.HasRole(NodeRoles.Experts))
            Context.ActorSelection(new RootActorPath(m.Address) / "user" / ExpertHostActor.Name).Tell(new GetHostInfo(step));
    }

    private void HandleHostInfo(HostInfo m)
    {
        bool joined = !placement.HostNodes.Contains(m.Node);
        placement.AddHost(m.Node, Sender);
        foreach (var h in m.Hosting)                                              // experts of this run it already runs stay there
            if (h.StartsWith(setup.RunId + "/", StringComparison.Ordinal) && int.TryParse(h.AsSpan(setup.RunId.Length + 1), out var e) && !begun)
                placement.Keep(e, m.Node);
        if (joined) RebalanceOnto(m.Node);
        log.Info("Expert host on {0} with devices [{1}] ({2} of {3} needed)", m.Node, string.Join(", ", m.Devices), placement.Hosts, minExpertNodes);
        PlaceMissing();
    }

    /// <summary>Places every expert that has no home and is not being placed, once enough hosts are present.</summary>
    private void PlaceMissing(bool recover = true)
    {
        if (placement.Hosts < minExpertNodes && !begun) return;
        for (int e = 0; e < E; e++)
        {
            if (registry.Contains(OwnerRegistry.ExpertId(e)) || placing.ContainsKey(e)) continue;
            if (placement.Choose(e) is not { } where)
            {
                log.Warning("No expert host is left for {0}; waiting for a node with the '{1}' role", OwnerRegistry.ExpertId(e), NodeRoles.Experts);
                return;
            }
            placing[e] = (where.node, ++placements);
            Timers.StartSingleTimer($"place-{e}", new PlacementTimedOut(e, placements), setup.AskTimeout);
            where.host.Tell(new HostExpert(step, e, SpecFor(e), Recover: begun && recover));
        }
    }

    private void HandleExpertHosted(ExpertHosted m)
    {
        if (!placing.Remove(m.Expert)) return;
        Timers.Cancel($"place-{m.Expert}");
        var id = OwnerRegistry.ExpertId(m.Expert);
        registry.Set(id, m.Ref);
        homes[m.Expert] = (m.Node, m.Device);
        Context.Watch(m.Ref);
        log.Info("{0} runs on {1} ({2})", id, m.Node, m.Device);
        if (!AllPlaced) return;
        if (!begun) { Begin(); return; }
        UseExperts();
        if (restoreWaiting) { restoreWaiting = false; Restore(); }
    }

    /// <summary>A host did not answer HostExpert within the ask timeout (its node is hung, say). Its request is
    /// withdrawn (StopExpert, in case it answers late), and the expert is placed again. In a training run this is an
    /// owner's failure, recovered from (and counted) as any other; before the run begins, max-failures timeouts of one
    /// expert end it.</summary>
    private void HandlePlacementTimedOut(PlacementTimedOut m)
    {
        if (!placing.TryGetValue(m.Expert, out var p) || p.attempt != m.Attempt || fatal is not null) return;
        placing.Remove(m.Expert);
        placement.Unassign(m.Expert);
        placement.HostAt(p.node)?.Tell(new StopExpert(step, setup.RunId, m.Expert));
        var why = $"its host on {p.node} did not answer within {setup.AskTimeout.TotalSeconds:F0} s (moce.actors.ask-timeout)";
        log.Warning("Placing {0}: {1}; placing it again", OwnerRegistry.ExpertId(m.Expert), why);
        if (begun) HandleOwnerFailed(new OwnerFailed(OwnerRegistry.ExpertId(m.Expert), why));
        else if ((placementTimeouts[m.Expert] = placementTimeouts.GetValueOrDefault(m.Expert) + 1) >= setup.Backoff.MaxFailures)
        {
            Fail($"{OwnerRegistry.ExpertId(m.Expert)} could not be placed: {why}, {placementTimeouts[m.Expert]} times (moce.actors.max-failures)");
            return;
        }
        PlaceMissing();
    }

    private TimeSpan RecoveryWait => 2 * setup.AskTimeout;

    private bool AllPlaced => Enumerable.Range(0, E).All(e => registry.Contains(OwnerRegistry.ExpertId(e)));

    private void UseExperts()
    {
        var refs = Enumerable.Range(0, E).Select(e => registry[OwnerRegistry.ExpertId(e)] ?? ActorRefs.Nobody).ToList();
        trainer.Tell(new UseExperts(step, refs));
        router.Tell(new UseExperts(step, refs));
    }

    private void HandleNodeRemoved(string node)
    {
        // experts being placed there will never answer: place them again (placed ones come back through Terminated)
        var lost = placement.RemoveNode(node).Where(placing.ContainsKey).ToList();
        foreach (var e in lost) placing.Remove(e);
        if (lost.Count > 0) PlaceMissing();
    }

    private void HandleTerminated(Terminated t)
    {
        var id = registry.IdOf(t.ActorRef);
        if (id is null || finished is not null) return;                           // an expert already replaced; nodes leaving after the end
        if (SupervisorState.ExpertIndex(id) is not null && !stopCauses.ContainsKey(id))
        {
            // an expert lost with its node (or stopped for a reason its host did not report): every expert of that node
            // goes at once; the trainer's step is cancelled (nobody will answer for them), they are placed again, and
            // the loss is recovered from as an owner's failure: one failure for the node under global-rollback, each
            // expert down on its own under expert-local
            var address = t.ActorRef.Path.Address;
            var lost = Enumerable.Range(0, E)
                .Where(e => registry[OwnerRegistry.ExpertId(e)] is { } r && (r.Equals(t.ActorRef) || (t.AddressTerminated && r.Path.Address.Equals(address))))
                .ToList();
            foreach (var e in lost)
            {
                registry.Remove(OwnerRegistry.ExpertId(e));
                placement.Unassign(e);
                router.Tell(new ExpertLost(step, e));
            }
            setup.Cancellation.Cancel(generation, lost);
            var why = t.AddressTerminated ? $"lost with its node {address}" : "it stopped";
            if (setup.Policy == RecoveryPolicy.GlobalRollback)
                HandleOwnerFailed(new OwnerFailed(string.Join(",", lost.Select(OwnerRegistry.ExpertId)), why));
            else
                foreach (var e in lost) HandleOwnerFailed(new OwnerFailed(OwnerRegistry.ExpertId(e), why));
            PlaceMissing();
            return;
        }
        Fail($"{id} stopped" + (stopCauses.TryGetValue(id, out var c) ? $" because it could not be created: {c}" : "") +
             "; the run cannot go on without it");
    }

    /// <summary>moce node drain: refuse what cannot work; otherwise the next step boundary commits and moves (<see cref="StartMove"/>).</summary>
    private void HandleDrain(DrainNode m)
    {
        string? why = move is not null ? $"{move.What} is under way" : add is not null ? "an add of experts is under way"
            : !begun || finished is not null ? "the run is not training"
            : !placement.HostNodes.Contains(m.Node) ? $"{m.Node} hosts no experts of this run (expert hosts: {string.Join(", ", placement.HostNodes)})"
            : placement.Hosts < 2 ? "it is the only expert node: its experts would have nowhere to go"
            : null;
        if (why is not null) { Sender.Tell(new NodeDrained(step, m.Node, [], why)); return; }
        log.Warning("Draining {0}: at the next step boundary, commit and move its experts (now [{1}])", m.Node, string.Join(",", ExpertsOn(m.Node)));
        move = new PlannedMove($"drain of {m.Node}", [], m.Node, Sender);         // Next() takes it, and its experts, at the step boundary
    }

    /// <summary>A node joined a training run under moce.actors.placement = spread: move experts to it from the busiest
    /// nodes, so that every node holds ⌊E/nodes⌋ or ⌈E/nodes⌉ of them.</summary>
    private void RebalanceOnto(string node)
    {
        if (!setup.SpreadOnJoin || !begun || finished is not null || move is not null || add is not null) return;
        var experts = placement.Rebalance(node);
        if (experts.Count == 0) return;
        log.Warning("{0} joined: at the next step boundary, commit and move experts [{1}] to it", node, string.Join(",", experts));
        move = new PlannedMove($"rebalance onto {node}", experts, null, null);
    }

    /// <summary>At a step boundary: commit the current step if it is not committed; then stop the experts to move, create
    /// them on their new nodes, and restore every owner from that commit (nothing to replay).</summary>
    private void StartMove()
    {
        var mv = move!;
        if (state.LastCommit?.Step != step) { Cut(step); return; }                 // HandleCutDone comes back here
        if (mv.LeavingNode is not null) move = mv = mv with { Experts = ExpertsOn(mv.LeavingNode) };   // those there now, at the boundary
        mv.Started = true;
        foreach (var e in mv.Experts)
        {
            var id = OwnerRegistry.ExpertId(e);
            if (registry[id] is { } actor)
            {
                Context.Unwatch(actor);
                registry.Remove(id);
                // its host stops it and forgets it, so the expert can come back to that node as a new instance
                if (placement.Assigned.TryGetValue(e, out var node) && placement.HostAt(node) is { } host) host.Tell(new StopExpert(step, setup.RunId, e));
                else actor.Tell(PoisonPill.Instance);
            }
            placement.Unassign(e);
        }
        if (mv.LeavingNode is not null) placement.RemoveNode(mv.LeavingNode);
        generation++;
        if (mv.Experts.Count == 0) { Restore(); return; }
        restoreWaiting = true;
        PlaceMissing(recover: false);                                              // HandleExpertHosted restores once all are placed
    }

    private List<int> ExpertsOn(string node) => placement.Assigned.Where(kv => kv.Value == node).Select(kv => kv.Key).Order().ToList();

    /// <summary>moce experts add: refuse what cannot work; otherwise the step boundary it names (or the next) adds them.</summary>
    private void HandleAddExperts(AddExperts m)
    {
        string? why = m.Count < 1 ? $"--count must be at least 1, got {m.Count}"
            : move is not null ? $"{move.What} is under way"
            : add is not null ? "another add of experts is under way"
            : finished is not null ? $"the run has finished (step {step})"
            : m.AtStep >= 0 && m.AtStep < step ? $"step {m.AtStep} has passed (the run is at step {step})"
            : started && m.AtStep >= end ? $"step {m.AtStep} is not before the run's end ({end})"
            : m.Node.Length > 0 && !placement.HostNodes.Contains(m.Node) ? $"{m.Node} is not an expert node of this run (expert hosts: {string.Join(", ", placement.HostNodes)})"
            : null;
        if (why is not null) { Sender.Tell(new ExpertsAddedReply(step, [], [], why)); return; }
        log.Warning("Adding {0} expert(s) {1}{2}", m.Count, m.AtStep < 0 ? "at the next step boundary" : $"at step {m.AtStep}", m.Node.Length > 0 ? $" on {m.Node}" : "");
        add = new PendingAdd(m.Count, m.Node, m.AtStep, Sender);
    }

    /// <summary>At a step boundary: commit the current step if it is not committed, then grow that commit off this thread
    /// (<see cref="ExpertGrowth"/>): the busiest experts by their recent tokens are split.</summary>
    private void StartAdd()
    {
        var a = add!;
        if (state.LastCommit?.Step != step) { Cut(step); return; }              // HandleCutDone comes back here
        a.Started = true;
        int g = ++generation;
        var tokens = Enumerable.Range(0, E).Select(e => recentTokens.Values.Sum(t => e < t.Length ? t[e] : 0)).ToList();
        var sources = ExpertGrowth.Sources(tokens, a.Count);
        var commit = state.LastCommit;
        log.Info("Splitting experts [{0}] (tokens over the last {1} steps: [{2}]) into experts {3}..{4}", string.Join(",", sources), recentTokens.Count,
            string.Join(",", tokens), E, E + a.Count - 1);
        Task.Run(() => ExpertGrowth.Grow(setup.Store, commit, setup.Moe, sources, setup.SplitMargin))
            .PipeTo(Self, success: c => new Grown(g, sources, c), failure: e => new GrowFailed(g, e));
    }

    /// <summary>The grown commit is on disk: journal the add with it (one event), then create the new experts and
    /// restore every owner from it; HandleRestoreDone answers the operator.</summary>
    private void HandleGrown(Grown m)
    {
        if (m.Generation != generation || add is not { Started: true } a) return;  // a failure came first: taken again after it
        Persist(new ExpertsAdded(step, E, m.Sources, a.Node, m.Commit), e =>
        {
            state.Apply(e);
            a.Sources = e.Sources;
            recentTokens.Clear();                                                 // the next add counts traffic with these experts
            hooks.OnCommit?.Invoke(e.Commit);
            log.Info("Committed checkpoint {0} with {1} experts ({2} owners)", e.Step, E, e.Commit.Manifest.Count);
            if (a.Node.Length > 0) foreach (var x in Enumerable.Range(e.From, e.Sources.Count)) placement.Keep(x, a.Node);
            generation++;
            restoreWaiting = true;
            PlaceMissing(recover: false);                                          // HandleExpertHosted restores once all are placed
        });
    }

    // ---- the run -------------------------------------------------------------------------------------------------

    /// <summary>Ends the run with an error the engine rethrows. Nothing is lost: the last commit stays.</summary>
    private void Fail(string why, bool commitsUsable = true)
    {
        if (fatal is not null) return;
        var last = state.LastCommit?.Step;
        fatal = new RunFailedException($"{why}. Stopping; " + (!commitsUsable ? "see the warnings above for each commit's bad file"
            : last is null ? "nothing was committed yet" : $"the last commit ({last}) is intact: fix the cause and run again to resume from it") + ".");
        log.Error(fatal.Message);
        foreach (var l in listeners) l.Tell(new Status.Failure(fatal));
    }

    private void HandleStart(Start m)
    {
        listeners.Add(Sender);
        if (fatal is not null) { Sender.Tell(new Status.Failure(fatal)); return; }
        if (finished is not null) { Sender.Tell(finished); return; }
        if (started) return;                                  // a coordinator asking again (after a failover, say)
        started = true;
        end = m.Until;
        if (AllPlaced) Begin();
        else log.Info("Waiting for {0} expert node(s) to place {1} experts", minExpertNodes, E);
    }

    /// <summary>Every expert has a home: tell the trainer and router where, and start from commit 0 (a new run) or
    /// from the last commit.</summary>
    private void Begin()
    {
        if (!started || begun) return;
        begun = true;
        UseExperts();
        if (state.LastCommit is null) Cut(0);                 // the initial state is commit 0: rollback always has a target
        else Restore();
    }

    private void Next()
    {
        if (fatal is not null) return;
        if (rejoining.Count > 0) { Rejoin(); return; }
        if (move is { Started: false }) { StartMove(); return; }
        if (add is { Started: false } a && (a.AtStep < 0 || step >= a.AtStep) && recentTokens.Count > 0 && down.Count == 0) { StartAdd(); return; }
        if (InCluster && setup.Chaos.NodeKill(step) is { } kill) { KillNodeNow(kill.node, kill.fired); return; }
        if (step >= end && down.Count > 0 && !stopRequested)
        {
            // the final commit must hold every expert's own state: wait for the recovering ones
            log.Info("All steps done; waiting for experts [{0}] to finish recovering before the final commit", string.Join(",", down));
            waitingForExperts = true;
            Timers.StartSingleTimer("recovery-wait", new RecoveryWaitTimedOut(generation), RecoveryWait);
            return;
        }
        if (stopRequested && state.LastCommit?.Step != step) { Cut(step); return; }
        if (step >= end || stopRequested)
        {
            add?.Requester?.Tell(new ExpertsAddedReply(step, [], [], $"the run ended at step {step} before the add"));
            add = null;
            finished = new RunFinished(step, state.Recoveries);
            foreach (var l in listeners) l.Tell(finished);
            return;
        }
        trainer.Tell(new TrainStep(step, generation, new HashSet<int>(down)));
    }

    /// <summary>expert-local: recovered experts take rows again from the next step; their recovery is recorded.</summary>
    private void Rejoin()
    {
        var records = rejoining.Select(kv =>
        {
            var o = outages[kv.Key];
            down.Remove(kv.Key);
            outages.Remove(kv.Key);
            bool straggler = o.Kind == OutageKind.Straggler;
            return new RecoveryRecord(o.Step, $"expert-{kv.Key}", straggler ? "straggler-timeout" : "expert-local", o.Error, straggler ? o.Step : kv.Value, 0,
                                      o.Clock.Elapsed.TotalMilliseconds, o.Rerouted, straggler ? step - o.Step : step - kv.Value);
        }).ToList();
        rejoining.Clear();
        PersistAll(records, r =>
        {
            state.Apply(r);
            hooks.OnRecovery?.Invoke(r);
            log.Warning("{0} is back from its snapshot of step {1} after {2:F0} ms: it missed {3} steps, {4} image routings went to the next-best expert",
                r.Owner, r.RestoredStep, r.DetectionToRecoveredMs, r.StepsMissed, r.ReroutedImages);
            if (r != records[^1]) return;
            if (step >= end) Cut(step);                 // the last commit was cut without them: cut again
            else Next();
        });
    }

    /// <summary>moce.actors.straggler-timeout: the router gave up on slow experts. They sit out (no rows, no updates,
    /// still in the cuts: they are alive) and the step is retried without them; the trainer does not wait for them.</summary>
    private void HandleExpertsSlow(ExpertsSlow m)
    {
        if (m.Generation != generation || recovering || finished is not null) return;
        foreach (var e in m.Experts.Where(e => !down.Contains(e)))
        {
            down.Add(e);
            sittingOut[e] = step + setup.StragglerSitOut;
            outages[e] = new Outage(OutageKind.Straggler, step, $"no answer to block {m.Block} within the straggler timeout ({m.WaitedMs:F0} ms)", Stopwatch.StartNew());
            log.Warning("{0} is a straggler (block {1} unanswered after {2:F0} ms): it sits out steps {3}..{4}", OwnerRegistry.ExpertId(e), m.Block, m.WaitedMs, step, sittingOut[e] - 1);
        }
        setup.Cancellation.Cancel(generation, m.Experts);
        generation++;
        retryWithoutSlow = true;
    }

    private void HandleStepFailed(StepFailed m)
    {
        // global-rollback: the failed owner's supervision drives the rollback, so there is nothing to do here.
        // expert-local: the failed expert is already marked down (its OwnerFailed is queued before the trainer's
        // abort can complete); retry the same step without it
        if (recovering || m.Step != step || (setup.Policy != RecoveryPolicy.ExpertLocal && !retryWithoutSlow)) return;
        retryWithoutSlow = false;
        log.Warning("Step {0} failed ({1}); retrying it with experts [{2}] down", m.Step, m.Error, string.Join(",", down));
        Next();
    }

    private void HandleStepCompleted(StepCompleted m)
    {
        if (recovering || m.Step != step) return;        // a step from an abandoned attempt
        state.StepCompleted(m.Step);
        lastRouting = m.Routing;
        // the last checkpoint-every steps up to this one; a step after it (from before a rollback) is stale
        recentTokens[m.Step] = Enumerable.Range(0, E).Select(e => m.Routing.Where(r => r.Expert == e).Sum(r => r.Tokens)).ToArray();
        foreach (var old in recentTokens.Keys.Where(k => k <= m.Step - checkpointEvery || k > m.Step).ToList()) recentTokens.Remove(old);
        foreach (var e in down) outages[e] = outages[e] with { Rerouted = outages[e].Rerouted + m.ReroutedImages };
        // a sit-out ends at its step, or with the run: a straggler is alive and in the cuts, and it sends no ExpertRecovered
        // (the final commit waited for one forever when a sit-out outlasted the run)
        foreach (var (e, back) in sittingOut.Where(kv => m.Step + 1 >= Math.Min(kv.Value, end)).ToList()) { sittingOut.Remove(e); rejoining[e] = m.Step + 1; }
        hooks.OnStep?.Invoke(m);
        step = m.Step + 1;
        if (step % checkpointEvery == 0 || step == end) Cut(step);
        else Next();
    }

    /// <summary>A consistent cut after step s: every owner writes its file; then the commit is persisted.</summary>
    private void Cut(long s)
    {
        int g = generation;
        // an expert that is down (expert-local) is not in the cut: the commit carries its last committed part
        var owners = registry.ParameterOwners(E).ToList();
        var absent = owners.Where(o => IsDown(o.id)).Select(o => state.LastCommit!.Manifest.Single(r => r.Owner == o.id)).ToArray();
        var store = setup.Store;
        // a part counts only once its file reads back with its hash (off this thread): a commit never names a bad file
        Task.WhenAll(owners.Where(o => !IsDown(o.id)).Select(o => o.actor.Ask<CheckpointWritten>(new Checkpoint(s), setup.AskTimeout)))
            .ContinueWith(t =>
            {
                var written = t.GetAwaiter().GetResult();
                foreach (var w in written) store.Verify(w.Ref);
                return written;
            }, TaskScheduler.Default)
            .PipeTo(Self, success: r => new CutDone(s, g, r.Select(w => w.Ref).Concat(absent).ToArray()), failure: e => new OperationFailed(g, e.GetBaseException()));
    }

    /// <summary>Out of the cut: an expert restoring (expert-local). A straggler sitting out is alive and writes its part.</summary>
    private bool IsDown(string owner) => SupervisorState.ExpertIndex(owner) is { } e && down.Contains(e) && !IsSlow(e);

    private bool IsSlow(int e) => outages.TryGetValue(e, out var o) && o.Kind == OutageKind.Straggler;

    /// <summary>A chaos schedule's kill-node at this step boundary: journaled first, then that expert node's host kills its
    /// process; the run goes on and finds out as from any node loss (membership, DeathWatch).</summary>
    private void KillNodeNow(string hostPort, ChaosFired fired)
    {
        var node = placement.HostNodes.FirstOrDefault(n => n.EndsWith("@" + hostPort, StringComparison.Ordinal));
        Persist(fired, c =>
        {
            ChaosJournaled(c);
            if (node is null) log.Warning("Chaos: kill-node {0} skipped: it is not an expert node of this run (expert hosts: {1})", hostPort, string.Join(", ", placement.HostNodes));
            else placement.HostAt(node)!.Tell(new KillNode(step));
            Next();
        });
    }

    private void ChaosJournaled(ChaosFired c)
    {
        state.Apply(c);
        hooks.OnChaos?.Invoke(c);
        log.Warning("Chaos at step {0}: {1} {2} ({3})", c.Step, c.Owner, c.Kind, c.Detail);
    }

    private void HandleCutDone(CutDone m)
    {
        if (m.Generation != generation || recovering) return;
        hooks.BeforeCommit?.Invoke(m.Step);
        if (setup.Chaos.JournalRefusal(m.Step) is { } refusal)
        {
            // journaled first; then the database refuses the commit's write, and Akka stops this actor (restarted after a backoff)
            Persist(refusal.fired, c =>
            {
                ChaosJournaled(c);
                JournalSabotage.Refuse(Context.System.Settings.Config, refusal.period, s => log.Warning("Chaos: {0}", s));
                PersistCommit(m);
            });
            return;
        }
        PersistCommit(m);
    }

    private void PersistCommit(CutDone m)
    {
        Persist(new CheckpointCommitted(m.Step, m.Refs), e =>
        {
            state.Apply(e);
            // keep the last K commits' files (and never delete a file a kept commit names)
            if (state.Commits.Count > keep) setup.Store.DeleteAllExcept(state.KeptParts(keep).Append(initial));
            log.Info("Committed checkpoint {0} ({1} owners)", e.Step, e.Manifest.Count);
            foreach (var x in Enumerable.Range(0, E)) registry[OwnerRegistry.ExpertId(x)]?.Tell(new Committed(e.Step));   // their snapshots
            Context.Parent.Tell(Akka.Pattern.BackoffSupervisor.Reset.Instance);   // the journal works: failures in a row start again
            hooks.OnCommit?.Invoke(e);
            step = e.Step;
            Next();
        });
    }

    private void HandleOwnerFailed(OwnerFailed m)
    {
        if (finished is not null) return;
        log.Warning("Owner {0} failed at step {1}: {2}", m.Owner, step, m.Error);
        if (fatal is not null) return;
        switch (state.Decide(m.Owner, m.Error, step, recovering))
        {
            case SupervisorState.StopRun stop:
                Fail(stop.Reason);
                return;
            case SupervisorState.TakeExpertDown d:
                // expert-local: only this expert goes back (to its own snapshot, on restart); training goes on without it
                if (down.Add(d.Expert)) outages[d.Expert] = new Outage(OutageKind.Failed, step, m.Error, Stopwatch.StartNew());
                generation++;                           // the in-flight attempt's replies are stale; the trainer reports StepFailed
                return;
            case SupervisorState.RollBack r:
                failure ??= (m.Owner, m.Error, step, Stopwatch.StartNew());
                if (add is { Started: true } a && a.Sources.Count == 0) a.Started = false;   // not journaled yet: taken again after the rollback
                generation++;                           // replies of the failed attempt are now stale
                recovering = true;
                // backoff: a failure that keeps coming back is retried ever more slowly (the restarted owners wait for Restore)
                if (r.Delay <= TimeSpan.Zero) { Restore(); return; }
                log.Info("Restoring in {0:F0} ms (failure {1} in a row)", r.Delay.TotalMilliseconds, state.FailuresInARow);
                Timers.StartSingleTimer("restore", new RestoreAfterBackoff(generation), r.Delay);
                return;
        }
    }

    /// <summary>global-rollback: every owner restores the newest commit whose files all verify (falling back past a
    /// corrupt or missing file, by name), and the run replays from there.</summary>
    private void Restore()
    {
        var target = state.RestoreTarget(setup.Store.Verify,
            (c, e) => log.Warning("Commit {0} is unusable, falling back to the previous one: {1}", c.Step, e.Message));
        if (target is null)
        {
            Fail($"no committed checkpoint of the {state.Commits.Count} in the journal verifies" +
                 (state.Added.Count > 0 ? $" since the last add of experts (step {state.Added[^1].Step}; older commits lack the added experts)" : "") + "; cannot restore",
                 commitsUsable: false);
            return;
        }
        if (!AllPlaced) { restoreWaiting = true; return; }     // a lost expert is being placed again: restore it too
        UseExperts();                                         // a restarted trainer or router starts without them
        int g = generation;
        var parts = target.Manifest.ToDictionary(r => r.Owner);
        // the trainer may first have to abort its step, which can wait one ask timeout on an owner lost with its node
        Task.WhenAll(registry.ParameterOwners(E).Select(o => o.actor.Ask<Restored>(new RestoreCheckpoint(target.Step, parts[o.id], g), 2 * setup.AskTimeout)))
            .PipeTo(Self, success: _ => new RestoreDone(target.Step, g), failure: e => new OperationFailed(g, e));
    }

    /// <summary>Every owner restored. What the restore was for completes here: an add (journaled, now live), a move (its
    /// experts run on their new nodes), a recovery (journaled). A failure during an add or a move made this restore a
    /// rollback, but the restore brought every owner, the moved and added experts too, to the commit: the operation is
    /// complete all the same, and the recovery is recorded as well.</summary>
    private void HandleRestoreDone(RestoreDone m)
    {
        if (m.Generation != generation) return;
        recovering = false;
        step = m.Step;
        bool operation = false;
        if (add is { Sources.Count: > 0 } a)
        {
            // the add is journaled and every owner, the new experts with them, restored its grown commit
            add = null;
            operation = true;
            var added = Enumerable.Range(E - a.Sources.Count, a.Sources.Count).ToList();
            log.Warning("Added experts [{0}] at step {1}, split from [{2}]: the run has {3} experts", string.Join(",", added), m.Step, string.Join(",", a.Sources), E);
            a.Requester?.Tell(new ExpertsAddedReply(m.Step, added, a.Sources, ""));
        }
        if (move is { Started: true } mv)
        {
            move = null;
            operation = true;
            log.Warning("{0}: experts [{1}] moved, restored from commit {2}{3}", mv.What, string.Join(",", mv.Experts), m.Step,
                mv.LeavingNode is null ? "" : "; the node is asked to leave");
            mv.Requester?.Tell(new NodeDrained(m.Step, mv.LeavingNode ?? "", mv.Experts, ""));
            if (mv.LeavingNode is not null && InCluster) Cluster.Get(Context.System).Leave(Address.Parse(mv.LeavingNode));
        }
        if (failure is { } f)
        {
            var record = new RecoveryRecord(f.step, f.owner, "global-rollback", f.error, m.Step, f.step - m.Step, f.clock.Elapsed.TotalMilliseconds, 0);
            failure = null;
            Persist(record, r =>
            {
                state.Apply(r);
                hooks.OnRecovery?.Invoke(r);
                log.Warning("Recovered from {0}'s failure at step {1}: restored commit {2}, replaying {3} steps ({4:F0} ms)",
                    r.Owner, r.Step, r.RestoredStep, r.StepsReplayed, r.DetectionToRecoveredMs);
                Next();
            });
            return;
        }
        if (!operation)
        {
            log.Info("Resumed from committed checkpoint {0}", m.Step);
            hooks.OnResume?.Invoke(m.Step);
        }
        Next();
    }
}
