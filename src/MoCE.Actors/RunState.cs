using Akka.Actor;
using MoCE.Actors.Messages;
using MoCE.Actors.Placement;

namespace MoCE.Actors;

/// <summary>A planned move of experts at a step boundary: a drain (moce node drain: they leave a node, which then leaves
/// the cluster) or a rebalance onto a node that joined (moce.actors.placement = spread). A drain's experts are taken at
/// the boundary, when it starts.
/// Number: the how-manieth move of this supervisor (from 1).</summary>
public sealed record PlannedMove(string What, IReadOnlyList<int> Experts, string? LeavingNode, IActorRef? Requester, bool Started = false, int Number = 0);

/// <summary>An add of experts (moce experts add), taken at a step boundary: commit, grow the commit, journal, place,
/// restore. Sources is set once the add is journaled (from then on it survives any failure).</summary>
public sealed record PendingAdd(int Count, string Node, long AtStep, IActorRef? Requester, bool Started = false, IReadOnlyList<int>? Sources = null)
{
    public bool Journaled => Sources is { Count: > 0 };
}

/// <summary>The failure a global rollback is under way for: recorded when every owner has restored. Fallback: why the
/// configured policy left it to global-rollback.</summary>
public sealed record Handling(string Owner, string Error, long Step, long Since, string Fallback = "");

/// <summary>An expert-exact recovery under way: the expert failed in this phase of this step, and has (Restored) or has
/// not yet put back its in-memory copy of the step's start.</summary>
public sealed record ExactRecovery(long Step, StepPhase Phase, string Error, long Since, bool Restored = false);

/// <summary>What the run does next, at a step boundary.</summary>
public abstract record Next;
/// <summary>Experts back from an outage take rows again: journal their records.</summary>
public sealed record Rejoin(IReadOnlyList<RecoveryRecord> Records) : Next;
/// <summary>Experts recovered exactly (expert-exact): the step they failed in has completed; journal their records.</summary>
public sealed record ExactlyRecovered(IReadOnlyList<RecoveryRecord> Records) : Next;
/// <summary>Take a consistent cut after this step (every owner writes its part, then the commit is journaled).</summary>
public sealed record CutAt(long Step) : Next;
/// <summary>Start the planned move now: the current step is committed.</summary>
public sealed record MoveNow(PlannedMove Move) : Next;
/// <summary>Start the add now: split these experts (the busiest by their recent tokens).</summary>
public sealed record AddNow(IReadOnlyList<int> Sources, IReadOnlyList<long> Tokens) : Next;
/// <summary>A chaos schedule's kill-node is due: journal it, then kill that node.</summary>
public sealed record KillNodeNow(string HostPort, ChaosFired Fired) : Next;
/// <summary>Every step is done but these experts are still recovering: the final commit waits for them.</summary>
public sealed record WaitForExperts(IReadOnlySet<int> Down) : Next;
/// <summary>The run is done at this step. An add still pending is refused.</summary>
public sealed record Finish(long Step, PendingAdd? Refused) : Next;
/// <summary>The cut in flight must be journaled first (what comes next needs it, or a cut is already being persisted).</summary>
public sealed record WaitForCommit : Next;
/// <summary>Train this step.</summary>
public sealed record Train(TrainStep Command) : Next;

/// <summary>What a restore completed: an add (now live), a move (its experts run on their new nodes), a recovery (to
/// journal). None of them: a resume.</summary>
public sealed record RestoreOutcome(PendingAdd? Added, PlannedMove? Moved, RecoveryRecord? Recovery)
{
    public bool Resume => Added is null && Moved is null && Recovery is null;
}

/// <summary>The run's progress that is not journaled: step, end, generation, the failure being handled, pending moves
/// and adds, outages, the recent token window. A plain type: the supervisor folds its events in (steps completed,
/// commits, restores, faults) and asks it what comes next (<see cref="Decide(long?, Func{ValueTuple{string, ChaosFired}?})"/>)
/// and what to do about a fault (<see cref="Decide(Fault, bool)"/>); tests drive it without actors. The generation
/// grows whenever an attempt is abandoned, so replies of an older one are recognised as stale.</summary>
public sealed class RunState(long checkpointEvery, RestartBackoff backoff, IReadOnlyList<IRecoveryPolicy> policies)
{
    private readonly Dictionary<int, Outage> outages = [];
    private readonly Dictionary<int, long> rejoining = [];               // expert → the step of the snapshot it restored
    private readonly Dictionary<int, ExactRecovery> exact = [];          // expert-exact recoveries under way
    private readonly List<RecoveryRecord> exactDone = [];
    private bool failedAttempt;                                          // the trainer reported the attempt while copies were being put back
    private readonly SortedDictionary<long, long[]> tokens = [];         // by step: a replayed step overwrites its first run
    private long lastFailedStep = -1;
    private bool retry;
    private int moves;

    /// <summary>The policies of a run: straggler-timeout, then expert-local if configured, then global-rollback.</summary>
    public static RunState For(ActorContextSetup setup, long checkpointEvery) => new(checkpointEvery, setup.Backoff,
        [new StragglerTimeoutPolicy(setup.StragglerSitOut), .. setup.Policy switch
        {
            RecoveryPolicy.ExpertLocal => [new ExpertLocalPolicy()],
            RecoveryPolicy.ExpertExact => [new ExpertExactPolicy(setup.Backoff, setup.PeerCopies)],
            _ => Array.Empty<IRecoveryPolicy>(),
        }, new GlobalRollbackPolicy(setup.Backoff)]);

    public long Step { get; private set; }
    public long End { get; private set; } = long.MaxValue;
    public int Generation { get; private set; }
    public bool StopRequested { get; set; }
    public PlannedMove? Move { get; private set; }
    public PendingAdd? Add { get; private set; }
    public Handling? Failure { get; private set; }
    /// <summary>Failures since a step last completed past the latest failed one: what the backoff grows with.</summary>
    public int FailuresInARow { get; private set; }
    public IReadOnlyDictionary<int, Outage> Outages => outages;
    /// <summary>The tokens of the recent steps (what an add splits by), as a commit journals them.</summary>
    public IReadOnlyList<RoutedTokens> Window => tokens.Select(kv => new RoutedTokens(kv.Key, kv.Value)).ToList();
    public IReadOnlySet<int> Down => outages.Keys.ToHashSet();
    /// <summary>Out of a cut: an expert restoring (expert-local). A straggler sitting out is alive and writes its part.</summary>
    public bool OutOfCut(int expert) => outages.TryGetValue(expert, out var o) && o.Kind == OutageKind.Failed;
    /// <summary>This supervisor is the <paramref name="number"/>-th start of the run: its generations begin above every
    /// earlier start's (2^20 per start; the 2048th start of one run overflows, and says so).</summary>
    public void Incarnated(int number) => Generation = checked(number * (1 << 20));

    public void Started(long end) => End = end;

    // ---- requests --------------------------------------------------------------------------------------------------

    /// <summary>moce node drain: the reason it cannot work, or null (then the next step boundary commits and moves).</summary>
    public string? Drain(string node, IActorRef? requester, bool training, IReadOnlyCollection<string> hosts)
    {
        string? why = Busy() ?? (!training ? "the run is not training"
            : !hosts.Contains(node) ? $"{node} hosts no experts of this run (expert hosts: {string.Join(", ", hosts)})"
            : hosts.Count < 2 ? "it is the only expert node: its experts would have nowhere to go" : null);
        if (why is null) Move = new PlannedMove($"drain of {node}", [], node, requester, Number: ++moves);
        return why;
    }

    /// <summary>A node joined under spread placement: move these experts to it at the next boundary, if nothing else is under way.</summary>
    public bool Rebalance(string node, IReadOnlyList<int> experts, bool training)
    {
        if (!training || experts.Count == 0 || Busy() is not null) return false;
        Move = new PlannedMove($"rebalance onto {node}", experts, null, null, Number: ++moves);
        return true;
    }

    /// <summary>The most experts one add may bring: a count from the wire is checked before anything is sized by it.</summary>
    public const int MaxAddAtOnce = 64;

    /// <summary>moce experts add: the reason it cannot work, or null (then the step boundary it names, or the next, adds).</summary>
    public string? AddExperts(AddExperts m, IActorRef? requester, bool started, bool finished, IReadOnlyCollection<string> hosts)
    {
        string? why = m.Count < 1 ? $"--count must be at least 1, got {m.Count}"
            : m.Count > MaxAddAtOnce ? $"--count must be at most {MaxAddAtOnce} at once, got {m.Count}"
            : Move is not null ? $"{Move.What} is under way" : Add is not null ? "another add of experts is under way"
            : finished ? $"the run has finished (step {Step})"
            : m.AtStep >= 0 && m.AtStep < Step ? $"step {m.AtStep} has passed (the run is at step {Step})"
            : started && m.AtStep >= End ? $"step {m.AtStep} is not before the run's end ({End})"
            : m.Node.Length > 0 && !hosts.Contains(m.Node) ? $"{m.Node} is not an expert node of this run (expert hosts: {string.Join(", ", hosts)})"
            : null;
        if (why is null) Add = new PendingAdd(m.Count, m.Node, m.AtStep, requester);
        return why;
    }

    private string? Busy() => Move is not null ? $"{Move.What} is under way" : Add is not null ? "an add of experts is under way" : null;

    // ---- the step boundary -----------------------------------------------------------------------------------------

    /// <summary>What comes next at this step boundary, given the last committed step. <paramref name="nodeKill"/> takes a due
    /// kill-node of a chaos schedule (asked only when nothing comes before it). <paramref name="persisting"/>: a cut is
    /// being written; what needs a commit of this step (a move, an add, a stop, the end, a run's first step) waits for it.</summary>
    public Next Decide(long? committed, Func<(string node, ChaosFired fired)?> nodeKill, bool persisting = false)
    {
        Next Commit() => persisting ? new WaitForCommit() : new CutAt(Step);
        if (exactDone.Count > 0)
        {
            var done = exactDone.ToList();
            exactDone.Clear();
            return new ExactlyRecovered(done);
        }
        if (rejoining.Count > 0)
        {
            var records = rejoining.OrderBy(kv => kv.Key).Select(kv => outages[kv.Key].Ended(kv.Key, kv.Value, Step)).ToList();
            foreach (var e in rejoining.Keys) outages.Remove(e);
            rejoining.Clear();
            return new Rejoin(records);
        }
        if (committed is null && persisting) return new WaitForCommit();         // a rollback always has a target
        if (Move is { Started: false } mv) return committed == Step ? new MoveNow(mv) : Commit();
        if (Add is { Started: false } a && (a.AtStep < 0 || Step >= a.AtStep) && tokens.Count > 0 && outages.Count == 0)
        {
            if (committed != Step) return Commit();
            var counts = Enumerable.Range(0, tokens.Values.Max(t => t.Length)).Select(e => tokens.Values.Sum(t => e < t.Length ? t[e] : 0)).ToList();
            return new AddNow(ExpertGrowth.Sources(counts, a.Count), counts);
        }
        if (nodeKill() is { } kill) return new KillNodeNow(kill.node, kill.fired);
        if (Step >= End && outages.Count > 0 && !StopRequested) return new WaitForExperts(Down);
        if ((StopRequested || Step >= End) && committed != Step) return Commit();
        if (Step >= End || StopRequested) return new Finish(Step, Add);
        return new Train(new TrainStep(Step, Generation, Down));
    }

    /// <summary>The move starts: a drain takes the experts on its node now, at the boundary. A new generation.</summary>
    public PlannedMove StartMove(IReadOnlyList<int> drained)
    {
        Move = Move! with { Started = true, Experts = Move.LeavingNode is null ? Move.Experts : drained };
        Generation++;
        return Move;
    }

    /// <summary>The add starts (its commit grows off the supervisor's thread). A new generation.</summary>
    public int StartAdd()
    {
        Add = Add! with { Started = true };
        return ++Generation;
    }

    /// <summary>The add is journaled with these sources: it completes at the next restore.</summary>
    public void AddJournaled(IReadOnlyList<int> sources)
    {
        Add = Add! with { Sources = sources };
        tokens.Clear();                                                   // the next add counts traffic with these experts
        Generation++;
    }

    /// <summary>Growing the commit failed: nothing was added. The add is dropped (its requester is told).</summary>
    public PendingAdd? AddFailed()
    {
        var a = Add;
        Add = null;
        return a;
    }

    /// <summary>The run finished: a pending add will never happen.</summary>
    public void Finished() => Add = null;

    // ---- events ----------------------------------------------------------------------------------------------------

    /// <summary>A step completed (the current one): true when a commit is due after it.</summary>
    public bool StepCompleted(StepCompleted m, int experts)
    {
        if (m.Step > lastFailedStep) FailuresInARow = 0;
        foreach (var (e, x) in exact.Where(kv => kv.Value.Step == m.Step).ToList())
        {
            exactDone.Add(new RecoveryRecord(x.Step, OwnerRegistry.ExpertId(e), "expert-exact", x.Error, x.Step, 0,
                System.Diagnostics.Stopwatch.GetElapsedTime(x.Since).TotalMilliseconds, 0));
            exact.Remove(e);
        }
        tokens[m.Step] = Enumerable.Range(0, experts).Select(e => m.Routing.Where(r => r.Expert == e).Sum(r => r.Tokens)).ToArray();
        foreach (var old in tokens.Keys.Where(k => k <= m.Step - checkpointEvery || k > m.Step).ToList()) tokens.Remove(old);
        foreach (var (e, o) in outages.ToList())
        {
            outages[e] = o with { Rerouted = o.Rerouted + m.ReroutedImages };
            // a sit-out ends at its step, or with the run: a straggler is alive and in the cuts, and sends no ExpertRecovered
            if (o.Kind == OutageKind.Straggler && m.Step + 1 >= Math.Min(o.Until, End)) rejoining.TryAdd(e, m.Step + 1);
        }
        Step = m.Step + 1;
        return Step % checkpointEvery == 0 || Step == End;
    }

    /// <summary>A recovering expert restored its snapshot of <paramref name="step"/>: it rejoins at the next boundary.</summary>
    public bool Recovered(int expert, long step)
    {
        if (!outages.ContainsKey(expert)) return false;
        rejoining[expert] = step;
        return true;
    }

    /// <summary>The trainer abandoned this step: true when it is to be retried now (experts were just left behind, or
    /// every expert-exact copy is back; else the retry waits for them).</summary>
    public bool Retry(StepFailed m)
    {
        if (Failure is not null || m.Step != Step || !retry) return false;
        if (exact.Values.Any(x => !x.Restored)) { failedAttempt = true; return false; }
        retry = false;
        return true;
    }

    /// <summary>An expert restarted under expert-exact put back its in-memory copy of the start of
    /// <paramref name="copyStep"/> (−1: none). <see cref="RetryStep"/>: every copy is back and the trainer has abandoned the
    /// attempt, so retry the step; <see cref="RollBack"/>: the copy is not the step's start, global-rollback takes over
    /// (folded in, with the reason); else nothing yet.</summary>
    public Decision CopyRestored(int expert, long copyStep)
    {
        if (!exact.TryGetValue(expert, out var x) || x.Restored) return new Ignore();
        if (copyStep != x.Step)
        {
            var why = $"expert-exact: {OwnerRegistry.ExpertId(expert)} had {(copyStep < 0 ? "no in-memory copy" : $"an in-memory copy of step {copyStep}")}, not one of step {x.Step}";
            FailuresInARow++;                                            // not a new failure, but the rollback's backoff counts it
            var d = new RollBack(backoff.Delay(FailuresInARow), why);
            Fold(d, new Fault([OwnerRegistry.ExpertId(expert)], FaultKind.Failed, x.Error, x.Step, x.Phase), x.Since);
            return d;
        }
        exact[expert] = x with { Restored = true };
        if (!failedAttempt || exact.Values.Any(y => !y.Restored)) return new Ignore();
        failedAttempt = retry = false;
        return new RetryStep();
    }

    /// <summary>What to do about a fault: a slow expert sits out (not a failure); any other fault counts towards
    /// max-failures and goes to the policies in order. The decision is folded in here.</summary>
    public Decision Decide(Fault f, bool training)
    {
        if (f.Kind == FaultKind.Slow && Failure is not null) return new Ignore();
        if (f.Kind != FaultKind.Slow)
        {
            FailuresInARow++;
            lastFailedStep = Math.Max(lastFailedStep, f.Step);
            if (FailuresInARow >= backoff.MaxFailures)
                return new StopRun($"{string.Join(",", f.Owners)} failed at step {f.Step}: {f.Error}. That is failure {FailuresInARow} in a row (moce.actors.max-failures = {backoff.MaxFailures})");
        }
        var context = new FaultContext(training && Failure is null, FailuresInARow);
        var d = policies.Select(p => p.Decide(f, context)).First(d => d is not null)!;
        Fold(d, f, System.Diagnostics.Stopwatch.GetTimestamp());
        return d;
    }

    private void Fold(Decision d, Fault f, long now)
    {
        switch (d)
        {
            case TakeDown t:
                foreach (var e in t.Experts) outages.TryAdd(e, new Outage(OutageKind.Failed, Step, f.Error, now));
                Generation++;                                            // the attempt's replies are stale; the trainer reports StepFailed
                retry = true;
                break;
            case SitOut s:
                foreach (var e in s.Experts) outages.TryAdd(e, new Outage(OutageKind.Straggler, Step, f.Error, now, Until: s.Until));
                Generation++;
                retry = true;
                break;
            case RetryFromCopy r:
                foreach (var e in r.Experts) exact[e] = new ExactRecovery(Step, f.Phase, f.Error, now);
                Generation++;                                            // the attempt's replies are stale; the trainer reports StepFailed
                retry = true;
                failedAttempt = false;
                break;
            case ReplayFromCopy r:                                       // the trainer asks their update again, in this attempt
                foreach (var e in r.Experts) exact[e] = new ExactRecovery(Step, f.Phase, f.Error, now);
                break;
            case RollBack rb:
                // an expert-exact recovery under way that a rollback overtakes (its replay failed, the trainer failed) is
                // one the policy could not finish: the record says so
                string fallback = rb.Fallback.Length > 0 || exact.Count == 0 ? rb.Fallback
                    : $"expert-exact could not finish recovering {string.Join(",", exact.Keys.Order().Select(OwnerRegistry.ExpertId))}: {string.Join(",", f.Owners)} failed ({f.Error})";
                exact.Clear();
                failedAttempt = false;
                Failure ??= new Handling(string.Join(",", f.Owners), f.Error, Step, now, fallback);
                if (Add is { Started: true, Journaled: false }) Add = Add with { Started = false };   // taken again after the rollback
                Generation++;
                retry = false;
                break;
        }
    }

    /// <summary>Every owner restored commit <paramref name="step"/>: what that completed. The token window becomes the
    /// commit's (when it has one), so that a fresh process and a long-lived one split the same experts at an add.</summary>
    public RestoreOutcome Restored(long step, IReadOnlyList<RoutedTokens>? window = null)
    {
        Step = step;
        if (window is not null)
        {
            tokens.Clear();
            foreach (var t in window) tokens[t.Step] = [.. t.Tokens];
        }
        var added = Add is { Journaled: true } ? Add : null;
        var moved = Move is { Started: true } ? Move : null;
        if (added is not null) Add = null;
        if (moved is not null) Move = null;
        var f = Failure;
        Failure = null;
        var record = f is null ? null : new RecoveryRecord(f.Step, f.Owner, "global-rollback", f.Error, step, f.Step - step,
            System.Diagnostics.Stopwatch.GetElapsedTime(f.Since).TotalMilliseconds, 0, Fallback: f.Fallback);
        return new RestoreOutcome(added, moved, record);
    }
}
