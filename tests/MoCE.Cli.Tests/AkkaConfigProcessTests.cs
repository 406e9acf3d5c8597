using Npgsql;
using static MoCE.Cli.Tests.PretrainProcessTests;

namespace MoCE.Cli.Tests;

/// <summary>`--config` files and `-o akka.*` reach the actor system of the real `moce train`: the PostgreSQL journal
/// preset moves the run's journal into the database, under the run's own persistence ids.</summary>
public class AkkaConfigProcessTests
{
    private static readonly string[] Baby =
    [
        .. MoCE.Cli.Tests.Baby.Model,
        "-o", "pretrain.steps=10", "-o", "pretrain.batch-size=32", "-o", "train.batch-size=16",
        "-o", "train.steps=20", "-o", "train.checkpoint-every=10", "-o", "train.log-every=10",
    ];

    private static string Postgres => MoCE.Tests.TestPostgres.ConnectionString;

    [Fact]
    public void The_postgres_preset_and_akka_overrides_reach_the_actor_system()
    {
        _ = Postgres;                                                            // $MOCE_POSTGRES for the moce processes
        var run = Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N"));
        var (code, output) = Moce(["pretrain", "--run", run, .. Baby]);
        Assert.True(code == 0, output);
        (code, output) = Moce(["cluster", "--run", run, .. Baby]);
        Assert.True(code == 0, output);

        // an akka override reaches the system: an unknown journal provider fails the run, after max-failures restarts
        // of the supervisor however long each takes (it once restarted forever on a loaded machine)
        (code, output) = Moce(["train", "--run", run, .. Baby, "-o", "akka.persistence.journal.sql.provider-name=NoSuchDatabase",
                               "-o", "actors.backoff-max=0.5", "-o", "actors.max-failures=3"]);
        Assert.NotEqual(0, code);
        Assert.Contains("the supervisor stopped before the run finished", output);

        // secrets this test sets for the run: a connection string that carries a token of its own, and a TLS password
        var token = "secret-" + Guid.NewGuid().ToString("N");
        var connection = new NpgsqlConnectionStringBuilder(Postgres) { ApplicationName = token }.ConnectionString;
        var tlsPassword = "tls-" + Guid.NewGuid().ToString("N");
        var preset = Path.Combine(AppContext.BaseDirectory, "hocon", "persistence-postgres.conf");
        (code, output) = MoceWith(new Dictionary<string, string> { ["MOCE_POSTGRES"] = connection, ["MOCE_TLS_PASSWORD"] = tlsPassword },
                                  ["train", "--run", run, "--config", preset, .. Baby]);
        Assert.True(code == 0, output);
        Assert.False(File.Exists(Path.Combine(run, "train-moce", "journal.db")));
        // no secret it was given is logged: not on the console, not in any log file of the run
        var logs = Directory.GetFiles(run, "*.log", SearchOption.AllDirectories);
        Assert.NotEmpty(logs);
        foreach (var (name, text) in logs.Select(f => (f, File.ReadAllText(f))).Append(("the console", output)))
            foreach (var (what, secret) in new[] { ("the connection string's token", token), ("the TLS password", tlsPassword), ("a password", "Password=") })
                Assert.False(text.Contains(secret, StringComparison.OrdinalIgnoreCase), $"{name} holds {what}");

        (code, output) = Moce(["status", run]);
        Assert.True(code == 0, output);
        Assert.Contains("train-moce (actors): committed step 20", output);     // no journal.db, still the actor engine's run

        var runId = File.ReadAllText(Path.Combine(run, "run.id")).Trim();
        Assert.Matches("^[0-9a-f]{12}$", runId);
        using var c = new NpgsqlConnection(Postgres);
        c.Open();
        using var cmd = new NpgsqlCommand("SELECT count(*) FROM journal WHERE persistence_id LIKE @p AND manifest = 'CheckpointCommitted'", c);
        cmd.Parameters.AddWithValue("p", $"{runId}-moce-%-supervisor");
        Assert.Equal(3L, (long)cmd.ExecuteScalar()!);                            // commits 0, 10 and 20
    }

    [Fact]
    public void A_tool_with_no_cluster_at_its_seeds_fails_after_the_reconnect_timeout_saying_so()
    {
        int nobody = MoCE.Actors.ClusterNode.FreeLoopbackPort();
        var (code, output) = Moce(["node", "drain", "127.0.0.1:4553", "--insecure", "--seeds", $"127.0.0.1:{nobody}", "-o", "akka.cluster.client.reconnect-timeout=3s"]);
        Assert.True(code == 1, output);                                          // not the drain's 5-minute ask timeout
        Assert.Contains($"no node of the cluster at [127.0.0.1:{nobody}] was in contact for 3 s before an answer came", output);
        Assert.DoesNotContain("AskTimeoutException", output);
    }

    /// <summary>A cluster runs mutual TLS by default: a node or a tool with no certificate and no --insecure stops before it
    /// opens a port or contacts anyone, saying what to give.</summary>
    [Fact]
    public void A_node_or_a_tool_without_a_certificate_or_insecure_is_refused_before_it_connects()
    {
        int port = MoCE.Actors.ClusterNode.FreeLoopbackPort();
        foreach (var args in new[] { new[] { "node", "--roles", "experts", "--port", port.ToString(), "--seeds", $"127.0.0.1:{port}" },
                                     ["experts", "list", "--seeds", $"127.0.0.1:{port}"], ["node", "drain", "127.0.0.1:4553", "--seeds", $"127.0.0.1:{port}"] })
        {
            var (code, output) = Moce(args);
            Assert.True(code == 2, output);
            Assert.Contains("moce.node.tls-certificate': is empty: a cluster runs mutual TLS by default", output);
            Assert.Contains("--insecure", output);
            Assert.DoesNotContain("Association", output);                        // nothing was contacted
        }
    }
}
