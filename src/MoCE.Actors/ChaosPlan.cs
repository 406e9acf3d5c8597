using System.Collections.Concurrent;

namespace MoCE.Actors;

/// <summary>A deliberately injected fault: a real exception that the owner throws from its own handler.</summary>
public sealed class InjectedFault(string owner, long step, string? what = null) : Exception(what is null ? $"chaos: {owner} fails at step {step}" : $"chaos: {owner} {what}");

/// <summary>Where in a step an injected fault fires. Entry: first thing in the owner's handler of the step (forward).
/// Backward: in an expert's backward, after its gradients accumulated (a retry without a restore would apply them
/// twice). Apply: in an expert's update, after its weights changed. Checkpoint: in an expert's part of a cut, after
/// its file was written.</summary>
public enum ChaosPhase { Entry, Backward, Apply, Checkpoint }

/// <summary>What a fault does to a message between the router and an expert.</summary>
public enum MessageFault { Drop, Duplicate, Delay }

/// <summary>The phases of a planned move (a drain or a rebalance): its cut (the commit at the step boundary), the
/// placement of its experts on their new nodes, and the restore of every owner from that commit.</summary>
public enum MovePhase { Cut, Placement, Restore }

/// <summary>Fault injection for researchers and tests (a schedule from `moce train --chaos FILE`, or test code). Every
/// fault goes through the real path: an owner throws from its handler, a straggler really computes slower, a message
/// is really not sent (or sent twice, or late), checkpoint bytes are really flipped on disk. The plan is shared by the
/// actors of one process; what has fired stays fired across an owner's restart, and each firing is reported (in
/// order, and to <see cref="Observer"/>: the supervisor journals it).</summary>
public sealed class ChaosPlan
{
    private readonly ConcurrentDictionary<(string owner, long step, ChaosPhase phase), int> remaining = new();
    private readonly ConcurrentQueue<(string owner, long step)> fired = new();
    private readonly ConcurrentQueue<Messages.ChaosFired> events = new();

    public static readonly ChaosPlan None = new();

    /// <summary>Told of every firing, on the thread that fired it (the supervisor sets it to a Tell to itself).</summary>
    public Action<Messages.ChaosFired>? Observer { get; set; }

    /// <summary>Every firing so far, in order, with what it did.</summary>
    public IReadOnlyList<Messages.ChaosFired> Events => [.. events];

    private Messages.ChaosFired Report(long step, string owner, string kind, string detail, bool observe = true)
    {
        var e = new Messages.ChaosFired(step, owner, kind, detail);
        events.Enqueue(e);
        if (observe) Observer?.Invoke(e);
        return e;
    }

    /// <summary>True when nothing at all is planned (the fast path of every check).</summary>
    public bool IsEmpty => remaining.IsEmpty && poisons.IsEmpty && moveFaults.IsEmpty && probable.IsEmpty && stragglers.IsEmpty && messages.IsEmpty && corruptions.IsEmpty
                           && uncreatable.IsEmpty && recoveryDelays.IsEmpty && lostCopies.IsEmpty && slowPersists.IsEmpty && journalRefusals.IsEmpty && nodeKills.IsEmpty;

    /// <summary>The owner throws the first <paramref name="times"/> times it reaches step s (a replay reaches it again).</summary>
    public ChaosPlan FailAt(string owner, long step, int times = 1, ChaosPhase phase = ChaosPhase.Entry)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(times, 1);
        remaining[(owner, step, phase)] = times;
        return this;
    }

    private readonly ConcurrentDictionary<(string owner, ChaosPhase phase), (double p, long seed)> probable = new();
    private readonly ConcurrentDictionary<(string owner, long step, ChaosPhase phase), bool> drawn = new();

    /// <summary>The owner throws at each step with probability p, drawn from (seed, owner, step): the same steps in every
    /// run with this seed. Only a step's first attempt draws, so a replay after the rollback goes through.</summary>
    public ChaosPlan FailWithProbability(string owner, double p, long seed, ChaosPhase phase = ChaosPhase.Entry)
    {
        if (p is < 0 or > 1) throw new ArgumentOutOfRangeException(nameof(p), p, "a probability is in [0, 1]");
        probable[(owner, phase)] = (p, seed);
        return this;
    }

    /// <summary>Throws <see cref="InjectedFault"/> while (owner, step, phase) has firings left, or when the step's draw says so.</summary>
    public void Check(string owner, long step, ChaosPhase phase = ChaosPhase.Entry)
    {
        var key = (owner, step, phase);
        string where = phase == ChaosPhase.Entry ? "forward" : phase.ToString().ToLowerInvariant();
        while (remaining.TryGetValue(key, out var left) && left > 0)
        {
            if (!remaining.TryUpdate(key, left - 1, left)) continue;
            Fire(owner, step, where, phase);
        }
        if (probable.TryGetValue((owner, phase), out var pr) && drawn.TryAdd(key, true) && Draw(pr.seed, owner, step) < pr.p)
            Fire(owner, step, where + $" (p = {pr.p})", phase);
    }

    private void Fire(string owner, long step, string where, ChaosPhase phase)
    {
        fired.Enqueue((owner, step));
        Report(step, owner, "fail", $"throws in {where}");
        throw new InjectedFault(owner, step, phase == ChaosPhase.Entry ? null : $"fails at step {step} in {phase.ToString().ToLowerInvariant()}");
    }

    /// <summary>A uniform draw in [0, 1) from (seed, owner, step), the same on every platform.</summary>
    private static double Draw(long seed, string owner, long step)
    {
        long h = seed;
        foreach (var c in owner) h = h * 31 + c;
        return (MoCE.Core.Training.Seeds.Derive(h, MoCE.Core.Training.Seeds.Stream.Chaos, step) >> 11) * (1.0 / (1UL << 53));
    }

    private readonly ConcurrentDictionary<string, (long from, long to, double factor, double ms)> stragglers = new();
    private readonly ConcurrentDictionary<string, bool> stragglingReported = new();

    /// <summary>Expert <paramref name="owner"/> (or the router) is a straggler for steps [from, to]: each forward and backward takes
    /// <paramref name="factor"/> times its compute time, plus <paramref name="ms"/> milliseconds.</summary>
    public ChaosPlan Straggle(string owner, long from, long to, double factor = 1, double ms = 0)
    {
        if (factor < 1 || ms < 0 || to < from) throw new ArgumentException($"straggler {owner}: factor ≥ 1, ms ≥ 0 and from ≤ to (got {factor}, {ms}, {from}..{to})");
        stragglers[owner] = (from, to, factor, ms);
        return this;
    }

    /// <summary>How long the owner must wait after a compute of <paramref name="computed"/> at this step (zero when it is not straggling).</summary>
    public TimeSpan StragglerDelay(string owner, long step, TimeSpan computed)
    {
        if (!stragglers.TryGetValue(owner, out var s) || step < s.from || step > s.to) return TimeSpan.Zero;
        if (stragglingReported.TryAdd(owner, true))
            Report(step, owner, "straggler", $"{s.factor:G3}× its compute time + {s.ms:G3} ms for steps {s.from}–{s.to}");
        return computed * (s.factor - 1) + TimeSpan.FromMilliseconds(s.ms);
    }

    private readonly ConcurrentDictionary<(string expert, long step, string message), (MessageFault fault, double ms)> messages = new();

    /// <summary>At step s, the <paramref name="message"/> (forward, output, backward, input-grad) between the router and
    /// the expert is dropped, duplicated or delayed by <paramref name="ms"/>, once.</summary>
    public ChaosPlan Message(MessageFault fault, string expert, long step, string message, double ms = 0)
    {
        if (message is not ("forward" or "output" or "backward" or "input-grad"))
            throw new ArgumentException($"message '{message}': expected forward, output, backward or input-grad");
        messages[(expert, step, message)] = (fault, ms);
        return this;
    }

    /// <summary>The fault for this message, once (null: deliver it normally).</summary>
    public (MessageFault fault, TimeSpan delay)? OnMessage(string expert, long step, string message)
    {
        if (messages.IsEmpty || !messages.TryRemove((expert, step, message), out var f)) return null;
        Report(step, expert, f.fault.ToString().ToLowerInvariant(), $"{message} message between the router and {expert}" + (f.fault == MessageFault.Delay ? $" held {f.ms:G3} ms" : ""));
        return (f.fault, TimeSpan.FromMilliseconds(f.ms));
    }

    private readonly ConcurrentDictionary<(string owner, long step), bool> poisons = new();

    /// <summary>Silent corruption: after its backward at step s, the expert's gradients become NaN, once (a replay of s
    /// is clean). Nothing throws; the trainer finds the global norm not finite and fails the step.</summary>
    public ChaosPlan PoisonGradient(string owner, long step)
    {
        poisons[(owner, step)] = true;
        return this;
    }

    /// <summary>True (once, reported) when the owner's gradients of this step are to become NaN.</summary>
    public bool PoisonsGradient(string owner, long step)
    {
        if (poisons.IsEmpty || !poisons.TryRemove((owner, step), out _)) return false;
        fired.Enqueue((owner, step));
        Report(step, owner, "nan-gradient", "its gradients became NaN after its backward");
        return true;
    }

    private readonly ConcurrentDictionary<string, long> corruptions = new();

    /// <summary>The first checkpoint file the owner writes at step ≥ s gets bytes flipped on disk after it is written.</summary>
    public ChaosPlan CorruptCheckpoint(string owner, long step)
    {
        corruptions[owner] = step;
        return this;
    }

    /// <summary>Called by an owner right after it wrote its part: flips bytes in the middle of the file when planned.</summary>
    public void AfterCheckpoint(string owner, long step, MoCE.Core.Checkpoints.ICheckpointStore store, MoCE.Core.Checkpoints.CheckpointRef part)
    {
        if (corruptions.IsEmpty || !corruptions.TryGetValue(owner, out var at) || step < at || !corruptions.TryRemove(owner, out _)) return;
        var path = Path.Combine(store.Location, MoCE.Core.Checkpoints.CheckpointStore.CheckedName(part));   // the checked name, as every load
        using (var f = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            f.Position = f.Length / 2;
            int b = f.ReadByte();
            f.Position = f.Length / 2;
            f.WriteByte((byte)(b ^ 0xFF));
        }
        Report(step, owner, "corrupt-checkpoint", $"flipped a byte of {part.File}");
    }

    private readonly ConcurrentDictionary<long, string> nodeKills = new();

    /// <summary>At the first step boundary ≥ s, the process of the expert node at HOST:PORT is killed (SIGKILL, by itself).</summary>
    public ChaosPlan KillNode(string hostPort, long step)
    {
        nodeKills[step] = hostPort;
        return this;
    }

    /// <summary>The node to kill at this step boundary, once, with its event (the supervisor journals it first).</summary>
    public (string node, Messages.ChaosFired fired)? NodeKill(long step) =>
        TakeDue(nodeKills, step, out var node) ? (node, Report(step, node, "kill-node", $"the expert node {node} is killed (SIGKILL)", observe: false)) : null;

    /// <summary>A step-boundary event due at <paramref name="step"/> (planned for it or an earlier step), taken once.</summary>
    private static bool TakeDue<T>(ConcurrentDictionary<long, T> planned, long step, out T value)
    {
        value = default!;
        if (planned.IsEmpty) return false;                                        // every step boundary asks: no sort then
        foreach (var at in planned.Keys.Order())
            if (step >= at && planned.TryRemove(at, out value!)) return true;
        return false;
    }

    private readonly ConcurrentDictionary<long, TimeSpan> journalRefusals = new();

    /// <summary>At the first commit at step ≥ s the database starts refusing the journal's writes, for <paramref name="period"/>.</summary>
    public ChaosPlan RefuseJournal(long step, TimeSpan period)
    {
        journalRefusals[step] = period;
        return this;
    }

    /// <summary>The refusal that starts at this commit, once, with its event (the supervisor journals it itself, before
    /// the refusal begins, so it is not told to the observer).</summary>
    public (TimeSpan period, Messages.ChaosFired fired)? JournalRefusal(long step) =>
        TakeDue(journalRefusals, step, out var period)
            ? (period, Report(step, "journal", "journal-refuses", $"the database refuses journal writes for {period.TotalMilliseconds:F0} ms", observe: false)) : null;

    private readonly ConcurrentDictionary<(int move, MovePhase phase), string> moveFaults = new();

    /// <summary>When the run's <paramref name="move"/>-th planned move (from 1, in this supervisor) reaches
    /// <paramref name="phase"/>, <paramref name="owner"/> (trainer or router) throws, once.</summary>
    public ChaosPlan FailInMove(int move, MovePhase phase, string owner)
    {
        moveFaults[(move, phase)] = owner;
        return this;
    }

    /// <summary>The owner to fail now, once, that move having reached that phase; its event is told to the observer.</summary>
    public string? InMove(int move, MovePhase phase, long step) =>
        moveFaults.TryRemove((move, phase), out var owner)
            ? Report(step, owner, "fail-in-move", $"throws in the {phase.ToString().ToLowerInvariant()} of planned move {move}", observe: true).Owner : null;

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
        if (!uncreatable.ContainsKey(owner)) return;
        Report(-1, owner, "fail-creation", "cannot be created");
        throw new InjectedFault(owner, -1, "cannot be created");
    }

    private readonly ConcurrentDictionary<string, TimeSpan> recoveryDelays = new();

    /// <summary>A slow recovery (straggler): the owner takes this long to come back after a restart.</summary>
    public ChaosPlan DelayRecovery(string owner, TimeSpan delay)
    {
        recoveryDelays[owner] = delay;
        return this;
    }

    public TimeSpan RecoveryDelay(string owner) => recoveryDelays.GetValueOrDefault(owner, TimeSpan.Zero);

    private readonly ConcurrentDictionary<string, (long step, TimeSpan delay)> slowPersists = new();

    /// <summary>The owner's background write of its part of the first cut at or after step s takes this much longer (a
    /// slow or stalled disk): training goes on meanwhile, and the cut is journaled only once the write ends.</summary>
    public ChaosPlan SlowPersist(string owner, long step, TimeSpan delay)
    {
        slowPersists[owner] = (step, delay);
        return this;
    }

    /// <summary>Called as an owner starts writing its part of the cut after step s: the extra time its write takes.</summary>
    public TimeSpan PersistDelay(string owner, long step)
    {
        if (slowPersists.IsEmpty || !slowPersists.TryGetValue(owner, out var s) || step < s.step || !slowPersists.TryRemove(owner, out _)) return TimeSpan.Zero;
        Report(step, owner, "slow-persist", $"its part of the cut after step {step} takes {s.delay.TotalMilliseconds:F0} ms longer to write");
        return s.delay;
    }

    private readonly ConcurrentDictionary<string, bool> lostCopies = new();

    /// <summary>expert-exact: when the owner next restarts, its in-memory copy is gone (as if its memory were lost), so
    /// the run must fall back to global-rollback.</summary>
    public ChaosPlan LoseCopy(string owner)
    {
        lostCopies[owner] = true;
        return this;
    }

    /// <summary>Called by a restarted expert before it puts its copy back: true once, when its copy is to be lost.</summary>
    public bool LosesCopy(string owner)
    {
        if (!lostCopies.TryRemove(owner, out _)) return false;
        Report(-1, owner, "lose-copy", "its in-memory copy is lost");
        return true;
    }

    /// <summary>Every fault thrown so far, in order (one entry per firing).</summary>
    public IReadOnlyList<(string owner, long step)> Fired => [.. fired];
}
