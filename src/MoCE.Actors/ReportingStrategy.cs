using Akka.Actor;
using Akka.Actor.Internal;

namespace MoCE.Actors;

/// <summary>How the supervisor and every expert host supervise the owners they create: a failed owner is restarted (a
/// fresh instance on the same thread and device), one that cannot even be created is stopped. Either way the failure is
/// reported first, on the parent's own thread, with whether the owner restarts; what follows is the recovery policy's
/// decision, not the strategy's.</summary>
public sealed class ReportingStrategy(Action<IActorRef, Exception, bool> report)
    : OneForOneStrategy(-1, -1, e => e is ActorInitializationException ? Directive.Stop : Directive.Restart)
{
    public override void ProcessFailure(IActorContext context, bool restart, IActorRef child, Exception cause, ChildRestartStats stats,
                                        IReadOnlyCollection<ChildRestartStats> children)
    {
        report(child, cause, restart);
        base.ProcessFailure(context, restart, child, cause, stats, children);
    }
}
