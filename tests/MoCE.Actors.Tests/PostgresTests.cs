using Akka.Configuration;
using MoCE.Actors;
using MoCE.Core.Config;
using MoCE.Core.Tests;
using MoCE.Tests;
using Npgsql;

namespace MoCE.Actors.Tests;

/// <summary>The actor engine on a real PostgreSQL journal (hocon/persistence-postgres.conf), the one a cluster shares.
/// build/test.sh starts the server (build/postgres.sh) and sets MOCE_POSTGRES; without it, TestPostgres starts one or
/// says what is missing.</summary>
public class PostgresTests(MoceFixture fx) : IClassFixture<MoceFixture>
{
    private static readonly MoeConfig Moe = MoceFixture.Moe with { Layers = [0, 1] };
    /// <summary>The PostgreSQL preset; the engine takes its connection string from $MOCE_POSTGRES, which TestPostgres sets.</summary>
    private static Config Postgres
    {
        get
        {
            _ = TestPostgres.ConnectionString;
            return ConfigurationFactory.ParseString(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "hocon", "persistence-postgres.conf")));
        }
    }

    private static List<string> Events(string persistenceId)
    {
        using var c = new NpgsqlConnection(TestPostgres.ConnectionString);
        c.Open();
        using var cmd = new NpgsqlCommand("SELECT manifest FROM journal WHERE persistence_id = @p ORDER BY sequence_number", c);
        cmd.Parameters.AddWithValue("p", persistenceId);
        using var r = cmd.ExecuteReader();
        var list = new List<string>();
        while (r.Read()) list.Add(r.GetString(0));
        return list;
    }

    [Fact]
    public void A_run_on_PostgreSQL_rolls_back_resumes_from_its_own_commits_and_equals_the_reference()
    {
        var train = Tiny.Train(steps: 30);
        var run = new ActorRun(fx, Moe, train) { Akka = Postgres };
        var other = new ActorRun(fx, Moe, train) { Akka = Postgres };             // a second run in the same database
        var chaos = new ChaosPlan().FailAt("expert-1", 13);
        Assert.Equal(20, run.Run(until: 20, checkpointEvery: 10, chaos).Step);
        Assert.Equal(10, other.Run(until: 10, checkpointEvery: 10).Step);

        Assert.Single(chaos.Fired);
        Assert.False(File.Exists(Path.Combine(run.RunDir, "journal.db")));         // the journal is not the embedded one
        // the supervisor's start comes first; the injected fault is journaled as it fires, before the recovery from it
        Assert.Equal(["Incarnation", "CheckpointCommitted", "CheckpointCommitted", "ChaosFired", "RecoveryRecord", "CheckpointCommitted"], Events($"{run.RunId}-supervisor"));
        Assert.Equal(["Incarnation", "CheckpointCommitted", "CheckpointCommitted"], Events($"{other.RunId}-supervisor"));

        // a new engine (a restarted process) on the same run recovers its commits from PostgreSQL and resumes at 20
        var resumed = new ActorRun(fx, Moe, train) { Akka = Postgres, RunDir = run.RunDir, RunId = run.RunId };
        Assert.Equal(30, resumed.Run(until: 30, checkpointEvery: 10).Step);
        Assert.Equal(20, resumed.Losses.Keys.First());
        Assert.Equal(2, Events($"{run.RunId}-supervisor").Count(e => e == "Incarnation"));   // its second start: generations above the first's
        var reference = resumed.Reference(out var losses);
        Assert.True(ActorRun.MaxAbsDiff(reference, resumed.CommittedWeights(30)) <= 1e-5);
        Assert.Equal(losses[25], resumed.Losses[25], 5);
    }
}
