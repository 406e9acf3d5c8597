using MoCE.Actors.Messages;
using MoCE.Core.Checkpoints;

namespace MoCE.Actors;

/// <summary>The supervisor's journaled state, as a plain type that tests drive without actors: <see cref="Apply(object)"/>
/// folds in a journaled event (on recovery and after each persist). What is not journaled (the step, the failure being
/// handled, moves, adds, outages) is <see cref="RunState"/>; the actor only persists, applies and carries out decisions.</summary>
public sealed class SupervisorState(int configuredExperts)
{
    private readonly List<CheckpointCommitted> commits = [];
    private readonly List<RecoveryRecord> recoveries = [];
    private readonly List<ExpertsAdded> added = [];
    private readonly List<ChaosFired> chaos = [];

    /// <summary>How many times a supervisor of this run started (the last <see cref="Incarnation"/>).</summary>
    public int Incarnations { get; private set; }

    /// <summary>Injected faults that fired (a chaos schedule), oldest first.</summary>
    public IReadOnlyList<ChaosFired> Chaos => chaos;

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

    /// <summary>Folds in a journaled event.</summary>
    public void Apply(object e)
    {
        switch (e)
        {
            case CheckpointCommitted c: commits.Add(c); break;
            case RecoveryRecord r: recoveries.Add(r); break;
            case ChaosFired c: chaos.Add(c); break;
            case Incarnation i: Incarnations = i.Number; break;
            case ExpertsAdded a:
                if (a.From != Experts) throw new InvalidDataException($"the add at step {a.Step} starts at expert {a.From}, but the run has {Experts}");
                added.Add(a);
                commits.Add(a.Commit);
                break;
            default: throw new ArgumentException($"{e.GetType().Name} is not a supervisor event");
        }
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

    /// <summary>Why no restore is possible: no commit verifies (since the last add).</summary>
    public string NothingVerifies() => $"no committed checkpoint of the {commits.Count} in the journal verifies" + (added.Count > 0
        ? $" since the last add of experts (step {added[^1].Step}; older commits lack the added experts)" : "") + "; cannot restore";

    /// <summary>The error a run stops with: why, and what of its commits stays for a resume.</summary>
    public string Stopping(string why, bool commitsUsable) => $"{why}. Stopping; " + (!commitsUsable ? "see the warnings above for each commit's bad file"
        : LastCommit is not { } last ? "nothing was committed yet" : $"the last commit ({last.Step}) is intact: fix the cause and run again to resume from it") + ".";

    /// <summary>The last <paramref name="keep"/> commits: the ones whose files the store keeps.</summary>
    public IReadOnlyList<CheckpointCommitted> Kept(int keep) => [.. commits.TakeLast(keep)];

    /// <summary>The files the last <paramref name="keep"/> commits name: what the store must keep.</summary>
    public IEnumerable<CheckpointRef> KeptParts(int keep) => Kept(keep).SelectMany(c => c.Manifest)
        .Concat(Enumerable.Range(configuredExperts, Experts - configuredExperts).Select(e => BirthOf(e)!));   // what added experts start from
}
