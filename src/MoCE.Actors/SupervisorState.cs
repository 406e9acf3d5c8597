using MoCE.Actors.Messages;
using MoCE.Core.Checkpoints;

namespace MoCE.Actors;

/// <summary>Why an expert is out of the steps while the run goes on: it failed (expert-local: it comes back from its own
/// snapshot), or the router's straggler timeout gave up on it (it sits out, alive, and is in the cuts).</summary>
public enum OutageKind { Failed, Straggler }

/// <summary>An expert's outage: its kind, the step it began, the error, its clock, and the image routings that went to
/// another expert meanwhile. Decisions read the kind, never the error's text.</summary>
public sealed record Outage(OutageKind Kind, long Step, string Error, System.Diagnostics.Stopwatch Clock, int Rerouted = 0);

/// <summary>The supervisor's journaled state and its failure decisions, as a plain type that tests drive without
/// actors: <see cref="Apply(object)"/> folds in a journaled event (on recovery and after each persist), and
/// <see cref="Decide"/> turns an owner's failure into what the supervisor must do. The actor only persists, applies
/// and carries out decisions.</summary>
public sealed class SupervisorState(RecoveryPolicy policy, RestartBackoff backoff, int configuredExperts)
{
    private readonly List<CheckpointCommitted> commits = [];
    private readonly List<RecoveryRecord> recoveries = [];
    private readonly List<ExpertsAdded> added = [];
    private readonly List<ChaosFired> chaos = [];

    /// <summary>Injected faults that fired (a chaos schedule), oldest first.</summary>
    public IReadOnlyList<ChaosFired> Chaos => chaos;
    private long lastFailedStep = -1;

    /// <summary>The run's experts E: the configured ones and every add in the journal. Configuration gives only the start.</summary>
    public int Experts => configuredExperts + added.Sum(a => a.Sources.Count);
    /// <summary>The adds, oldest first.</summary>
    public IReadOnlyList<ExpertsAdded> Added => added;
    /// <summary>Each added expert's first part (in the commit of its add): what it is created from, before a restore.</summary>
    public CheckpointRef? BirthOf(int expert) =>
        added.Where(a => expert >= a.From && expert < a.From + a.Sources.Count)
            .Select(a => a.Commit.Manifest.Single(r => r.Owner == Placement.OwnerRegistry.ExpertId(expert))).FirstOrDefault();

    /// <summary>Committed checkpoints, oldest first. Only these count.</summary>
    public IReadOnlyList<CheckpointCommitted> Commits => commits;
    public IReadOnlyList<RecoveryRecord> Recoveries => recoveries;
    public CheckpointCommitted? LastCommit => commits.Count == 0 ? null : commits[^1];
    /// <summary>Failures since a step last completed past the latest failed one: what the backoff grows with.</summary>
    public int FailuresInARow { get; private set; }

    /// <summary>Folds in a journaled event.</summary>
    public void Apply(object e)
    {
        switch (e)
        {
            case CheckpointCommitted c: commits.Add(c); break;
            case RecoveryRecord r: recoveries.Add(r); break;
            case ChaosFired c: chaos.Add(c); break;
            case ExpertsAdded a:
                if (a.From != Experts) throw new InvalidDataException($"the add at step {a.Step} starts at expert {a.From}, but the run has {Experts}");
                added.Add(a);
                commits.Add(a.Commit);
                break;
            default: throw new ArgumentException($"{e.GetType().Name} is not a supervisor event");
        }
    }

    /// <summary>Step <paramref name="step"/> completed: once a step after the last failed one completes, the next failure
    /// starts a new count.</summary>
    public void StepCompleted(long step)
    {
        if (step > lastFailedStep) FailuresInARow = 0;
    }

    /// <summary>What to do about a failure.</summary>
    public abstract record Decision;
    /// <summary>Failures keep coming: stop the run with this reason; the last commit stays for a resume.</summary>
    public sealed record StopRun(string Reason) : Decision;
    /// <summary>expert-local: only this expert goes back (to its own snapshot); training goes on without it.</summary>
    public sealed record TakeExpertDown(int Expert) : Decision;
    /// <summary>global-rollback: every owner restores the newest verified commit after this backoff, then replays.</summary>
    public sealed record RollBack(TimeSpan Delay) : Decision;

    /// <summary>Owner <paramref name="owner"/> failed while the run was at <paramref name="step"/>.
    /// <paramref name="rollingBack"/>: a global rollback is already under way (then every failure joins it).</summary>
    public Decision Decide(string owner, string error, long step, bool rollingBack)
    {
        FailuresInARow++;
        lastFailedStep = Math.Max(lastFailedStep, step);
        if (FailuresInARow >= backoff.MaxFailures)
            return new StopRun($"{owner} failed at step {step}: {error}. That is failure {FailuresInARow} in a row (moce.actors.max-failures = {backoff.MaxFailures})");
        if (policy == RecoveryPolicy.ExpertLocal && !rollingBack && ExpertIndex(owner) is { } e)
            return new TakeExpertDown(e);
        return new RollBack(backoff.Delay(FailuresInARow));
    }

    /// <summary>The expert index of an owner named "expert-N", else null.</summary>
    public static int? ExpertIndex(string owner) =>
        owner.StartsWith("expert-", StringComparison.Ordinal) && int.TryParse(owner.AsSpan("expert-".Length), out var e) ? e : null;

    /// <summary>The newest commit whose every part verifies, falling back past corrupt or missing files (each reported
    /// through <paramref name="unusable"/>), but never past the last add: a commit from before it lacks the added
    /// experts (restoring it would silently undo the operator's add). Null when none does.</summary>
    public CheckpointCommitted? RestoreTarget(Action<CheckpointRef> verify, Action<CheckpointCommitted, CheckpointCorruptException> unusable)
    {
        for (int i = commits.Count - 1; i >= 0; i--)
        {
            if (commits[i].Manifest.Count(r => ExpertIndex(r.Owner) is not null) != Experts) break;
            try
            {
                foreach (var r in commits[i].Manifest) verify(r);
                return commits[i];
            }
            catch (CheckpointCorruptException e) { unusable(commits[i], e); }
        }
        return null;
    }

    /// <summary>The files the last <paramref name="keep"/> commits name: what the store must keep.</summary>
    public IEnumerable<CheckpointRef> KeptParts(int keep) => commits.TakeLast(keep).SelectMany(c => c.Manifest)
        .Concat(Enumerable.Range(configuredExperts, Experts - configuredExperts).Select(e => BirthOf(e)!));   // what added experts start from
}
