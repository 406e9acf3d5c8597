using Akka.Actor;
using MoCE.Actors.Messages;
using MoCE.Actors.Placement;
using MoCE.Actors.Wire;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Model;
using MoCE.Core.Training;
using MoCE.Core.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Actors;

/// <summary>The trainer: owns the trunk (patch embedding, attention, dense MLPs, norms, decoder), the sampler position
/// and the step loop. A step asks the teacher for its distillation target (computed ahead), runs forward in segments
/// separated by MoE blocks (Route to the router at each), the loss, then backward in reverse segments (RouteBackward
/// at each), the global clip across all owners, and Apply. It blocks on replies, so it runs on its own thread.</summary>
public sealed class TrainerActor : ReceiveActor
{
    public const string Name = "trainer";

    private readonly ActorContextSetup setup;
    private readonly MaskedAutoencoder model;
    private readonly IActorRef? teacher;
    private readonly ParameterOwner owner;
    private readonly EpochSampler sampler;
    private readonly IActorRef router;
    private IReadOnlyList<IActorRef> experts = [];             // by expert index; the supervisor sends UseExperts

    public static Props Props(ActorContextSetup setup, IActorRef router, IActorRef? teacher) =>
        Akka.Actor.Props.Create(() => new TrainerActor(setup, router, teacher)).WithDispatcher(ActorContextSetup.PinnedDispatcher);

    public TrainerActor(ActorContextSetup setup, IActorRef router, IActorRef? teacher)
    {
        this.setup = setup;
        setup.Threads.RegisterCurrent("moce-trainer");
        setup.Chaos.CheckCreation(Name);
        ComputeThread.UseThreads(setup.TrainerThreads);                          // this thread's OpenMP and MKL threads
        this.router = router;
        this.teacher = teacher;
        model = new MaskedAutoencoder(setup.Model, setup.Moe, setup.Clusters, remoteExperts: true);
        owner = new ParameterOwner(Name, model.named_parameters().ToDictionary(p => p.name, p => p.parameter), setup.Train, setup.Store);
        owner.LoadInitial(setup.Initial);
        model.to(setup.Device).train();
        sampler = new EpochSampler(setup.Data.Count, setup.Train.BatchSize, setup.Train.Seed);

        Receive<TrainStep>(HandleTrainStep);
        Receive<MalformedFrame>(m => throw m.Failure(Sender));
        Receive<UseExperts>(m => experts = m.Experts);
        Receive<GetSquaredGradNorm>(m => Sender.Tell(new SquaredGradNormResponse(m.Step, Name, owner.SquaredGradNorm())));
        Receive<Crash>(m => throw new InjectedFault(Name, m.Step, m.Reason));
        Receive<Checkpoint>(m => CutParts.Begin(owner, m, new Dictionary<string, string> { ["kind"] = "trainer" }, Self, Sender, setup.Chaos));
        Receive<PartPersisted>(p =>
        {
            if (CutParts.Persisted(owner, p) is not { } r) return;
            setup.Chaos.AfterCheckpoint(Name, p.Step, setup.Store, r);
            p.ReplyTo.Tell(new CheckpointWritten(p.Step, r, p.Generation));
        });
        Receive<RestoreCheckpoint>(m => { owner.Optimizer.ZeroGrad(); owner.Restore(m.Ref); Sender.Tell(new Restored(m.Step, Name)); });
    }

    /// <summary>A blocking request from the trainer's own thread. The Ask runs on the default task scheduler: inside
    /// an actor, its continuation would otherwise be queued behind the very message that is waiting for it. A reply
    /// whose frame did not parse fails the trainer at once (the step is recovered), naming the frame and its sender.</summary>
    private T Ask<T>(IActorRef to, object message) => Wait(() => Request<T>(to, message));

    private async Task<T> Request<T>(IActorRef to, object message) => await to.Ask<object>(message, setup.AskTimeout) switch
    {
        T reply => reply,
        MalformedFrame bad => throw bad.Failure(to),
        var other => throw new InvalidOperationException($"{to.Path.Name} answered {message.GetType().Name} with a {other.GetType().Name}"),
    };

    private CancellationToken stepToken;

    /// <summary>Waits for replies. An owner that failed answers with a failure and is itself supervised, so that
    /// becomes <see cref="OwnerReplyFailed"/>: not the trainer's fault; so does an owner lost with its node (the
    /// supervisor cancels the step). A timeout (no answer at all) stays an error.</summary>
    private T Wait<T>(Func<Task<T>> request)
    {
        try { return Task.Run(request).WaitAsync(stepToken).GetAwaiter().GetResult(); }
        catch (OperationCanceledException) when (stepToken.IsCancellationRequested)
        {
            throw new OwnerReplyFailed(new InvalidOperationException($"the supervisor cancelled the step: {string.Join(", ", setup.Cancellation.Lost.Select(OwnerRegistry.ExpertId))} lost with their node or too slow"));
        }
        catch (Exception e) when (e is not (AskTimeoutException or MalformedFrameException)) { throw new OwnerReplyFailed(e); }
    }

    private sealed class OwnerReplyFailed(Exception cause) : Exception($"another owner failed: {cause.Message}", cause);

    private void HandleTrainStep(TrainStep m)
    {
        setup.Chaos.Check(Name, m.Step);
        stepToken = setup.Cancellation.Begin(m.Generation);
        try
        {
            RunStep(m);
            NativeMemory.AfterStep(m.Step, setup.Train.CollectEvery);             // the step's tensors are disposed by now
        }
        catch (OwnerReplyFailed e)
        {
            // another owner failed mid-step (its supervisor handles it): drop the step everywhere and report it; the
            // supervisor rolls back (global-rollback) or retries the step without the failed expert (expert-local).
            // The trainer's own errors and timeouts are not caught: it fails, and the supervisor recovers it.
            owner.Optimizer.ZeroGrad();
            // in parallel: an owner lost with its node never answers, and the others should not wait behind it
            var lost = stepToken.IsCancellationRequested ? setup.Cancellation.Lost : new HashSet<int>();
            var owners = experts.Where((_, e) => !lost.Contains(e)).Append(router).ToList();   // the lost never answer
            Task.Run(() => Task.WhenAll(owners.Select(a => a.Ask<StepAborted>(new AbortStep(m.Step), setup.AskTimeout)
                .ContinueWith(_ => { }, TaskScheduler.Default)))).GetAwaiter().GetResult();   // a failed owner restores its state when it comes back
            Sender.Tell(new StepFailed(m.Step, m.Generation, e.Message));
        }
    }

    /// <summary>Asks the teacher for step s's distillation target (computed while the previous step ran) and has it
    /// start on step s + 1's. Null when distillation is off.</summary>
    private Task<Target>? RequestTarget(long s) => teacher is null ? null : Task.Run(() =>
    {
        var t = teacher.Ask<Target>(new GetTarget(s), setup.AskTimeout);
        if (s + 1 < setup.Train.Steps) teacher.Tell(new Prefetch(s + 1));    // sent after GetTarget(s): the mailbox keeps the order
        return t;
    });

    private void RunStep(TrainStep m)
    {
        long s = m.Step;
        using var scope = NewDisposeScope();
        int rerouted = 0;
        var (imgs, noise, gate) = MoceTrainer.StepInputs(s, sampler, setup.Data, setup.ClusterIds, model, setup.Train.Seed, setup.Device);
        var routes = new List<RouteStats>();
        var target = RequestTarget(s);
        MaeOutput o;
        List<MaskedAutoencoder.Boundary> boundaries;
        Tensor loss;
        try
        {
            // forward, segment by segment: at each MoE block the router computes y = Σ g_e·expert_e(h). Tensors are
            // handed over as new handles on the same storage (no copies): the router owns and disposes what it receives.
            (o, boundaries) = model.ForwardRemote(imgs, noise, (block, h) =>
            {
                var r = Ask<Routed>(router, new Route(s, m.Generation, block, h.DetachFromDisposeScope(), gate.ClusterIds.alias().DetachFromDisposeScope(), m.Down));
                r = r with { Output = r.Output.On(setup.Device), Probs = r.Probs.On(setup.Device), Choice = r.Choice.On(setup.Device) };
                rerouted += r.ReroutedRows;
                scope.Attach(r.Output); scope.Attach(r.Probs); scope.Attach(r.Choice);
                routes.Add(new RouteStats(block, r.Probs, r.Choice, r.Choice, r.Probs, r.TokensPerRow));
                return r.Output.requires_grad_(true);                                 // the segment boundary: a leaf
            });
            loss = o.Loss;
            if (target is not null)
            {
                if (!target.IsCompleted) setup.Threads.RunNormally("moce-teacher");   // a prefetch we now wait for must not starve
                var t = Wait(() => target).Latent.On(setup.Device);
                scope.Attach(t);
                target = null;
                loss = loss.Plus(MoCE.Core.Runtime.Scalars.Of(setup.Moe.LambdaDistill) * MoceTrainer.Distill(o.Latent, t));
            }
        }
        finally { target?.ContinueWith(t => t.Result.Latent.Dispose(), TaskContinuationOptions.OnlyOnRanToCompletion); }   // a failed step's target is dropped

        // backward in reverse segments: each MoE block's dL/dy goes to the router, which returns dL/dh
        MaskedAutoencoder.BackwardRemote(loss, boundaries, (block, dy) =>
        {
            var back = Ask<RoutedBackward>(router, new RouteBackward(s, m.Generation, block, dy.detach().DetachFromDisposeScope()));
            back = back with { GradHidden = back.GradHidden.On(setup.Device) };
            scope.Attach(back.GradHidden);
            return back.GradHidden;
        });

        // clip by the global norm: every owner reports its share of Σ‖g‖²
        var others = experts.Where((_, e) => !m.Down.Contains(e)).Append(router).ToList();   // a recovering expert sits out
        var asked = Task.Run(() => Task.WhenAll(others.Select(a => Request<SquaredGradNormResponse>(a, new GetSquaredGradNorm(s, m.Generation)))));
        double own = owner.SquaredGradNorm();                                         // while the others compute theirs
        var norms = Wait(() => asked);
        double norm = Math.Sqrt(own + norms.Sum(n => n.Value));
        double lr = LrSchedule.At(s, setup.Train);
        float mae = o.Loss.item<float>();
        string culprits = double.IsFinite(norm) ? "" : string.Join(", ", norms.Where(n => !double.IsFinite(n.Value)).Select(n => $"{n.Owner}'s share")
            .Prepend(double.IsFinite(own) ? null : $"{Name}'s share").Prepend(float.IsFinite(mae) ? null : $"the loss was {mae}").OfType<string>());
        double clip = AdamW.ClipScale(s, norm, setup.Train.ClipGrad, culprits);         // not finite: throws, the step fails and is replayed
        var applied = Task.Run(() => Task.WhenAll(others.Select(a => ApplyOn(a, new Apply(s, lr, clip, m.Generation)))));
        owner.Apply(lr, clip);                                                       // overlaps the others' updates
        // not Wait: once the trainer has applied, the step cannot be retried without it, so an owner lost now (the
        // supervisor cancels) fails the trainer itself, and the run rolls back globally
        applied.WaitAsync(stepToken).GetAwaiter().GetResult();

        var stats = new StepStats(s, mae, lr, norm, setup.Train.BatchSize);
        Sender.Tell(new StepCompleted(s, stats, ExpertStat.From(routes, o.PerImage, experts.Count), rerouted));
        o.Dispose();
    }

    /// <summary>An owner's update. Under expert-exact an expert whose update failed is asked once more: restarted, it has put
    /// back its in-memory copy of the step's start and replays its part of the step from its log before it updates. A
    /// second failure, or an answer that never came (a lost node, a timeout), fails the step.</summary>
    private async Task<StepApplied> ApplyOn(IActorRef owner, Apply apply)
    {
        try { return await Request<StepApplied>(owner, apply); }
        catch (Exception e) when (setup.Policy == RecoveryPolicy.ExpertExact && owner != router && e is not (AskTimeoutException or MalformedFrameException))
        {
            return await Request<StepApplied>(owner, apply);
        }
    }

    protected override void PostStop()
    {
        owner.Dispose();
        model.Dispose();
        base.PostStop();
    }
}
