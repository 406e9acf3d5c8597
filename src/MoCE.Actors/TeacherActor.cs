using Akka.Actor;
using MoCE.Actors.Messages;
using MoCE.Actors.Wire;
using MoCE.Core.Data;
using MoCE.Core.Model;
using MoCE.Core.Runtime;
using MoCE.Core.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Actors;

/// <summary>The frozen dense teacher of distillation, owned by the supervisor. It computes step s's target (the
/// teacher's encoder latent on the step's visible patches) from the step number alone, one step ahead of the
/// trainer, on its own thread at idle priority (Linux SCHED_IDLE): it runs in the gaps the step's critical path
/// leaves (router and expert phases, waits), instead of competing with the trainer's OpenMP team. It has no state
/// worth a checkpoint: its weights are the run's dense checkpoint, and a restart only empties its prefetched targets.</summary>
public sealed class TeacherActor : ReceiveActor
{
    public const string Name = "teacher";

    /// <summary>Targets computed ahead and not yet asked for; a rollback can leave a later step's here, which stays
    /// valid (a target depends only on its step), but the cache never holds more than this.</summary>
    private const int MaxReady = 4;

    private readonly ActorContextSetup setup;
    private readonly MaskedAutoencoder teacher;
    private readonly EpochSampler sampler;
    private readonly SortedDictionary<long, Tensor> ready = [];

    public static Props Props(ActorContextSetup setup) =>
        Akka.Actor.Props.Create(() => new TeacherActor(setup)).WithDispatcher(ActorContextSetup.PinnedDispatcher);

    public TeacherActor(ActorContextSetup setup)
    {
        this.setup = setup;
        setup.Threads.RegisterCurrent("moce-teacher");
        setup.Chaos.CheckCreation(Name);
        ComputeThread.UseThreads(setup.OwnerThreads);                            // this thread's OpenMP and MKL threads
        ComputeThread.OnlyWhenIdle();                                            // prefetch fills the gaps of the critical path
        var weights = setup.Teacher ?? throw new ArgumentException("the teacher needs the dense weights (distillation is off)");
        teacher = new MaskedAutoencoder(setup.Model);
        using (no_grad()) foreach (var (n, p) in teacher.named_parameters()) { p.copy_(weights[n]); p.requires_grad = false; }
        teacher.to(setup.Device).eval();
        sampler = new EpochSampler(setup.Data.Count, setup.Train.BatchSize, setup.Train.Seed);

        Receive<MalformedFrame>(m => { var e = m.Failure(Sender); Sender.Tell(new Status.Failure(new InvalidDataException(e.Message))); throw e; });   // the step fails now
        Receive<Prefetch>(m =>
        {
            if (ready.ContainsKey(m.Step)) return;
            ComputeThread.OnlyWhenIdle();                                        // ahead of need: in the gaps again
            ready[m.Step] = Compute(m.Step);
            while (ready.Count > MaxReady) Take(ready.Keys.First()).Dispose();
        });
        Receive<GetTarget>(m =>
        {
            try
            {
                setup.Chaos.Check(Name, m.Step);
                if (!ready.ContainsKey(m.Step)) setup.Threads.RunNormally("moce-teacher");   // the trainer waits for this one
                var target = ready.ContainsKey(m.Step) ? Take(m.Step) : Compute(m.Step);
                foreach (var old in ready.Keys.Where(k => k < m.Step).ToList()) Take(old).Dispose();   // a step never comes twice but after a rollback
                Sender.Tell(new Target(m.Step, target));
            }
            catch (Exception e) { Sender.Tell(new Status.Failure(e)); throw; }   // the trainer aborts the step; supervision restarts the teacher
        });
    }

    private Tensor Take(long step)
    {
        var t = ready[step];
        ready.Remove(step);
        return t;
    }

    /// <summary>The teacher's latent on step s's batch under step s's mask: the same inputs the trainer draws.</summary>
    private Tensor Compute(long step)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var (imgs, noise, _) = MoceTrainer.StepInputs(step, sampler, setup.Data, setup.ClusterIds, teacher, setup.Train.Seed, setup.Device);
        return teacher.ForwardEncoder(imgs, noise).latent.MoveToOuterDisposeScope();
    }

    protected override void PostStop()
    {
        foreach (var t in ready.Values) t.Dispose();
        ready.Clear();
        teacher.Dispose();
        base.PostStop();
    }
}
