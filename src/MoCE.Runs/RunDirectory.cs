using Akka.Configuration;
using MoCE.Runs.Configuration;
using MoCE.Core.Config;
using Serilog;

namespace MoCE.Runs;

/// <summary>A run directory holds everything of one run: config.conf (the resolved config it was started with),
/// logs/, and one folder per phase (pretrain/: checkpoints, metrics.csv, summary.json). Running a command again
/// on the same directory resumes it; a key that shapes a phase that has begun then comes from the run, and a
/// conflicting flag is an error that names the key.</summary>
public sealed class RunDirectory
{
    public string Root { get; }
    public string ConfigPath => Path.Combine(Root, "config.conf");
    public string LogPath => Path.Combine(Root, "logs", "moce.log");
    public string Phase(string name) => Directory.CreateDirectory(Path.Combine(Root, name)).FullName;

    /// <summary>The run's id, part of every persistence id of its actors, so one shared journal (PostgreSQL) holds many
    /// runs without collisions. Made when the run is created and kept in run.id. A run created before run ids existed
    /// keeps the empty id, so the persistence ids in its journal stay what they were and it still resumes.</summary>
    public string Id { get; }

    public RunDirectory(string root)
    {
        Root = Path.GetFullPath(root);
        bool existing = File.Exists(ConfigPath);
        Directory.CreateDirectory(Path.Combine(Root, "logs"));
        var idPath = Path.Combine(Root, "run.id");
        if (!File.Exists(idPath))
        {
            // created once: of processes opening a new run at once (the coordinators of a cluster), one writes it
            try
            {
                using var f = new FileStream(idPath, FileMode.CreateNew, FileAccess.Write);
                f.Write(System.Text.Encoding.ASCII.GetBytes(existing ? "" : Guid.NewGuid().ToString("N")[..12]));
            }
            catch (IOException) when (File.Exists(idPath)) { }
        }
        Id = File.ReadAllText(idPath).Trim();
    }

    /// <summary>The persistence-id prefix of one phase's actors: "{run id}-{phase}", or just the phase for a run
    /// made before run ids existed.</summary>
    public string ActorRunId(string phase) => Id.Length == 0 ? phase : $"{Id}-{phase}";

    /// <summary>A phase has started once its folder holds anything (a checkpoint, metrics, a log).</summary>
    public bool Started(string phase) => Directory.Exists(Path.Combine(Root, phase)) && Directory.EnumerateFileSystemEntries(Path.Combine(Root, phase)).Any();

    /// <summary>Records the config of a new run, or checks a resumed run's config against it: a key may change until a
    /// phase it shapes has started (<see cref="MoceConfig.PhasesShapedBy"/>), and is frozen from then on. A key the
    /// recorded config lacks (the run was made by a version without it) is accepted at its default, which is by rule
    /// the behaviour before the key existed.</summary>
    public bool AdoptConfig(Config resolved, ILogger log)
    {
        if (!File.Exists(ConfigPath))
        {
            Write(resolved);
            return false;
        }
        var recorded = ConfigLoader.ParseFile(ConfigPath);
        var defaults = ConfigLoader.Defaults();
        foreach (var (key, was, now) in ConfigLoader.Diff(recorded, resolved))
        {
            // a key this run's version did not have, at its default: every new key defaults to the old behaviour
            if (was is null && defaults.HasPath(key) && HoconTree.Render(defaults.GetValue(key)) == now)
            {
                log.Information("{Key} = {Now}: newer than this run's configuration, at its default", key, now);
                continue;
            }
            var phases = MoceConfig.PhasesShapedBy(key, recorded);
            if (phases?.FirstOrDefault(Started) is { } started)
                throw new ConfigException(key, $"this run ({Root}) was started with {was ?? "(unset)"}, now {now ?? "(unset)"}, and its {started} phase, " +
                                                "which this key shapes, has begun; use the run's value or start a new run with --run");
            log.Warning("Resuming with {Key} changed from {Was} to {Now}{Why}", key, was ?? "(unset)", now ?? "(unset)",
                phases is null ? "" : $" (no phase it shapes has begun: {string.Join(", ", phases)})");
        }
        Write(resolved);
        return true;
    }

    /// <summary>Atomically: several processes (a cluster's coordinators) may open the run at once.</summary>
    private void Write(Config resolved)
    {
        var tmp = $"{ConfigPath}.{Environment.ProcessId}.tmp";
        File.WriteAllText(tmp, ConfigLoader.Render(resolved));
        File.Move(tmp, ConfigPath, overwrite: true);
    }
}
