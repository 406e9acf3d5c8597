using Akka.Actor;
using Akka.Configuration;
using Akka.Persistence.Sql;
using Microsoft.Data.Sqlite;
using MoCE.Actors.Messages;

namespace MoCE.Actors;

/// <summary>Hosts one run's actor system: the journal and snapshot store in SQLite inside the run directory (WAL
/// mode), the supervisor with its owners, and the step loop until the target step. Killing the process at any
/// moment loses at most the steps after the last commit; starting again resumes from it.</summary>
public static class ActorEngine
{
    public static string AkkaConfPath => Path.Combine(AppContext.BaseDirectory, "hocon", "akka.conf");

    /// <summary>The actor system's configuration: <paramref name="user"/> (the run's merged HOCON: `--config` files and
    /// `-o akka.*` overrides) over hocon/akka.conf over Akka.Persistence.Sql's own defaults.</summary>
    public static Config AkkaConfig(Config? user = null) =>
        (user ?? Akka.Configuration.Config.Empty)
            .WithFallback(ConfigurationFactory.ParseString(File.ReadAllText(AkkaConfPath)))
            .WithFallback(SqlPersistence.DefaultConfiguration);

    /// <summary><see cref="AkkaConfig"/> for one run: unless the user's configuration names another journal (PostgreSQL
    /// for a cluster), the journal and snapshot store are SQLite in the run directory, journal.db, in WAL mode.</summary>
    public static Config Config(string runDir, Config? user = null)
    {
        var config = AkkaConfig(user);
        var provider = config.GetString("akka.persistence.journal.sql.provider-name");
        if (provider.StartsWith("PostgreSQL", StringComparison.Ordinal))
            return WithConnectionString(config, Environment.GetEnvironmentVariable(PostgresVariable) ?? "", PostgresVariable);
        if (provider != "SQLite.MS" || runDir.Length == 0 || !string.IsNullOrEmpty(config.GetString("akka.persistence.journal.sql.connection-string")))
            return config;                                    // no run directory (an experts-only node): no SQLite file either
        var db = Path.Combine(runDir, "journal.db");
        using (var c = new SqliteConnection($"Data Source={db}"))
        {
            c.Open();
            using var cmd = c.CreateCommand();
            cmd.CommandText = "PRAGMA journal_mode=WAL;";   // persistent in the file: one writer, concurrent readers
            cmd.ExecuteScalar();
        }
        var conn = $"Data Source={db}";
        return ConfigurationFactory.ParseString($"""
            akka.persistence.journal.sql.connection-string = "{conn}"
            akka.persistence.snapshot-store.sql.connection-string = "{conn}"
            """).WithFallback(config);
    }

    /// <summary>Where a PostgreSQL journal's connection string comes from when the configuration leaves it empty.</summary>
    public const string PostgresVariable = "MOCE_POSTGRES";

    /// <summary>Fills empty journal and snapshot-store connection strings from <paramref name="fallback"/>; with neither,
    /// a clear error (never the string itself: it may hold a password).</summary>
    private static Config WithConnectionString(Config config, string fallback, string source)
    {
        foreach (var store in new[] { "journal", "snapshot-store" })
        {
            var key = $"akka.persistence.{store}.sql.connection-string";
            if (!string.IsNullOrEmpty(config.GetString(key))) continue;
            if (fallback.Length == 0)
                throw new MoCE.Core.Config.ConfigException(key, $"is empty and ${source} is not set: give the PostgreSQL connection string in one of them (bash build/postgres.sh prints one)");
            config = ConfigurationFactory.ParseString($"{key} = {System.Text.Json.JsonSerializer.Serialize(fallback)}").WithFallback(config);
        }
        return config;
    }

    /// <summary>Trains until <paramref name="until"/>, calling the hooks for each completed step and commit.
    /// Cancelling commits a checkpoint at the current step first. <paramref name="timeout"/> bounds the whole run
    /// (tests: a recovery bug fails with <see cref="TimeoutException"/> instead of hanging); null waits for the run.
    /// <paramref name="started"/> gets the supervisor once the run is started, for a caller that sends it commands
    /// (<see cref="AddExperts"/>, say).</summary>
    public static RunFinished Run(ActorContextSetup setup, string runDir, long until, long checkpointEvery, int keep,
                                  SupervisorHooks hooks, CancellationToken ct = default, Config? akka = null, TimeSpan? timeout = null,
                                  Action<IActorRef>? started = null)
    {
        using var system = ActorSystem.Create("moce", Config(runDir, akka));
        try
        {
            // the single process is a one-node case of the cluster: its experts live on its own expert host
            system.ActorOf(ExpertHostActor.Props(new NodeResources([setup.Device.ToString()], setup.OwnerThreads, setup.Chaos, setup.Threads)), ExpertHostActor.Name);
            var supervisor = system.ActorOf(SupervisorActor.Restartable(setup, hooks, checkpointEvery, keep), "run");
            // no sender: a cancel can come from a hook on the supervisor's own thread, and the backoff supervisor hands
            // messages from its child to its own parent, not back to the child
            using var reg = ct.Register(() => supervisor.Tell(new SupervisorActor.StopAndCommit(), ActorRefs.NoSender));
            // Start, again every 2 s: a supervisor started again (its journal refused a write) learns who waits for the end
            var done = new TaskCompletionSource<RunFinished>(TaskCreationOptions.RunContinuationsAsynchronously);
            system.ActorOf(RunClientActor.Props(supervisor, until, TimeSpan.FromSeconds(2), done), "run-client");
            var finished = done.Task;
            started?.Invoke(supervisor);
            var died = supervisor.WatchAsync();
            var bound = Task.Delay(timeout ?? Timeout.InfiniteTimeSpan, CancellationToken.None);
            var first = Task.WhenAny(finished, died, bound).GetAwaiter().GetResult();
            if (first == died)
                throw new InvalidOperationException("the supervisor stopped before the run finished; see the log for its error");
            if (first == bound)
                throw new TimeoutException($"the run did not reach step {until} within {timeout!.Value.TotalSeconds:F0} s");
            return finished.GetAwaiter().GetResult();
        }
        finally
        {
            system.Terminate().Wait(TimeSpan.FromSeconds(30));
            setup.Threads.JoinAll(TimeSpan.FromSeconds(30));
        }
    }
}
