using System.Collections.Concurrent;

namespace MoCE.Actors;

/// <summary>A deliberately injected fault: a real exception that the owner throws from its own handler.</summary>
public sealed class InjectedFault(string owner, long step) : Exception($"chaos: {owner} fails at step {step}");

/// <summary>Fault injection for researchers and tests: "owner fails at step s", each event firing once. The plan is
/// shared by the actors of one process; a fired event stays fired across the owner's restart.</summary>
public sealed class ChaosPlan
{
    private readonly ConcurrentDictionary<(string owner, long step), bool> events = new();

    public static readonly ChaosPlan None = new();

    public ChaosPlan FailAt(string owner, long step)
    {
        events[(owner, step)] = false;
        return this;
    }

    /// <summary>Throws <see cref="InjectedFault"/> the first time (owner, step) is reached.</summary>
    public void Check(string owner, long step)
    {
        if (events.TryGetValue((owner, step), out var fired) && !fired && events.TryUpdate((owner, step), true, false))
            throw new InjectedFault(owner, step);
    }

    private readonly ConcurrentDictionary<string, TimeSpan> recoveryDelays = new();

    /// <summary>A slow recovery (straggler): the owner takes this long to come back after a restart.</summary>
    public ChaosPlan DelayRecovery(string owner, TimeSpan delay)
    {
        recoveryDelays[owner] = delay;
        return this;
    }

    public TimeSpan RecoveryDelay(string owner) => recoveryDelays.GetValueOrDefault(owner, TimeSpan.Zero);

    public IReadOnlyList<(string owner, long step)> Fired => events.Where(kv => kv.Value).Select(kv => kv.Key).ToList();
}
