using System.Collections.Concurrent;

namespace MoCE.Actors.Wire;

/// <summary>Bytes of message bodies this process serialized (sent to another node, or to the journal) and deserialized
/// (received), by manifest, since it started: what the protocol costs on the wire. Akka.Remote adds its envelope (the
/// recipient's and sender's paths, the manifest) and TCP framing on top; these counters are the payload.</summary>
public static class WireTraffic
{
    private sealed class Counter { public long Sent, Received, SentCount, ReceivedCount; }
    private static readonly ConcurrentDictionary<string, Counter> counters = new();

    public static void Count(string manifest, int bytes, bool sent)
    {
        var c = counters.GetOrAdd(manifest, _ => new Counter());
        if (sent) { Interlocked.Add(ref c.Sent, bytes); Interlocked.Increment(ref c.SentCount); }
        else { Interlocked.Add(ref c.Received, bytes); Interlocked.Increment(ref c.ReceivedCount); }
    }

    public sealed record Totals(long Sent, long Received, long SentMessages, long ReceivedMessages);

    public static IReadOnlyDictionary<string, Totals> Snapshot() =>
        counters.ToDictionary(kv => kv.Key, kv => new Totals(Interlocked.Read(ref kv.Value.Sent), Interlocked.Read(ref kv.Value.Received),
                                                              Interlocked.Read(ref kv.Value.SentCount), Interlocked.Read(ref kv.Value.ReceivedCount)));

    /// <summary>The data plane: router ↔ expert activations and gradients.</summary>
    public static readonly IReadOnlySet<string> DataPlane = new HashSet<string> { "ExpertForward", "ExpertOutput", "ExpertBackward", "ExpertInputGrad" };
}
