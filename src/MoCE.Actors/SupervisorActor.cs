using Akka.Actor;
using Akka.Actor.Internal;
using Akka.Cluster;
using Akka.Event;
using Akka.Persistence;
using MoCE.Actors.Messages;
using MoCE.Actors.Placement;
using MoCE.Actors.Wire;
using MoCE.Core.Checkpoints;
using MoCE.Core.Runtime;

namespace MoCE.Actors;

/// <summary>The supervisor owns the run. It creates the trainer, router and teacher as its children, has the expert
/// hosts create the experts (<see cref="ExpertFleet"/>), and watches every owner by stable id. It is a state machine of
/// explicit behaviours: <b>placing</b> (until every expert has a home), <b>training</b> (a step in flight), <b>cutting</b>
/// (every owner copies its part; the parts are then written in the background while training goes on, and only the
/// journaled <see cref="CheckpointCommitted"/> makes a checkpoint count), <b>committing</b> (no step runs until the
/// commit in flight is journaled: the end, a stop, a move or an add needs it), <b>growing</b> (an add's commit), <b>restoring</b> (a resume, a rollback, a move or an add), <b>waiting</b> (for
/// recovering experts before the final commit), <b>finished</b> and <b>stopped</b>. It carries out decisions made in plain
/// types tested without actors: <see cref="RunState"/> (what comes next, what a fault calls for through the
/// <see cref="IRecoveryPolicy"/> chain), <see cref="SupervisorState"/> (the journal: commits, recoveries, adds, chaos;
/// never tensors) and <see cref="ExpertPlacement"/>.</summary>
public sealed class SupervisorActor : ReceivePersistentActor, IWithTimers
{
    public ITimerScheduler Timers { get; set; } = null!;

    /// <summary>Command: train until step <c>Until</c> (exclusive); the sender gets <see cref="RunFinished"/> (or the
    /// failure). Idempotent: every coordinator node sends it (again after a failover), and each is told the end.</summary>
    public sealed record Start(long Until);
    /// <summary>Commit at the next step boundary and stop (Ctrl-C or SIGTERM of a coordinator, or an operator's `moce
    /// stop`, answered with <see cref="Messages.RunStopping"/>).</summary>
    public sealed record StopAndCommit : Security.IControlCommand
    {
        public Security.CommandSignature By { get; init; } = Security.CommandSignature.None;
        public string Canonical() => "stop-and-commit";
        public IReadOnlyList<Security.PeerRole> Roles() => [Security.PeerRole.Operator, Security.PeerRole.Coordinator];
        public Security.IControlCommand SignedWith(Security.CommandSignature by) => this with { By = by };
    }

    private sealed record MembershipTimedOut(string Address, string Nonce);
    private sealed record CutTimedOut(long Step, int Generation);
    private sealed record CutVerified(long Step, int Generation);
    private sealed record CutFailed(long Step, int Generation, string Error);
    private sealed record RestoreDone(CheckpointCommitted Target, int Generation);
    private sealed record OperationFailed(int Generation, Exception Error);
    private sealed record OwnerFailed(string Owner, string Error, StepPhase Phase);
    private sealed record RestoreAfterBackoff(int Generation);
    private sealed record RecoveryWaitTimedOut;
    private sealed record Grown(int Generation, IReadOnlyList<int> Sources, CheckpointCommitted Commit);
    private sealed record GrowFailed(int Generation, Exception Error);
    private sealed record LeaveNow(string Node);
    private enum Phase { Placing, Training, Cutting, Committing, Growing, Restoring, Waiting, Finished, Stopped }

    /// <summary>The cut being taken and persisted (at most one): the owners that have yet to copy their part, the parts
    /// written so far, and the parts of experts out of the cut (their last committed ones).</summary>
    private sealed class CutInFlight(long step, int generation, IReadOnlyList<string> owners, CheckpointRef[] absent, IReadOnlyList<RoutedTokens> window)
    {
        public long Step { get; } = step;
        public int Generation { get; } = generation;
        public IReadOnlyList<RoutedTokens> Window { get; } = window;
        public readonly HashSet<string> Copying = [.. owners];
        public readonly Dictionary<string, CheckpointRef> Written = [];
        public bool Verifying;
        public bool AllWritten => Written.Count == owners.Count;
        public bool Waits(string owner) => owners.Contains(owner) && !Written.ContainsKey(owner);
        public CheckpointRef[] Manifest => [.. owners.Select(o => Written[o]), .. absent];
    }

    private readonly ActorContextSetup setup;
    private readonly SupervisorHooks hooks;
    private readonly int keep, minExpertNodes;
    private readonly ILoggingAdapter log = Context.GetLogger();
    private readonly SupervisorState journal;
    private readonly RunState run;
    private readonly OwnerRegistry registry = new();
    private readonly HashSet<IActorRef> listeners = [];
    private readonly Dictionary<string, string> stopCauses = [];     // owners that could not be created, by id
    private ExpertFleet fleet = null!;                               // made in PreStart: it needs the timers
    private Security.MembershipGate? members;                         // with TLS in a cluster: who proved it may be a member
    private IReadOnlyList<MoCE.Core.Training.ExpertStat> lastRouting = [];
    private CheckpointRef initial = null!;                           // the experts' upcycled weights, which every expert loads first
    private ExpertSpec spec = null!;
    private IActorRef trainer = ActorRefs.Nobody, router = ActorRefs.Nobody;
    private Phase phase = Phase.Placing;
    private bool started, awaitingPlacement;                         // restoring: waits for every expert to be placed
    private RunFinished? finished;
    private CutInFlight? cut;
    private readonly Dictionary<int, string> peers = [];             // expert-exact in a cluster: the node keeping each expert's copy
    private bool cutDue;                                             // a cut came due while the previous one was being persisted
    private bool restoreAwaitsCut;                                   // a rollback restores the cut in flight once it is journaled
    private RunFailedException? fatal;

    public override string PersistenceId { get; }

    /// <summary><paramref name="minExpertNodes"/>: the expert hosts that must be present before the experts are placed.</summary>
    public static Props Props(ActorContextSetup setup, SupervisorHooks hooks, long checkpointEvery, int keep, int minExpertNodes = 1) =>
        Akka.Actor.Props.Create(() => new SupervisorActor(setup, hooks, checkpointEvery, keep, minExpertNodes));

    /// <summary>The supervisor under a <see cref="Akka.Pattern.BackoffSupervisor"/>: Akka stops a persistent actor whose
    /// journal write fails; it starts again after the run's backoff, recovers the journal, finds the experts where they
    /// run, and resumes from the last commit. The count of restarts resets only when a commit is journaled.</summary>
    public static Props Restartable(ActorContextSetup setup, SupervisorHooks hooks, long checkpointEvery, int keep, int minExpertNodes = 1) =>
        Akka.Pattern.BackoffSupervisor.Props(Akka.Pattern.Backoff.OnStop(Props(setup, hooks, checkpointEvery, keep, minExpertNodes), "supervisor",
            setup.Backoff.Min, setup.Backoff.Max, 0.0, setup.Backoff.MaxFailures).WithManualReset());

    public SupervisorActor(ActorContextSetup setup, SupervisorHooks hooks, long checkpointEvery, int keep, int minExpertNodes)
    {
        (this.setup, this.hooks, this.keep, this.minExpertNodes) = (setup, hooks, keep, Math.Max(1, minExpertNodes));
        PersistenceId = $"{setup.RunId}-supervisor";
        journal = new SupervisorState(setup.Moe.Experts);
        run = RunState.For(setup, checkpointEvery);
        Recover<CheckpointCommitted>(journal.Apply);
        Recover<RecoveryRecord>(journal.Apply);
        Recover<ExpertsAdded>(journal.Apply);
        Recover<ChaosFired>(journal.Apply);
        Recover<Incarnation>(journal.Apply);
        // the first thing a supervisor does is journal its start: its generations begin above every earlier one's
        Recover<RecoveryCompleted>(_ => Persist(new Incarnation(0, journal.Incarnations + 1), e =>
        {
            journal.Apply(e);
            run.Incarnated(e.Number);
            if (journal.LastCommit is not null) hooks.OnKept?.Invoke(journal.Kept(keep));   // a process killed before it recorded its last commit
            log.Info("Supervisor start {0} of this run: generations from {1}", e.Number, run.Generation);
        }));
        Always();                                                    // placing
    }

    private int E => journal.Experts;
    private bool InCluster => ((ExtendedActorSystem)Context.System).Provider is ClusterActorRefProvider;
    private bool Running => phase is not (Phase.Placing or Phase.Finished or Phase.Stopped);
    private ExpertPlacement Hosts => fleet.Placement;

    // ---- behaviours: a phase's own messages first, then what every phase handles ------------------------------------

    private void Go(Phase p)
    {
        phase = p;
        Become(p switch { Phase.Training => Training, Phase.Cutting => Cutting, Phase.Growing => Growing, Phase.Restoring => Restoring, Phase.Waiting => Waiting, _ => Always });
    }

    private void Training()
    {
        Command<StepCompleted>(m => { if (m.Step == run.Step) StepDone(m); });
        Command<StepFailed>(m => { if (run.Retry(m)) { log.Warning("Step {0} failed ({1}); retrying it with experts [{2}] out", m.Step, m.Error, string.Join(",", run.Down.Order())); Next(); } });
        Command<ExpertsSlow>(m =>
        {
            if (m.Generation == run.Generation)
                OnFault(new Fault(m.Experts.Select(OwnerRegistry.ExpertId).ToList(), FaultKind.Slow, $"no answer to block {m.Block} within the straggler timeout ({m.WaitedMs:F0} ms)", run.Step));
        });
        Always();
    }

    private void Cutting()
    {
        Command<CheckpointTaken>(m =>
        {
            if (cut is null || m.Step != cut.Step || m.Generation != cut.Generation || !cut.Copying.Remove(m.Owner) || cut.Copying.Count > 0) return;
            hooks.OnCutTaken?.Invoke(m.Step);
            Next();                                                  // every part is copied: the next step starts while they are written
        });
        Always();
    }
    private void Growing() { Command<Grown>(AddGrown); Command<GrowFailed>(AddFailed); Always(); }

    private void Restoring()
    {
        Command<RestoreAfterBackoff>(m => { if (m.Generation == run.Generation) Restore(); });
        Command<RestoreDone>(m => { if (m.Generation == run.Generation) Restored(m.Target); });
        Always();
    }

    private void Waiting()
    {
        Command<RecoveryWaitTimedOut>(_ => Fail($"all steps are done, but experts [{string.Join(",", run.Down.Order())}] did not come back within " +
                                                 $"{2 * setup.AskTimeout.TotalSeconds:F0} s (2 × moce.actors.ask-timeout) for the final commit"));
        Always();
    }

    private void Always()
    {
        Command<ChaosFired>(e => Persist(e, ChaosJournaled));
        Command<Start>(HandleStart);
        Command<StopAndCommit>(m =>
        {
            if (Authorized(m, out var refused)) run.StopRequested = true;
            if (!Sender.IsNobody()) Sender.Tell(new RunStopping(run.Step, refused));   // a tool waits for it; a Ctrl-C does not
        });
        Command<HostInfo>(HandleHostInfo);
        Command<ExpertHosted>(m =>
        {
            if (!fleet.Hosted(m) || !fleet.AllPlaced(E)) return;
            if (phase == Phase.Placing) { Begin(); return; }
            UseExperts();
            if (phase == Phase.Restoring && awaitingPlacement) Restore();
        });
        Command<PlacementTimedOut>(HandlePlacementTimedOut);
        Command<ClusterEvent.MemberUp>(m => MemberUp(m.Member));
        Command<MembershipProof>(HandleMembershipProof);
        Command<MembershipTimedOut>(m =>
        {
            if (members?.TimedOut(m.Address, m.Nonce) == true)
                RefuseMember(m.Address, $"gave no membership proof within {setup.AskTimeout.TotalSeconds:F0} s (moce.actors.ask-timeout)");
        });
        Command<ClusterEvent.MemberRemoved>(m =>
        {
            members?.Removed(m.Member.Address.ToString());
            if (fleet.NodeRemoved(m.Member.Address.ToString())) PlaceMissing();
        });
        Command<ClusterEvent.IMemberEvent>(_ => { });
        Command<Terminated>(HandleTerminated);
        Command<OwnerFailed>(m => OnFault(new Fault([m.Owner], FaultKind.Failed, m.Error, run.Step, m.Phase)));
        Command<OwnerFailure>(m => { if (m.Restarted) OnFault(new Fault([m.Owner], FaultKind.Failed, m.Error, run.Step, m.Phase)); else stopCauses[m.Owner] = m.Error; });
        Command<ExpertCopyRestored>(m =>
        {
            switch (run.CopyRestored(m.Expert, m.CopyStep))
            {
                case RetryStep:
                    log.Warning("Retrying step {0}: experts put back their in-memory copies of its start", run.Step);
                    Next();
                    break;
                case RollBack r: RollBackAfter(r); break;
            }
        });
        Command<OperationFailed>(m => { if (m.Generation == run.Generation) OnFault(new Fault(["supervisor"], FaultKind.Failed, m.Error.Message, run.Step)); });
        Command<CheckpointWritten>(m =>
        {
            if (cut is null || m.Step != cut.Step || m.Generation != cut.Generation) return;
            cut.Written[m.Ref.Owner] = m.Ref;
            if (!cut.AllWritten || cut.Verifying) return;
            // every part is durable: read each back against its hash (off this thread and off the steps' path), so that
            // a commit never names a bad file, then journal it
            cut.Verifying = true;
            var (refs, s, g) = (cut.Written.Values.ToList(), cut.Step, cut.Generation);
            Task.Run(() => ThreadCpuTime.Measure(() => { foreach (var r in refs) setup.Store.Verify(r); return true; }, NodeMetrics.CutBackgroundCpu))
                .PipeTo(Self, success: _ => new CutVerified(s, g), failure: e => new CutFailed(s, g, e.GetBaseException().Message));
        });
        Command<CutVerified>(m => { if (cut is not null && m.Step == cut.Step && m.Generation == cut.Generation) Commit(cut); });
        Command<CutFailed>(m => { if (cut is not null && m.Step == cut.Step && m.Generation == cut.Generation) OnFault(new Fault(["supervisor"], FaultKind.Failed, m.Error, run.Step, StepPhase.Checkpoint)); });
        Command<CutTimedOut>(m =>
        {
            if (cut is not null && m.Step == cut.Step && m.Generation == cut.Generation)
                OnFault(new Fault(["supervisor"], FaultKind.Failed, $"the cut after step {m.Step} was not written within {2 * setup.AskTimeout.TotalSeconds:F0} s (2 × moce.actors.ask-timeout)", run.Step, StepPhase.Checkpoint));
        });
        Command<ExpertRecovered>(m => { if (run.Recovered(m.Expert, m.Step) && phase == Phase.Waiting) { Timers.Cancel("recovery-wait"); Next(); } });
        Command<DrainNode>(m =>
        {
            if (!Authorized(m, out var refused)) Sender.Tell(new NodeDrained(run.Step, m.Node, [], refused));
            else if (run.Drain(m.Node, Sender, Running, Hosts.HostNodes) is { } why) Sender.Tell(new NodeDrained(run.Step, m.Node, [], why));
            else log.Warning("Draining {0}: at the next step boundary, commit and move its experts (now [{1}])", m.Node, string.Join(",", Hosts.On(m.Node)));
        });
        Command<AddExperts>(m =>
        {
            if (!Authorized(m, out var refused)) Sender.Tell(new ExpertsAddedReply(run.Step, [], [], refused));
            else if (run.AddExperts(m, Sender, started, phase == Phase.Finished, Hosts.HostNodes) is { } why) Sender.Tell(new ExpertsAddedReply(run.Step, [], [], why));
            else log.Warning("Adding {0} expert(s) {1}{2}", m.Count, m.AtStep < 0 ? "at the next step boundary" : $"at step {m.AtStep}", m.Node.Length > 0 ? $" on {m.Node}" : "");
        });
        Command<MalformedFrame>(m => log.Error(m.Failure(Sender).Message));          // a request that did not parse: nothing to do
        Command<LeaveNow>(m => Cluster.Get(Context.System).Leave(Address.Parse(m.Node)));
        Command<GetRunStatus>(_ => Sender.Tell(new RunStatusResponse(run.Step, journal.LastCommit?.Step ?? -1, journal.Recoveries)));
        Command<GetExperts>(_ => Sender.Tell(new ExpertsStatus(run.Step, journal.LastCommit?.Step ?? -1, Enumerable.Range(0, E)
            .Select(e => fleet.Info(e, run.Outages.ContainsKey(e), lastRouting.Where(r => r.Expert == e).Sum(r => r.Tokens))).ToList())));
        // replies and timers of a phase that is over
        Command<StepCompleted>(_ => { }); Command<StepFailed>(_ => { }); Command<ExpertsSlow>(_ => { }); Command<CheckpointTaken>(_ => { });
        Command<RestoreDone>(_ => { }); Command<RestoreAfterBackoff>(_ => { }); Command<RecoveryWaitTimedOut>(_ => { });
        Command<Grown>(_ => { }); Command<GrowFailed>(_ => { });
    }

    /// <summary>With TLS (<see cref="ActorContextSetup.Control"/>), a control command is obeyed only when an allowed role
    /// signed it; each refusal is a warning with the sender's address and identity, and the run goes on untouched.</summary>
    private bool Authorized(Security.IControlCommand m) => Authorized(m, out _);

    private bool Authorized(Security.IControlCommand m, out string refused)
    {
        refused = "";
        if (setup.Control is null) return true;
        var v = setup.Control.Check(m, DateTimeOffset.UtcNow);
        if (v.Accepted) return true;
        refused = $"refused: {v.Identity} {v.Reason}";
        log.Warning("Refused {0} from {1}: {2} {3}", m.GetType().Name, Sender.Path.Address, v.Identity, v.Reason);
        return false;
    }

    // ---- owners --------------------------------------------------------------------------------------------------

    protected override void PreStart()
    {
        base.PreStart();
        fleet = new ExpertFleet(setup.RunId, registry, Context, Timers, setup.AskTimeout, log);
        var self = Self;
        if (!setup.Chaos.IsEmpty) setup.Chaos.Observer = e => self.Tell(e);     // every firing is journaled
        // the experts' initial weights, for nodes that have neither the dense model nor the clustering: content-addressed
        initial = setup.Store.Save("initial", 0, new Dictionary<string, string> { ["kind"] = "initial-experts" },
            setup.Initial.Where(kv => kv.Key.Contains(".mlp.experts.", StringComparison.Ordinal)).Select(kv => (kv.Key, kv.Value)));
        spec = new ExpertSpec(setup.RunId, setup.Model, setup.Moe, setup.Train, setup.Store.Location, initial, setup.Policy);
        router = Own(RouterActor.Name, RouterActor.Props(setup));
        var teacher = setup.Teacher is null ? null : Own(TeacherActor.Name, TeacherActor.Props(setup));
        trainer = Own(TrainerActor.Name, TrainerActor.Props(setup, router, teacher));
        if (InCluster && setup.Control is not null) members = new Security.MembershipGate(setup.Control);
        if (InCluster)
            Cluster.Get(Context.System).Subscribe(Self, ClusterEvent.SubscriptionInitialStateMode.InitialStateAsEvents, typeof(ClusterEvent.MemberUp), typeof(ClusterEvent.MemberRemoved));
        else Context.ActorSelection($"/user/{ExpertHostActor.Name}").Tell(new GetHostInfo(run.Step));
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

    /// <summary>A failed child is restarted and its failure goes to the policies; one that cannot be created is stopped,
    /// and its Terminated ends the run. Experts' hosts report theirs (<see cref="OwnerFailure"/>).</summary>
    protected override SupervisorStrategy SupervisorStrategy() => new ReportingStrategy((child, cause, restart) =>
    {
        var id = registry.IdOf(child) ?? child.Path.Name;
        if (restart) Self.Tell(new OwnerFailed(id, cause.Message, (cause as StepPhaseException)?.Phase ?? StepPhase.Other));
        else stopCauses[id] = cause.GetBaseException().Message;
    });

    /// <summary>A member is up. Without TLS, or this node itself: trusted; an expert node is asked what it hosts. With
    /// TLS, any other member first proves with its certificate that it may join with its roles (<see cref="Security.MembershipGate"/>).</summary>
    private void MemberUp(Member m)
    {
        var address = m.Address.ToString();
        if (members is null || m.Address == Cluster.Get(Context.System).SelfAddress)
        {
            members?.TrustSelf(address);
            if (m.HasRole(NodeRoles.Experts)) AskHost(m.Address);
            return;
        }
        var nonce = members.Ask(address, [.. m.Roles]);
        Context.ActorSelection(new RootActorPath(m.Address) / "user" / MembershipActor.Name).Tell(new ProveMembership(run.Step, nonce));
        Timers.StartSingleTimer($"membership {address}", new MembershipTimedOut(address, nonce), setup.AskTimeout);
    }

    private void HandleMembershipProof(MembershipProof p)
    {
        if (members is null) return;
        var (v, answered) = members.Decide(p, DateTimeOffset.UtcNow);
        if (!answered) { log.Warning("Refused a membership proof from {0}: {1}", Sender.Path.Address, v.Reason); return; }
        Timers.Cancel($"membership {p.Address}");
        if (!v.Accepted) { RefuseMember(p.Address, $"{v.Identity} {v.Reason}"); return; }
        log.Info("Member {0} proved it is {1}", p.Address, v.Identity);
        if (p.ClusterRoles.Contains(NodeRoles.Experts)) AskHost(Address.Parse(p.Address));
    }

    /// <summary>A member that may not be one: logged with its identity and downed; it never hosts an expert.</summary>
    private void RefuseMember(string address, string why)
    {
        log.Warning("Refused member {0}: {1}; downing it", address, why);
        Cluster.Get(Context.System).Down(Address.Parse(address));
    }

    private void AskHost(Address node) => Context.ActorSelection(new RootActorPath(node) / "user" / ExpertHostActor.Name).Tell(new GetHostInfo(run.Step));

    private void HandleHostInfo(HostInfo m)
    {
        if (members is not null && !Sender.Path.Address.HasLocalScope && !members.IsMember(Sender.Path.Address.ToString()))
        {
            log.Warning("Ignored the offer of host {0}: {1} has not proved its membership", m.Node, Sender.Path.Address);
            return;
        }
        if (fleet.HostAnswered(m, Sender, keepWhatItRuns: phase == Phase.Placing) && setup.SpreadOnJoin && run.Rebalance(m.Node, Hosts.Rebalance(m.Node), Running))
            log.Warning("{0} joined: at the next step boundary, commit and move experts [{1}] to it", m.Node, string.Join(",", run.Move!.Experts));
        log.Info("Expert host on {0} with devices [{1}] ({2} of {3} needed)", m.Node, string.Join(", ", m.Devices), Hosts.Hosts, minExpertNodes);
        PlaceMissing();
    }

    private void PlaceMissing(bool recover = true)
    {
        if (Hosts.Hosts >= minExpertNodes || phase != Phase.Placing)
            fleet.PlaceMissing(E, run.Step, e => journal.BirthOf(e) is { } birth ? spec with { Initial = birth } : spec, phase != Phase.Placing && recover);
    }

    /// <summary>A host did not answer HostExpert in time: withdrawn and placed again. In a run that is an owner's failure;
    /// before it begins, max-failures timeouts of one expert end it.</summary>
    private void HandlePlacementTimedOut(PlacementTimedOut m)
    {
        if (phase == Phase.Stopped || fleet.TimedOut(m, run.Step) is not { } t) return;
        var id = OwnerRegistry.ExpertId(m.Expert);
        if (phase != Phase.Placing) OnFault(new Fault([id], FaultKind.Failed, t.why, run.Step));
        else if (t.timeouts >= setup.Backoff.MaxFailures) { Fail($"{id} could not be placed: {t.why}, {t.timeouts} times (moce.actors.max-failures)"); return; }
        PlaceMissing();
    }

    private void UseExperts()
    {
        var refs = fleet.Refs(E);
        trainer.Tell(new UseExperts(run.Step, refs));
        router.Tell(new UseExperts(run.Step, refs));
        if (!InCluster || setup.Policy != RecoveryPolicy.ExpertExact || !setup.PeerCopies) return;
        // expert-exact: every expert also keeps its state on a peer node, where it comes back if its own node is lost
        peers.Clear();
        foreach (var (e, actor) in refs.Select((a, e) => (e, a)).Where(x => !x.a.IsNobody()))
        {
            var node = Hosts.PeerOf(e);
            if (node is not null) peers[e] = node;
            actor.Tell(new CopyTo(run.Step, node is null ? ActorRefs.Nobody : Hosts.HostAt(node)!));
        }
    }

    /// <summary>An expert lost with its node (or stopped unreported): every expert of that node goes at once, the trainer's
    /// step is cancelled, they are placed again, and the loss is one fault. Any other owner stopping ends the run.</summary>
    private void HandleTerminated(Terminated t)
    {
        var id = registry.IdOf(t.ActorRef);
        if (id is null || phase == Phase.Finished) return;                       // an expert already replaced; nodes leaving after the end
        if (SupervisorState.ExpertIndex(id) is null || stopCauses.ContainsKey(id))
        {
            Fail($"{id} stopped" + (stopCauses.TryGetValue(id, out var c) ? $" because it could not be created: {c}" : "") + "; the run cannot go on without it");
            return;
        }
        var lost = fleet.Lose(t, E);
        foreach (var e in lost) router.Tell(new ExpertLost(run.Step, e));
        setup.Cancellation.Cancel(run.Generation, lost);
        OnFault(new Fault(lost.Select(OwnerRegistry.ExpertId).ToList(), FaultKind.Lost, t.AddressTerminated ? $"lost with its node {t.ActorRef.Path.Address}" : "it stopped", run.Step));
        // a cut still waiting for a lost expert's part can never complete: training goes on (expert-local), and the next
        // cut represents the expert by its last committed part (a rollback has abandoned it already)
        if (cut is not null && lost.Any(e => cut.Waits(OwnerRegistry.ExpertId(e)))) AbandonCut();
        // expert-exact: each lost expert comes back on the node that keeps its copy (with no peers, where placement puts it)
        foreach (var e in lost)
            if (peers.Remove(e, out var peer) && Hosts.HostAt(peer) is not null) Hosts.Keep(e, peer);
        PlaceMissing();
    }

    // ---- the run ---------------------------------------------------------------------------------------------------

    /// <summary>Ends the run with an error the engine rethrows. Nothing is lost: the last commit stays.</summary>
    private void Fail(string why, bool commitsUsable = true)
    {
        if (fatal is not null) return;
        fatal = new RunFailedException(journal.Stopping(why, commitsUsable));
        log.Error(fatal.Message);
        foreach (var l in listeners) l.Tell(new Status.Failure(fatal));
        Go(Phase.Stopped);
    }

    private void HandleStart(Start m)
    {
        listeners.Add(Sender);
        if (fatal is not null) Sender.Tell(new Status.Failure(fatal));
        else if (finished is not null) Sender.Tell(finished);
        else if (!started)                                    // else a coordinator asking again (after a failover, say)
        {
            started = true;
            run.Started(m.Until);
            if (fleet.AllPlaced(E)) Begin();
            else log.Info("Waiting for {0} expert node(s) to place {1} experts", minExpertNodes, E);
        }
    }

    /// <summary>Every expert has a home: start from commit 0 (a new run: rollback always has a target) or resume.</summary>
    private void Begin()
    {
        if (!started || phase != Phase.Placing) return;
        UseExperts();
        if (journal.LastCommit is null) Cut(0);
        else { Go(Phase.Restoring); Restore(); }
    }

    /// <summary>At a step boundary: what <see cref="RunState.Decide(long?, Func{ValueTuple{string, ChaosFired}?})"/> says comes next.</summary>
    private void Next()
    {
        switch (run.Decide(journal.LastCommit?.Step, () => InCluster ? setup.Chaos.NodeKill(run.Step) : null, persisting: cut is not null))
        {
            case WaitForCommit:
                Go(Phase.Committing);                                 // the commit's journal callback goes on
                break;
            case Rejoin r:
                PersistAll(r.Records, rec =>
                {
                    journal.Apply(rec);
                    hooks.OnRecovery?.Invoke(rec);
                    log.Warning("{0} is back from its snapshot of step {1} after {2:F0} ms: it missed {3} steps, {4} image routings went to the next-best expert",
                        rec.Owner, rec.RestoredStep, rec.DetectionToRecoveredMs, rec.StepsMissed, rec.ReroutedImages);
                    if (rec != r.Records[^1]) return;
                    if (run.Step >= run.End) Cut(run.Step);      // the last commit was cut without them: cut again
                    else Next();
                });
                break;
            case ExactlyRecovered x:
                PersistAll(x.Records, rec =>
                {
                    journal.Apply(rec);
                    hooks.OnRecovery?.Invoke(rec);
                    log.Warning("{0} recovered exactly from its failure in step {1}: its in-memory copy of the step's start, {2:F0} ms from the failure to the step's end; no other owner went back",
                        rec.Owner, rec.Step, rec.DetectionToRecoveredMs);
                    if (rec == x.Records[^1]) Next();
                });
                break;
            case CutAt c: Cut(c.Step); break;
            case MoveNow m: StartMove(m.Move); break;
            case AddNow a:
                int g = run.StartAdd();
                Go(Phase.Growing);
                var commit = journal.LastCommit!;
                log.Info("Splitting experts [{0}] (recent tokens: [{1}]) into experts {2}..{3}", string.Join(",", a.Sources), string.Join(",", a.Tokens), E, E + a.Sources.Count - 1);
                Task.Run(() => ExpertGrowth.Grow(setup.Store, commit, setup.Moe, a.Sources, setup.SplitMargin))
                    .PipeTo(Self, success: c => new Grown(g, a.Sources, c), failure: e => new GrowFailed(g, e));
                break;
            case KillNodeNow k:
                var node = Hosts.HostNodes.FirstOrDefault(n => n.EndsWith("@" + k.HostPort, StringComparison.Ordinal));
                Persist(k.Fired, c =>
                {
                    ChaosJournaled(c);
                    if (node is null) log.Warning("Chaos: kill-node {0} skipped: it is not an expert node of this run (expert hosts: {1})", k.HostPort, string.Join(", ", Hosts.HostNodes));
                    else Hosts.HostAt(node)!.Tell(new KillNode(run.Step));
                    Next();
                });
                break;
            case WaitForExperts w:
                log.Info("All steps done; waiting for experts [{0}] to finish recovering before the final commit", string.Join(",", w.Down.Order()));
                Go(Phase.Waiting);
                Timers.StartSingleTimer("recovery-wait", new RecoveryWaitTimedOut(), 2 * setup.AskTimeout);
                break;
            case Finish f:
                f.Refused?.Requester?.Tell(new ExpertsAddedReply(f.Step, [], [], $"the run ended at step {f.Step} before the add"));
                run.Finished();
                finished = new RunFinished(f.Step, journal.Recoveries);
                foreach (var l in listeners) l.Tell(finished);
                Go(Phase.Finished);
                break;
            case Train t:
                Go(Phase.Training);
                trainer.Tell(t.Command);
                break;
        }
    }

    private void StepDone(StepCompleted m)
    {
        lastRouting = m.Routing;
        bool due = run.StepCompleted(m, E);
        hooks.OnStep?.Invoke(m);
        if (due) Cut(run.Step);
        else Next();
    }

    /// <summary>What a fault calls for (<see cref="RunState.Decide(Fault, bool)"/>), carried out. Before the run begins an
    /// owner is only restarted: the run's first restore (or commit 0) sets every owner.</summary>
    private void OnFault(Fault f)
    {
        if (phase is Phase.Finished or Phase.Stopped) return;
        if (f.Kind != FaultKind.Slow) log.Warning("Owner {0} failed at step {1}: {2}", string.Join(",", f.Owners), f.Step, f.Error);
        if (phase == Phase.Placing) return;
        int attempt = run.Generation;
        switch (run.Decide(f, phase is Phase.Training or Phase.Waiting))
        {
            case StopRun s: Fail(s.Reason); break;
            case SitOut s:
                foreach (var e in s.Experts) log.Warning("{0} is a straggler ({1}): it sits out steps {2}..{3}", OwnerRegistry.ExpertId(e), f.Error, f.Step, s.Until - 1);
                setup.Cancellation.Cancel(attempt, s.Experts);
                break;
            case RetryFromCopy r:
                log.Warning("{0} failed in the {1} of step {2}: it puts back its in-memory copy of the step's start, and the step is retried",
                    string.Join(",", r.Experts.Select(OwnerRegistry.ExpertId)), f.Phase.ToString().ToLowerInvariant(), f.Step);
                break;
            case ReplayFromCopy r:
                log.Warning("{0} failed in its update of step {1}: it puts back its in-memory copy of the step's start and replays its part from its log",
                    string.Join(",", r.Experts.Select(OwnerRegistry.ExpertId)), f.Step);
                break;
            case RollBack r: RollBackAfter(r, f); break;
        }
    }

    /// <summary>The restarted owners wait for the restore, after the backoff. A cut in flight that outlives the fault
    /// (<see cref="CutSurvives"/>) is kept, and the restore waits for its commit and restores it.</summary>
    private void RollBackAfter(RollBack r, Fault? f = null)
    {
        if (r.Fallback.Length > 0) log.Warning("Falling back to global-rollback: {0}", r.Fallback);
        restoreAwaitsCut = cutDue = false;                        // the restore decides again; the replayed steps cut again
        if (!CutSurvives(f)) AbandonCut();
        Go(Phase.Restoring);
        awaitingPlacement = false;
        if (r.Delay <= TimeSpan.Zero) { Restore(); return; }
        log.Info("Restoring in {0:F0} ms (failure {1} in a row)", r.Delay.TotalMilliseconds, run.FailuresInARow);
        Timers.StartSingleTimer("restore", new RestoreAfterBackoff(run.Generation), r.Delay);
    }

    /// <summary>A consistent cut after step s: every owner copies its part (the only blocking work) and writes it in the
    /// background; the next step starts once every part is copied, and the commit is journaled once every part is
    /// durable and verified. An expert out of the steps (expert-local) is represented by its last committed part. At most
    /// one cut is in flight: one that comes due before the previous is journaled waits for it, with no step running.</summary>
    private void Cut(long s)
    {
        if (cut is not null) { cutDue = true; Go(Phase.Committing); return; }
        Go(Phase.Cutting);
        int g = run.Generation;
        var owners = registry.ParameterOwners(E).ToList();
        bool Out((string id, IActorRef _) o) => SupervisorState.ExpertIndex(o.id) is { } e && run.OutOfCut(e);
        var absent = owners.Where(Out).Select(o => journal.LastCommit!.Manifest.Single(r => r.Owner == o.id)).ToArray();
        if (run.Move is { Started: false } mv) FailInMove(mv, MovePhase.Cut);
        var taking = owners.Where(o => !Out(o)).ToList();
        cut = new CutInFlight(s, g, taking.Select(o => o.id).ToList(), absent, run.Window);
        foreach (var (_, actor) in taking) actor.Tell(new Checkpoint(s, g));
        Timers.StartSingleTimer("cut", new CutTimedOut(s, g), 2 * setup.AskTimeout);
    }

    /// <summary>Whether the cut in flight outlives a fault: every part is copied, so it is a consistent state after its
    /// step, newer than the last commit, and the fault is not in writing it. Its writes go on in the background whatever
    /// failed since (a restarted owner's own write still reports, to the new instance), so a rollback restores it
    /// instead of the commit before it. A cut still being copied, one whose write or verification failed, and one that
    /// waits for a lost expert's part are abandoned.</summary>
    private bool CutSurvives(Fault? f) =>
        cut is { Copying.Count: 0 } c && (f is null || f.Phase != StepPhase.Checkpoint && !(f.Kind == FaultKind.Lost && f.Owners.Any(c.Waits)));

    /// <summary>The cut in flight will not be journaled: its parts may still be written, but it is never committed. A
    /// restore that waited for it goes to the commit before it.</summary>
    private void AbandonCut()
    {
        if (cut is not null) log.Info("The cut after step {0} is abandoned: it will not be committed", cut.Step);
        cut = null;
        cutDue = false;
        Timers.Cancel("cut");
        if (restoreAwaitsCut) { restoreAwaitsCut = false; Restore(); }
    }

    private void ChaosJournaled(ChaosFired c)
    {
        journal.Apply(c);
        hooks.OnChaos?.Invoke(c);
        log.Warning("Chaos at step {0}: {1} {2} ({3})", c.Step, c.Owner, c.Kind, c.Detail);
    }

    /// <summary>Every part is written: journal the commit (a chaos journal-refusal is journaled first, then the database
    /// refuses the commit and Akka stops this actor). Experts take their snapshots once it is journaled.</summary>
    private void Commit(CutInFlight m)
    {
        Timers.Cancel("cut");
        hooks.BeforeCommit?.Invoke(m.Step);
        void Journal() => Persist(new CheckpointCommitted(m.Step, m.Manifest, m.Window), e =>
        {
            cut = null;
            journal.Apply(e);
            hooks.OnKept?.Invoke(journal.Kept(keep));                                // recorded before any file goes
            if (journal.Commits.Count > keep) setup.Store.DeleteAllExcept(journal.KeptParts(keep).Append(initial));   // never a kept commit's file
            log.Info("Committed checkpoint {0} ({1} owners)", e.Step, e.Manifest.Count);
            foreach (var x in Enumerable.Range(0, E)) registry[OwnerRegistry.ExpertId(x)]?.Tell(new Committed(e.Step));
            Context.Parent.Tell(Akka.Pattern.BackoffSupervisor.Reset.Instance);   // the journal works: failures in a row start again
            hooks.OnCommit?.Invoke(e);
            if (restoreAwaitsCut) { restoreAwaitsCut = false; Restore(); return; }   // a rollback waited for this commit
            if (phase != Phase.Committing) return;                    // training went on meanwhile
            if (cutDue) { cutDue = false; Cut(run.Step); }
            else Next();
        });
        if (setup.Chaos.JournalRefusal(m.Step) is not { } r) { Journal(); return; }
        Persist(r.fired, c =>
        {
            ChaosJournaled(c);
            JournalSabotage.Refuse(Context.System.Settings.Config, r.period, s => log.Warning("Chaos: {0}", s));
            Journal();
        });
    }

    /// <summary>The step is committed: stop the experts to move (a drain's: those on its node now), create them on their
    /// new nodes, and restore every owner from that commit (nothing to replay).</summary>
    private void StartMove(PlannedMove planned)
    {
        var mv = run.StartMove(planned.LeavingNode is null ? [] : Hosts.On(planned.LeavingNode));
        fleet.Stop(mv.Experts, run.Step);
        if (mv.LeavingNode is not null) Hosts.RemoveNode(mv.LeavingNode);
        log.Warning("{0}: moving experts [{1}] at committed step {2}", mv.What, string.Join(",", mv.Experts), run.Step);
        Go(Phase.Restoring);
        awaitingPlacement = mv.Experts.Count > 0;
        if (!awaitingPlacement) { Restore(); return; }
        PlaceMissing(recover: false);                                             // the last ExpertHosted restores
        FailInMove(mv, MovePhase.Placement);
    }

    /// <summary>A chaos schedule's fail-in-move: the owner it names throws as this move reaches this phase.</summary>
    private void FailInMove(PlannedMove mv, MovePhase p)
    {
        if (setup.Chaos.InMove(mv.Number, p, run.Step) is { } owner) registry[owner]?.Tell(new Crash(run.Step, $"fails in the {p.ToString().ToLowerInvariant()} of planned move {mv.Number}"));
    }

    /// <summary>A drained node is asked to leave the cluster. A tool's answer travels back through the cluster receptionist
    /// it reached the run by, on some node: when that is the drained node itself, the node leaves a little later
    /// (<see cref="AnswerGrace"/>), so that its leaving does not drop the answer on the way.</summary>
    private void AskToLeave(string node, IActorRef? requester)
    {
        if (requester is not null && requester.Path.Address.ToString() == node) Timers.StartSingleTimer($"leave {node}", new LeaveNow(node), AnswerGrace);
        else Cluster.Get(Context.System).Leave(Address.Parse(node));
    }

    /// <summary>How long a drained node that relays the drain's answer stays before it leaves.</summary>
    private static readonly TimeSpan AnswerGrace = TimeSpan.FromSeconds(2);

    /// <summary>The grown commit is on disk: journal the add with it (one event), create the new experts, restore.</summary>
    private void AddGrown(Grown m)
    {
        if (m.Generation != run.Generation || run.Add is not { Started: true } a) return;  // a failure came first: taken again after it
        Persist(new ExpertsAdded(run.Step, E, m.Sources, a.Node, m.Commit), e =>
        {
            journal.Apply(e);
            hooks.OnKept?.Invoke(journal.Kept(keep));
            run.AddJournaled(e.Sources);
            hooks.OnCommit?.Invoke(e.Commit);
            log.Info("Committed checkpoint {0} with {1} experts ({2} owners)", e.Step, E, e.Commit.Manifest.Count);
            if (a.Node.Length > 0) foreach (var x in Enumerable.Range(e.From, e.Sources.Count)) Hosts.Keep(x, a.Node);
            Go(Phase.Restoring);
            awaitingPlacement = true;
            PlaceMissing(recover: false);
        });
    }

    private void AddFailed(GrowFailed m)
    {
        if (m.Generation != run.Generation || run.AddFailed() is not { } a) return;
        log.Error("Adding experts failed, nothing was added: {0}", m.Error.Message);
        a.Requester?.Tell(new ExpertsAddedReply(run.Step, [], [], $"growing the commit of step {run.Step} failed: {m.Error.Message}"));
        Next();
    }

    /// <summary>Every owner restores the newest commit whose files all verify (falling back past a corrupt or missing file).</summary>
    private void Restore()
    {
        if (cut is { Copying.Count: 0 } waited)                // kept by the rollback: restore it once it is journaled
        {
            if (!restoreAwaitsCut) log.Info("Restoring once the cut after step {0} is committed: its parts are copied and being written", waited.Step);
            restoreAwaitsCut = true;
            return;
        }
        var target = journal.RestoreTarget(setup.Store.Verify, (c, e) => log.Warning("Commit {0} is unusable, falling back to the previous one: {1}", c.Step, e.Message));
        if (target is null)
        {
            Fail(journal.NothingVerifies(), commitsUsable: false);
            return;
        }
        awaitingPlacement = !fleet.AllPlaced(E);
        if (awaitingPlacement) return;                        // a lost expert is being placed again: restore it too
        UseExperts();                                         // a restarted trainer or router starts without them
        if (run.Move is { Started: true } mv) FailInMove(mv, MovePhase.Restore);
        int g = run.Generation;                               // the trainer may first abort its step: one ask timeout on a lost owner
        OwnerCalls.Restore(registry.ParameterOwners(E), target, g, 2 * setup.AskTimeout)
            .PipeTo(Self, success: () => new RestoreDone(target, g), failure: e => new OperationFailed(g, e));
    }

    /// <summary>Every owner restored: what the restore was for completes (a failure during an add or a move made it a
    /// rollback as well, and the add or move completes all the same).</summary>
    private void Restored(CheckpointCommitted target)
    {
        long step = target.Step;
        var o = run.Restored(step, target.Window);
        if (o.Added is { Sources: { } sources } a)
        {
            var added = Enumerable.Range(E - sources.Count, sources.Count).ToList();
            log.Warning("Added experts [{0}] at step {1}, split from [{2}]: the run has {3} experts", string.Join(",", added), step, string.Join(",", sources), E);
            a.Requester?.Tell(new ExpertsAddedReply(step, added, sources, ""));
        }
        if (o.Moved is { } mv)
        {
            log.Warning("{0}: experts [{1}] moved, restored from commit {2}{3}", mv.What, string.Join(",", mv.Experts), step, mv.LeavingNode is null ? "" : "; the node is asked to leave");
            mv.Requester?.Tell(new NodeDrained(step, mv.LeavingNode ?? "", mv.Experts, ""));
            hooks.OnMove?.Invoke(mv, step);
            if (mv.LeavingNode is not null && InCluster) AskToLeave(mv.LeavingNode, mv.Requester);
        }
        if (o.Resume)
        {
            log.Info("Resumed from committed checkpoint {0}", step);
            hooks.OnResume?.Invoke(step);
        }
        if (o.Recovery is not { } record) { Next(); return; }
        Persist(record, r =>
        {
            journal.Apply(r);
            hooks.OnRecovery?.Invoke(r);
            log.Warning("Recovered from {0}'s failure at step {1}: restored commit {2}, replaying {3} steps ({4:F0} ms)", r.Owner, r.Step, r.RestoredStep, r.StepsReplayed, r.DetectionToRecoveredMs);
            Next();
        });
    }
}
