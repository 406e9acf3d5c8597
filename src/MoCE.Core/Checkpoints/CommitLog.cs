using System.Text.Json;

namespace MoCE.Core.Checkpoints;

/// <summary>A consistent checkpoint: every part of step <c>Step</c>. Only a committed checkpoint counts.</summary>
public sealed record CheckpointCommit(long Step, IReadOnlyList<CheckpointRef> Parts, DateTime CommittedUtc);

/// <summary>The reference trainer's commit log: <c>commits.json</c> in the store, rewritten atomically after all
/// parts of a checkpoint are on disk (the marker written last, as in torchtitan). The actor runtime keeps the
/// same records in its journal, and mirrors the ones it keeps here (<see cref="Mirror"/>) for the later phases.</summary>
public sealed class CommitLog
{
    private readonly CheckpointStore store;
    private readonly string path;
    private readonly List<CheckpointCommit> commits;

    public CommitLog(CheckpointStore store)
    {
        this.store = store;
        path = Path.Combine(store.Directory, "commits.json");
        commits = File.Exists(path)
            ? JsonSerializer.Deserialize<List<CheckpointCommit>>(File.ReadAllText(path))
              ?? throw new InvalidDataException($"{path}: empty commit log")
            : [];
    }

    public IReadOnlyList<CheckpointCommit> Commits => commits;

    /// <summary>Records a commit, then keeps only the newest <paramref name="keep"/> and deletes the other files.</summary>
    public void Commit(CheckpointCommit commit, int keep)
    {
        commits.RemoveAll(c => c.Step == commit.Step);
        commits.Add(commit);
        commits.Sort((a, b) => a.Step.CompareTo(b.Step));
        if (commits.Count > keep) commits.RemoveRange(0, commits.Count - keep);
        Write();
        store.DeleteAllExcept(commits.SelectMany(c => c.Parts));
    }

    /// <summary>Becomes exactly <paramref name="kept"/>, the commits that the component owning retention keeps (the actor
    /// supervisor's journal), before that component deletes any other file: so the log never names a deleted file,
    /// wherever a process is killed. A commit already listed keeps its time.</summary>
    public void Mirror(IEnumerable<CheckpointCommit> kept)
    {
        var next = kept.Select(c => commits.FirstOrDefault(o => o.Step == c.Step && o.Parts.SequenceEqual(c.Parts)) ?? c).ToList();
        commits.Clear();
        commits.AddRange(next);
        Write();
    }

    /// <summary>commits.json, atomically: a temporary in the store's own ".tmp-" namespace (so that pruning removes one a
    /// crash left behind), flushed, renamed.</summary>
    private void Write() => DurableFile.Write(Path.Combine(store.Directory, $".tmp-commits-{Guid.NewGuid():N}"), f =>
    {
        JsonSerializer.Serialize(f, commits, new JsonSerializerOptions { WriteIndented = true });
        return 0;
    }, _ => path);

    /// <summary>The newest commit whose files all verify. A commit that fails verification is reported through
    /// <paramref name="onCorrupt"/> and skipped, falling back to the previous one.</summary>
    public CheckpointCommit? LatestValid(Action<CheckpointCommit, CheckpointCorruptException> onCorrupt)
    {
        for (int i = commits.Count - 1; i >= 0; i--)
        {
            try
            {
                foreach (var p in commits[i].Parts) store.Verify(p);
                return commits[i];
            }
            catch (CheckpointCorruptException e) { onCorrupt(commits[i], e); }
        }
        return null;
    }
}
