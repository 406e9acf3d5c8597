using Akka.Actor;
using Akka.Configuration;
using Akka.Persistence;
using Microsoft.Data.Sqlite;
using MoCE.Actors.Messages;
using MoCE.Actors.Wire;
using MoCE.Core.Checkpoints;
using MoCE.Core.Tests;

namespace MoCE.Actors.Tests;

/// <summary>The journal's format: events are written with the wire serializer's explicit, versioned bodies (never
/// CLR type names), and a journal written by the previous build (Akka's default JSON serializer) still recovers.</summary>
public sealed class JournalFormatTests
{
    private sealed class Journaled : ReceivePersistentActor
    {
        public override string PersistenceId => "run-x-supervisor";
        private readonly List<object> events = [];

        public Journaled()
        {
            Recover<CheckpointCommitted>(events.Add);
            Recover<RecoveryRecord>(events.Add);
            Command<object[]>(batch => PersistAll(batch, e => { events.Add(e); if (e == batch[^1]) Sender.Tell("persisted"); }));
            Command<string>(_ => Sender.Tell(events.ToArray()));
        }
    }

    // manifests as arrays, as the supervisor builds them (the old JSON format cannot even read back a collection
    // expression's list type: one more reason to leave it)
    private static readonly CheckpointRef Part = new("trainer", 20, "trainer-00000020-0123456789abcdef.ckpt", new string('b', 64));
    private static readonly object[] First = [new CheckpointCommitted(0, new[] { Part with { Step = 0 } }), new RecoveryRecord(23, "expert-1", "global-rollback", "boom", 20, 3, 10.5, 0)];
    private static readonly object[] Second = [new CheckpointCommitted(20, new[] { Part, Part with { Owner = "router" } })];

    private static object[] Run(Config config, object[]? persist)
    {
        using var system = ActorSystem.Create("journal", config);
        try
        {
            var a = system.ActorOf(Props.Create(() => new Journaled()));
            if (persist is not null) Assert.Equal("persisted", a.Ask<string>(persist, TimeSpan.FromSeconds(30)).Result);
            return a.Ask<object[]>("events", TimeSpan.FromSeconds(30)).Result;
        }
        finally { system.Terminate().Wait(TimeSpan.FromSeconds(10)); }
    }

    /// <summary>Events by value (a record's list member compares by reference).</summary>
    private static string[] Show(IEnumerable<object> events) =>
        events.Select(e => e is CheckpointCommitted c ? $"commit {c.Step}: {string.Join(", ", c.Manifest)}" : e.ToString()!).ToArray();

    private static List<(long serializer, string manifest)> Rows(string dir)
    {
        using var c = new SqliteConnection($"Data Source={Path.Combine(dir, "journal.db")}");
        c.Open();
        using var cmd = c.CreateCommand();
        cmd.CommandText = "SELECT identifier, manifest FROM journal ORDER BY ordering";
        using var r = cmd.ExecuteReader();
        var rows = new List<(long, string)>();
        while (r.Read()) rows.Add((r.GetInt64(0), r.GetString(1)));
        return rows;
    }

    [Fact]
    public void A_journal_of_the_previous_format_recovers_and_new_events_use_the_versioned_wire_format()
    {
        var dir = Tiny.TempDir();
        // the previous build: no MoCE bindings, so Akka's default JSON serializer (with CLR type names)
        var previous = ConfigurationFactory.ParseString("""akka.actor.serialization-bindings { "MoCE.Actors.Messages.IStepMessage, MoCE.Actors" = json }""")
            .WithFallback(ActorEngine.Config(dir));
        Assert.Equal(Show(First), Show(Run(previous, First)));
        Assert.All(Rows(dir), row => Assert.NotEqual(WireSerializer.Id, row.serializer));

        var now = ActorEngine.Config(dir);
        Assert.Equal(Show(First), Show(Run(now, null)));                                    // recovered from the old rows
        Assert.Equal(Show(First.Concat(Second)), Show(Run(now, Second)));
        var rows = Rows(dir);
        Assert.Equal((WireSerializer.Id, "CheckpointCommitted"), rows[^1]);     // the new row: explicit manifest, no type name
        Assert.Equal(Show(First.Concat(Second)), Show(Run(now, null)));                      // and both formats recover together
    }
}
