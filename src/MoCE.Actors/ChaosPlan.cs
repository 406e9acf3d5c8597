using System.Collections.Concurrent;

namespace MoCE.Actors;

/// <summary>A deliberately injected fault: a real exception that the owner throws from its own handler.</summary>
public sealed class InjectedFault(string owner, long step, string? what = null) : Exception(what is null ? $"chaos: {owner} fails at step {step}" : $"chaos: {owner} {what}");

/// <summary>Where in a step an injected fault fires. Entry: first thing in the owner's handler of the step (forward).
/// Backward: in an expert's backward, after its gradients accumulated (a retry without a restore would apply them
/// twice). Apply: in an expert's update, after its weights changed. Checkpoint: in an expert's part of a cut, after
/// its file was written.</summary>
public enum ChaosPhase { Entry, Backward, Apply, Checkpoint }

/// <summary>Fault injection for researchers and tests: "owner fails at step s", once or on several attempts of that
/// step. The plan is shared by the actors of one process; what has fired stays fired across the owner's restart.</summary>
public sealed class ChaosPlan
{
    private readonly ConcurrentDictionary<(string owner, long step, ChaosPhase phase), int> remaining = new();
    private readonly ConcurrentQueue<(string owner, long step)> fired = new();

    public static readonly ChaosPlan None = new();

    /// <summary>The owner throws the first <paramref name="times"/> times it reaches step s (a replay reaches it again).</summary>
    public ChaosPlan FailAt(string owner, long step, int times = 1, ChaosPhase phase = ChaosPhase.Entry)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(times, 1);
        remaining[(owner, step, phase)] = times;
        return this;
    }

    /// <summary>Throws <see cref="InjectedFault"/> while (owner, step, phase) has firings left.</summary>
    public void Check(string owner, long step, ChaosPhase phase = ChaosPhase.Entry)
    {
        var key = (owner, step, phase);
        while (remaining.TryGetValue(key, out var left) && left > 0)
        {
            if (!remaining.TryUpdate(key, left - 1, left)) continue;
            fired.Enqueue((owner, step));
            throw new InjectedFault(owner, step, phase == ChaosPhase.Entry ? null : $"fails at step {step} in {phase.ToString().ToLowerInvariant()}");
        }
    }

    private readonly ConcurrentDictionary<string, bool> uncreatable = new();

    /// <summary>The owner cannot be created (its constructor throws, as a failed device or a bad weight file would):
    /// the supervisor cannot restart it and stops the run.</summary>
    public ChaosPlan FailCreation(string owner)
    {
        uncreatable[owner] = true;
        return this;
    }

    /// <summary>Called first thing by each owner's constructor.</summary>
    public void CheckCreation(string owner)
    {
        if (uncreatable.ContainsKey(owner)) throw new InjectedFault(owner, -1, "cannot be created");
    }

    private readonly ConcurrentDictionary<string, TimeSpan> recoveryDelays = new();

    /// <summary>A slow recovery (straggler): the owner takes this long to come back after a restart.</summary>
    public ChaosPlan DelayRecovery(string owner, TimeSpan delay)
    {
        recoveryDelays[owner] = delay;
        return this;
    }

    public TimeSpan RecoveryDelay(string owner) => recoveryDelays.GetValueOrDefault(owner, TimeSpan.Zero);

    /// <summary>Every fault thrown so far, in order (one entry per firing).</summary>
    public IReadOnlyList<(string owner, long step)> Fired => [.. fired];
}
