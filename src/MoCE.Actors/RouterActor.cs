using Akka.Actor;
using MoCE.Actors.Messages;
using MoCE.Actors.Placement;
using MoCE.Actors.Wire;
using MoCE.Core.Config;
using MoCE.Core.Model;
using MoCE.Core.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Actors;

/// <summary>The router: owns every MoE block's gate (cluster embeddings and W), splits each block's batch by expert,
/// combines the experts' outputs with the gate weights, owns the routing regularizer, and on the way back scatters
/// the experts' input gradients into one dL/dh. Uses the same Plan/Combine as the reference MoE layer. Non-blocking:
/// it collects expert replies as messages. Runs on its own thread.</summary>
public sealed class RouterActor : ReceiveActor, IWithTimers
{
    public ITimerScheduler Timers { get; set; } = null!;

    /// <summary>One block's routing in flight.</summary>
    private sealed class Pending
    {
        public required IActorRef ReplyTo;
        public required Tensor Hidden;       // h [N, T, D] (a leaf; TokenMoE's gate reads it)
        public required Tensor Rows;         // h as rows [R, T', D]
        public required List<ExpertRows> Plan;
        public required Tensor Probs, Choice, Aux;
        public readonly Dictionary<int, Tensor> Outputs = [];   // expert → its output, a leaf
        public readonly Dictionary<int, Tensor> InputGrads = [];
        public Tensor? Y;                    // Σ w_e·out_e over the first FoldedOutputs plan entries; y when all are in
        public Tensor? GradRows;             // Σ scatter(dL/dInput_e) over the first FoldedGrads plan entries
        public int FoldedOutputs, FoldedGrads;
        public int Rerouted;
    }

    private readonly ActorContextSetup setup;
    private readonly Dictionary<int, MoeGate> gates = [];
    private ParameterOwner owner;
    private MoeConfig moe;                                     // E grows when experts are added
    private IReadOnlyList<IActorRef> experts = [];             // by expert index; the supervisor sends UseExperts
    private readonly Dictionary<int, Pending> pending = [];
    private long step = -1;
    private int generation = -1;

    public const string Name = "router";

    public static Props Props(ActorContextSetup setup) =>
        Akka.Actor.Props.Create(() => new RouterActor(setup)).WithDispatcher(ActorContextSetup.PinnedDispatcher);

    public RouterActor(ActorContextSetup setup)
    {
        this.setup = setup;
        setup.Threads.RegisterCurrent("moce-router");
        setup.Chaos.CheckCreation(Name);
        ComputeThread.UseThreads(setup.OwnerThreads);                            // this thread's OpenMP and MKL threads
        moe = setup.Moe;
        owner = BuildGates();
        owner.LoadInitial(setup.Initial);

        Receive<Route>(HandleRoute);
        Receive<ExpertOutput>(m => { m = m with { Output = m.Output.On(setup.Device) }; if (Arrived(m.Expert, m.Step, "output", m, m.Output)) HandleExpertOutput(m); });
        Receive<RouteBackward>(HandleBackward);
        Receive<ExpertInputGrad>(m => { m = m with { GradInput = m.GradInput.On(setup.Device) }; if (Arrived(m.Expert, m.Step, "input-grad", m, m.GradInput)) HandleExpertInputGrad(m); });
        Receive<Status.Failure>(f => FailAll(f.Cause));
        Receive<MalformedFrame>(m => { var e = m.Failure(Sender); FailAll(e); throw e; });   // the step fails now; the router is recovered
        Receive<Deadline>(HandleDeadline);
        Receive<Delayed>(d => d.To.Tell(d.Message, d.Sender));
        Receive<UseExperts>(m =>
        {
            experts = m.Experts;
            if (m.Experts.Count == moe.Experts) return;
            // experts were added (now, or before a restart): every gate gets their rows; a restore of the grown commit follows
            FreeStep();
            owner.Dispose();
            foreach (var g in gates.Values) g.Dispose();
            moe = moe with { Experts = m.Experts.Count };
            owner = BuildGates();
        });
        Receive<ExpertLost>(m =>
        {
            // its node left: nobody will answer for it, so a routing that waits on it fails now, not at the ask timeout
            if (pending.Values.Any(p => p.Plan.Any(e => e.Expert == m.Expert)))
                FailAll(new InvalidOperationException($"{OwnerRegistry.ExpertId(m.Expert)} was lost with its node"));
        });
        Receive<GetSquaredGradNorm>(m => Sender.Tell(new SquaredGradNormResponse(m.Step, Name, owner.SquaredGradNorm())));
        Receive<Apply>(m => { owner.Apply(m.Lr, m.ClipScale); FreeStep(); Sender.Tell(new StepApplied(m.Step, Name)); });
        Receive<Crash>(m => throw new InjectedFault(Name, m.Step, m.Reason));
        Receive<Checkpoint>(m => CutParts.Begin(owner, m, new Dictionary<string, string> { ["kind"] = "router" }, Self, Sender, setup.Chaos));
        Receive<PartPersisted>(p =>
        {
            if (CutParts.Persisted(owner, p) is not { } r) return;
            setup.Chaos.AfterCheckpoint(Name, p.Step, setup.Store, r);
            p.ReplyTo.Tell(new CheckpointWritten(p.Step, r, p.Generation));
        });
        Receive<RestoreCheckpoint>(m => { FreeStep(); owner.Restore(m.Ref); Sender.Tell(new Restored(m.Step, Name)); });
        Receive<AbortStep>(m => { owner.Optimizer.ZeroGrad(); FreeStep(); Sender.Tell(new StepAborted(m.Step, Name)); });
    }

    /// <summary>Every MoE block's gate for the current E, on the device, and their owner (weights still to be loaded).</summary>
    private ParameterOwner BuildGates()
    {
        var p = new Dictionary<string, TorchSharp.Modules.Parameter>();
        foreach (var b in moe.Layers)
        {
            var g = new MoeGate(moe, b, setup.Model.Dim, setup.Clusters);
            gates[b] = g;
            foreach (var (n, param) in g.named_parameters()) p[$"blocks.{b}.mlp.gate.{n}"] = param;
        }
        foreach (var g in gates.Values) g.to(setup.Device);
        return new ParameterOwner(Name, p, setup.Train, setup.Store);
    }

    private void HandleRoute(Route m)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        m = m with { Hidden = m.Hidden.On(setup.Device), ClusterIds = m.ClusterIds.On(setup.Device) };
        try
        {
            setup.Chaos.Check(Name, m.Step);
            step = m.Step;
            generation = m.Generation;
            var gate = gates[m.Block];
            using var scope = NewDisposeScope();
            var h = m.Hidden.detach().requires_grad_(gate.PerToken);
            long n = h.shape[0], t = h.shape[1], d = h.shape[2];
            var rows = gate.PerToken ? h.reshape(n * t, 1, d) : h;
            var input = new GateInput(m.ClusterIds, new GateNoise(setup.Train.Seed, m.Step));
            var probs = gate.forward(h, input);                                    // g(c) [R, E]
            var (weights, choice) = gate.Choose(probs, input);
            int rerouted = 0;
            if (m.Down.Count > 0) (choice, rerouted) = Reroute(probs, choice, m.Down);
            var plan = MoeLayer.Plan(choice, weights, moe.Experts);
            var aux = gate.Aux(probs, choice);
            var p = new Pending
            {
                ReplyTo = Sender, Hidden = h.MoveToOuterDisposeScope(), Rows = rows.MoveToOuterDisposeScope(),
                Plan = plan.Select(e => new ExpertRows(e.Expert, e.Rows.MoveToOuterDisposeScope(), e.Weights.MoveToOuterDisposeScope())).ToList(),
                Probs = probs.MoveToOuterDisposeScope(), Choice = choice.MoveToOuterDisposeScope(), Aux = aux.MoveToOuterDisposeScope(), Rerouted = rerouted,
            };
            pending[m.Block] = p;
            Straggle(m.Step, clock);
            foreach (var e in p.Plan)
                Send(e.Expert, "forward", new ExpertForward(m.Step, m.Generation, m.Block, p.Rows.index_select(0, e.Rows).detach().MoveToOuterDisposeScope()));
            m.Hidden.Dispose();
            m.ClusterIds.Dispose();
            if (p.Plan.Count == 0) throw new InvalidOperationException("no expert received rows");
            StartDeadline(m.Step, m.Generation, m.Block, backward: false);
        }
        catch (Exception e) { Sender.Tell(new Status.Failure(e)); throw; }
    }

    /// <summary>A straggling router (chaos schedule) really takes longer: its thread (pinned, not a shared one) waits out
    /// the extra time before it sends the block's rows, or their gradients, to the experts.</summary>
    private void Straggle(long step, System.Diagnostics.Stopwatch clock)
    {
        var extra = setup.Chaos.StragglerDelay(Name, step, clock.Elapsed);
        if (extra > TimeSpan.Zero) Thread.Sleep(extra);
    }

    /// <summary>expert-local: rows whose top-1 expert is down go to their best available expert, same weight.</summary>
    private static (Tensor choice, int rerouted) Reroute(Tensor probs, Tensor choice, IReadOnlySet<int> down)
    {
        var masked = probs.clone();
        foreach (var e in down) masked[.., e] = tensor(-1f);
        var best = masked.argmax(1, keepdim: true);
        var isDown = zeros_like(choice, dtype: ScalarType.Bool);
        foreach (var e in down) isDown = isDown.logical_or(choice.eq(e));
        int rerouted = (int)isDown.any(1).sum().item<long>();
        return (where(isDown, best.expand_as(choice), choice), rerouted);
    }

    /// <summary>A message to an expert, through the chaos plan's message faults (none: a plain Tell): dropped (never
    /// sent), duplicated (sent twice, the copy with its own tensor) or delayed (sent later by the scheduler).</summary>
    private void Send(int expert, string kind, IStepMessage message)
    {
        var to = experts[expert];
        switch (setup.Chaos.OnMessage(OwnerRegistry.ExpertId(expert), message.Step, kind))
        {
            case null: to.Tell(message); break;
            case { fault: MessageFault.Drop }: DisposeTensor(message); break;
            case { fault: MessageFault.Duplicate }:
                var copy = Copy(message);                                           // before the original goes: its receiver disposes it
                to.Tell(message);
                to.Tell(copy);
                break;
            case { delay: var d }: Timers.StartSingleTimer(Guid.NewGuid(), new Delayed(to, message, Self), d); break;
        }
    }

    /// <summary>A message from an expert, through the chaos plan's message faults: false when it is dropped or held
    /// back (a delayed one comes back through the scheduler; a duplicate is handled twice, the second time ignored).</summary>
    private bool Arrived(int expert, long s, string kind, IStepMessage message, Tensor tensor)
    {
        switch (setup.Chaos.IsEmpty ? null : setup.Chaos.OnMessage(OwnerRegistry.ExpertId(expert), s, kind))
        {
            case null: return true;
            case { fault: MessageFault.Drop }: tensor.Dispose(); return false;
            case { fault: MessageFault.Duplicate }: Self.Tell(Copy(message), Sender); return true;
            case { delay: var d }: Timers.StartSingleTimer(Guid.NewGuid(), new Delayed(Self, message, Sender), d); return false;
        }
    }

    /// <summary>A message held back by a delay fault, sent when its timer fires.</summary>
    private sealed record Delayed(IActorRef To, object Message, IActorRef Sender);

    /// <summary>A duplicate for a message fault: its tensor a clone owned by the receiver, outside any dispose scope of
    /// the sender's handler (which would dispose it, maybe before the receiver has looked at it).</summary>
    private static IStepMessage Copy(IStepMessage m) => m switch
    {
        ExpertForward f => f with { Input = f.Input.clone().DetachFromDisposeScope() },
        ExpertBackward b => b with { GradOutput = b.GradOutput.clone().DetachFromDisposeScope() },
        ExpertOutput o => o with { Output = o.Output.clone().DetachFromDisposeScope() },
        ExpertInputGrad g => g with { GradInput = g.GradInput.clone().DetachFromDisposeScope() },
        _ => m,
    };

    private static void DisposeTensor(IStepMessage m)
    {
        switch (m)
        {
            case ExpertForward f: f.Input.Dispose(); break;
            case ExpertBackward b: b.GradOutput.Dispose(); break;
        }
    }

    private void HandleExpertOutput(ExpertOutput m)
    {
        if (m.Step != step || m.Generation != generation || !pending.TryGetValue(m.Block, out var p)) { m.Output.Dispose(); return; } // from an abandoned attempt
        if (p.Outputs.ContainsKey(m.Expert)) { m.Output.Dispose(); return; }   // a duplicate: the first one counts, once
        p.Outputs[m.Expert] = m.Output.requires_grad_(true);
        using var scope = NewDisposeScope();
        // y = Σ_e w_e · out_e, scattered back to the rows: MoeLayer.Combine's fold, each term as soon as it and the
        // terms before it (plan order, so the sum is the reference's bit for bit) are in, while slower experts compute
        p.Y ??= zeros_like(p.Rows).MoveToOuterDisposeScope();
        for (; p.FoldedOutputs < p.Plan.Count && p.Outputs.TryGetValue(p.Plan[p.FoldedOutputs].Expert, out var output); p.FoldedOutputs++)
        {
            var next = MoeLayer.CombineOne(p.Y, p.Plan[p.FoldedOutputs], output).MoveToOuterDisposeScope();
            p.Y.Dispose();                                                          // the graph keeps what backward needs
            p.Y = next;
        }
        if (p.FoldedOutputs < p.Plan.Count) return;
        p.ReplyTo.Tell(new Routed(m.Step, m.Block, p.Y.reshape(p.Hidden.shape).detach().MoveToOuterDisposeScope(), p.Probs.detach().MoveToOuterDisposeScope(),
            p.Choice.alias().MoveToOuterDisposeScope(), gates[m.Block].PerToken ? 1 : p.Hidden.shape[1], p.Rerouted));
    }

    private void HandleBackward(RouteBackward m)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        m = m with { GradOutput = m.GradOutput.On(setup.Device) };
        try
        {
            var p = pending[m.Block];
            p.ReplyTo = Sender;
            Straggle(m.Step, clock);
            double lambda = moe.Method == MoeMethod.TokenMoe ? moe.LambdaBalance : moe.LambdaRoute;
            using (var scope = NewDisposeScope())
            {
                // first the experts' share, so that they start at once: dL/d out_e = w_e · (dL/dy on e's rows), which
                // is CombineOne's backward written out (what autograd computes for it, without a graph traversal)
                var dRows = m.GradOutput.reshape(p.Rows.shape);
                using (no_grad())
                    foreach (var e in p.Plan)
                        Send(e.Expert, "backward", new ExpertBackward(m.Step, m.Generation, m.Block,
                            (dRows.index_select(0, e.Rows) * e.Weights.view(-1, 1, 1)).MoveToOuterDisposeScope()));
                // then the router's own, while they work: dL/dy and the regularizer λ·aux into the gate (and for
                // TokenMoE into h, which its gate reads)
                var gate = gates[m.Block];
                var inputs = gate.parameters().Select(t => (Tensor)t).ToList();
                if (gate.PerToken) inputs.Add(p.Hidden);
                torch.autograd.backward([p.Y!, p.Aux], [dRows, tensor(lambda, dtype: p.Aux.dtype, device: p.Aux.device)], inputs: inputs);
            }
            m.GradOutput.Dispose();
            StartDeadline(m.Step, m.Generation, m.Block, backward: true);
        }
        catch (Exception e) { Sender.Tell(new Status.Failure(e)); throw; }
    }

    /// <summary>moce.actors.straggler-timeout: checks a block's experts have answered after the timeout.</summary>
    private sealed record Deadline(long Step, int Generation, int Block, bool Backward, DateTime Sent);

    // a .NET timer per block and direction, not Akka's scheduler: its 50 ms tick is coarser than a straggler's delay
    private readonly Dictionary<(int block, bool backward), Timer> deadlines = [];

    private void StartDeadline(long s, int g, int block, bool backward)
    {
        if (setup.StragglerTimeout <= TimeSpan.Zero) return;
        if (deadlines.Remove((block, backward), out var old)) old.Dispose();
        var self = Self;
        var d = new Deadline(s, g, block, backward, DateTime.UtcNow);
        deadlines[(block, backward)] = new Timer(_ => self.Tell(d, ActorRefs.NoSender), null, setup.StragglerTimeout, Timeout.InfiniteTimeSpan);
    }

    private void HandleDeadline(Deadline d)
    {
        if (d.Step != step || d.Generation != generation || !pending.TryGetValue(d.Block, out var p)) return;
        var answered = d.Backward ? p.InputGrads.Keys : p.Outputs.Keys;
        var slow = p.Plan.Select(e => e.Expert).Where(e => !answered.Contains(e)).ToList();
        if (slow.Count == 0) return;
        double waited = (DateTime.UtcNow - d.Sent).TotalMilliseconds;
        Context.Parent.Tell(new ExpertsSlow(d.Step, d.Generation, d.Block, slow, waited));     // first: the supervisor marks them
        FailAll(new TimeoutException($"{string.Join(", ", slow.Select(OwnerRegistry.ExpertId))} did not answer block {d.Block} within " +
                                     $"the straggler timeout ({setup.StragglerTimeout.TotalMilliseconds:F0} ms)"));
    }

    private void HandleExpertInputGrad(ExpertInputGrad m)
    {
        if (m.Step != step || m.Generation != generation || !pending.TryGetValue(m.Block, out var p)) { m.GradInput.Dispose(); return; }
        if (p.InputGrads.ContainsKey(m.Expert)) { m.GradInput.Dispose(); return; }   // a duplicate: folded once
        p.InputGrads[m.Expert] = m.GradInput;
        using var scope = NewDisposeScope();
        // dL/dh = Σ_e scatter(dL/dInput_e) (+ the gate's path for TokenMoE), folded in plan order as the gradients arrive
        p.GradRows ??= zeros_like(p.Rows).MoveToOuterDisposeScope();
        for (; p.FoldedGrads < p.Plan.Count && p.InputGrads.TryGetValue(p.Plan[p.FoldedGrads].Expert, out var g); p.FoldedGrads++)
            p.GradRows.index_add_(0, p.Plan[p.FoldedGrads].Rows, g, MoCE.Core.Runtime.Scalars.One);
        if (p.FoldedGrads < p.Plan.Count) return;
        var dh = p.GradRows.reshape(p.Hidden.shape);
        if (p.Hidden.grad is not null) dh = dh.Plus(p.Hidden.grad);
        p.ReplyTo.Tell(new RoutedBackward(m.Step, m.Block, dh.detach().MoveToOuterDisposeScope()));
    }

    private void FailAll(Exception cause)
    {
        foreach (var p in pending.Values) p.ReplyTo.Tell(new Status.Failure(cause));
        FreeStep();
    }

    private void FreeStep()
    {
        foreach (var p in pending.Values)
        {
            p.Hidden.Dispose(); p.Rows.Dispose(); p.Probs.Dispose(); p.Choice.Dispose(); p.Aux.Dispose(); p.Y?.Dispose(); p.GradRows?.Dispose();
            foreach (var e in p.Plan) { e.Rows.Dispose(); e.Weights.Dispose(); }
            foreach (var t in p.Outputs.Values) t.Dispose();
            foreach (var t in p.InputGrads.Values) t.Dispose();
        }
        pending.Clear();
    }

    protected override void PostStop()
    {
        foreach (var t in deadlines.Values) t.Dispose();
        FreeStep();
        owner.Dispose();
        foreach (var g in gates.Values) g.Dispose();
        base.PostStop();
    }
}
