using Akka.Configuration;
using Microsoft.Data.Sqlite;
using Npgsql;

namespace MoCE.Actors;

/// <summary>A chaos event's real journal failure: a trigger on the journal table makes the database itself refuse
/// every insert (SQLite: RAISE(ABORT); PostgreSQL: RAISE EXCEPTION) until it is dropped again after the period.
/// Akka.Persistence then fails the write as it would for a database that is down: the supervisor stops, is started
/// again after a backoff, recovers the journal without the refused commit and resumes from the last one that holds.</summary>
public static class JournalSabotage
{
    private const string Trigger = "moce_chaos_refuse_writes";

    /// <summary>Installs the trigger now; drops it after <paramref name="period"/> (on the thread pool).</summary>
    public static void Refuse(Config akka, TimeSpan period, Action<string> log)
    {
        var provider = akka.GetString("akka.persistence.journal.sql.provider-name");
        var cs = akka.GetString("akka.persistence.journal.sql.connection-string");
        Execute(provider, cs, provider.StartsWith("SQLite", StringComparison.Ordinal)
            ? $"CREATE TRIGGER IF NOT EXISTS {Trigger} BEFORE INSERT ON journal BEGIN SELECT RAISE(ABORT, 'chaos: the journal refuses writes'); END;"
            : $"""
               CREATE OR REPLACE FUNCTION {Trigger}() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION 'chaos: the journal refuses writes'; END; $$ LANGUAGE plpgsql;
               DROP TRIGGER IF EXISTS {Trigger} ON journal;
               CREATE TRIGGER {Trigger} BEFORE INSERT ON journal FOR EACH ROW EXECUTE FUNCTION {Trigger}();
               """);
        log($"the journal database refuses writes for {period.TotalMilliseconds:F0} ms");
        Task.Delay(period).ContinueWith(_ =>
        {
            Execute(provider, cs, provider.StartsWith("SQLite", StringComparison.Ordinal)
                ? $"DROP TRIGGER IF EXISTS {Trigger};" : $"DROP TRIGGER IF EXISTS {Trigger} ON journal;");
            log("the journal database accepts writes again");
        }, TaskScheduler.Default);
    }

    private static void Execute(string provider, string connectionString, string sql)
    {
        if (provider.StartsWith("SQLite", StringComparison.Ordinal))
        {
            using var c = new SqliteConnection(connectionString);
            c.Open();
            using var cmd = c.CreateCommand();
            cmd.CommandText = sql;
            cmd.ExecuteNonQuery();
        }
        else if (provider.StartsWith("PostgreSQL", StringComparison.Ordinal))
        {
            using var c = new NpgsqlConnection(connectionString);
            c.Open();
            using var cmd = new NpgsqlCommand(sql, c);
            cmd.ExecuteNonQuery();
        }
        else throw new NotSupportedException($"journal-refuses: provider {provider} is not supported (SQLite or PostgreSQL)");
    }
}
