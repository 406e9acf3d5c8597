using System.Text.Json;
using MoCE.Actors.Messages;
using MoCE.Core.Checkpoints;

namespace MoCE.Cli.Commands;

/// <summary><c>moce status RUN</c>: what a run directory holds, from its files: each phase's committed step and last
/// checkpoint, the owners (trainer, router, experts) in the last commit with their files, and recent recoveries.
/// It reads; it never changes the run.</summary>
public static class StatusCommand
{
    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept();
        var root = Path.GetFullPath(cli.RunDir);
        if (!File.Exists(Path.Combine(root, "config.conf")))
            throw new Core.Config.ConfigException("RUN", $"{root} is not a run directory (no config.conf)");
        Console.WriteLine($"run {root}");
        foreach (var phase in Directory.GetDirectories(root).Select(Path.GetFileName).Order())
        {
            var dir = Path.Combine(root, phase!);
            var ckpt = Path.Combine(dir, "checkpoints");
            if (!File.Exists(Path.Combine(ckpt, "commits.json")))
            {
                if (phase is "cluster" or "eval" or "customize") Console.WriteLine($"  {phase}: {(Directory.EnumerateFileSystemEntries(dir).Any() ? "done" : "empty")}");
                continue;
            }
            var store = new CheckpointStore(ckpt);
            var commits = new CommitLog(store).Commits;
            var last = commits[^1];
            // the actor engine commits one part per owner (its journal may be the run's SQLite file or PostgreSQL)
            string engine = last.Parts.Any(p => p.Owner == MoCE.Actors.RouterActor.Name) ? "actors" : "local";
            // E from the commit, not the configuration: experts may have been added while it trained
            int experts = last.Parts.Count(p => MoCE.Actors.SupervisorState.ExpertIndex(p.Owner) is not null);
            Console.WriteLine($"  {phase} ({engine}): committed step {last.Step} at {last.CommittedUtc:u}{(experts > 0 ? $" with {experts} experts" : "")}; {commits.Count} commits kept ({string.Join(", ", commits.Select(c => c.Step))})");
            foreach (var part in last.Parts.OrderBy(p => p.Owner, StringComparer.Ordinal))
            {
                string state;
                try { store.Verify(part); state = "ok"; }
                catch (CheckpointCorruptException e) { state = "CORRUPT: " + e.Message; }
                Console.WriteLine($"    {part.Owner,-10} step {part.Step}  {part.File}  {state}");
            }
            var chaosFile = Path.Combine(dir, "chaos.json");
            if (File.Exists(chaosFile))
            {
                var fired = JsonSerializer.Deserialize<List<ChaosFired>>(File.ReadAllText(chaosFile)) ?? [];
                Console.WriteLine($"    injected faults: {fired.Count}");
                foreach (var c in fired.TakeLast(10)) Console.WriteLine($"      step {c.Step}: {c.Owner} {c.Kind}: {c.Detail}");
            }
            var rec = Path.Combine(dir, "recoveries.json");
            if (File.Exists(rec))
            {
                var list = JsonSerializer.Deserialize<List<RecoveryRecord>>(File.ReadAllText(rec)) ?? [];
                Console.WriteLine($"    recoveries: {list.Count}");
                foreach (var r in list.TakeLast(5))
                    Console.WriteLine(r.Policy switch
                    {
                        "expert-local" => $"      step {r.Step}: {r.Owner} failed ({r.Error}); expert-local from its snapshot of step {r.RestoredStep}, down {r.DetectionToRecoveredMs:F0} ms, missed {r.StepsMissed} steps, {r.ReroutedImages} image routings rerouted",
                        "expert-exact" => $"      step {r.Step}: {r.Owner} failed ({r.Error}); expert-exact from its in-memory copy of the step's start, nothing else went back, recovered in {r.DetectionToRecoveredMs:F0} ms",
                        _ => $"      step {r.Step}: {r.Owner} failed ({r.Error}); {r.Policy} to commit {r.RestoredStep}, {r.StepsReplayed} steps replayed, recovered in {r.DetectionToRecoveredMs:F0} ms" +
                             (r.Fallback.Length > 0 ? $" (a fallback: {r.Fallback})" : ""),
                    });
            }
        }
        return 0;
    }
}
