using Akka.Actor;
using MoCE.Actors.Messages;

namespace MoCE.Actors;

/// <summary>A coordinator node's link to the run's supervisor, wherever the cluster runs it (a singleton on one of the
/// coordinators). It sends <see cref="SupervisorActor.Start"/> through the singleton proxy, and again every few seconds:
/// a supervisor that came back on another coordinator after a failover starts from it, and one that runs already
/// ignores it. It completes the node's task with the run's end: <see cref="RunFinished"/> or the failure.</summary>
public sealed class RunClientActor : ReceiveActor, IWithTimers
{
    public ITimerScheduler Timers { get; set; } = null!;

    private sealed record Remind;

    public static Props Props(IActorRef supervisor, long until, TimeSpan every, TaskCompletionSource<RunFinished> done) =>
        Akka.Actor.Props.Create(() => new RunClientActor(supervisor, until, every, done));

    public RunClientActor(IActorRef supervisor, long until, TimeSpan every, TaskCompletionSource<RunFinished> done)
    {
        Receive<Remind>(_ => supervisor.Tell(new SupervisorActor.Start(until)));
        Receive<RunFinished>(m => { done.TrySetResult(m); Context.Stop(Self); });
        Receive<Status.Failure>(f => { done.TrySetException(f.Cause); Context.Stop(Self); });
        Self.Tell(new Remind());
        Timers.StartPeriodicTimer("start", new Remind(), every);
    }
}
