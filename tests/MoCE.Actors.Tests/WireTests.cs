using System.Runtime.Serialization;
using Akka.Actor;
using Akka.Serialization;
using MoCE.Actors.Messages;
using MoCE.Actors.Wire;
using MoCE.Core.Checkpoints;
using MoCE.Core.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace MoCE.Actors.Tests;

/// <summary>The wire format: tensor frames and every message's body round-trip exactly, and no byte sequence (random,
/// mutated, truncated, with lying lengths) does anything but decode or raise <see cref="WireFormatException"/>.</summary>
public sealed class WireTests : IDisposable
{
    private readonly ActorSystem system = ActorSystem.Create("wire", ActorEngine.AkkaConfig());
    private WireSerializer Serializer => (WireSerializer)system.Serialization.FindSerializerForType(typeof(Apply));

    public void Dispose() => system.Terminate().Wait(TimeSpan.FromSeconds(10));

    private static Tensor RoundTrip(Tensor t, WireEncoding encoding = WireEncoding.Raw)
    {
        var w = new WireWriter();
        TensorFrame.Write(w, t, encoding);
        var bytes = w.ToArray();
        var r = new WireReader(bytes, "test");
        var back = TensorFrame.Read(ref r);
        r.End();
        return back;
    }

    private static Tensor Random(ScalarType type, long[] shape, Generator g) => type switch
    {
        ScalarType.Bool => randint(0, 2, shape, generator: g).to_type(ScalarType.Bool),
        ScalarType.Byte => randint(0, 256, shape, generator: g).to_type(type),
        ScalarType.Int8 or ScalarType.Int16 or ScalarType.Int32 or ScalarType.Int64 => randint(-100, 100, shape, generator: g).to_type(type),
        _ => randn(shape, generator: g).to_type(type),
    };

    [Fact]
    public void Every_dtype_and_shape_round_trips_bit_for_bit_including_empty_and_scalar()
    {
        var g = new Generator(1);
        long[][] shapes = [[], [0], [1], [7], [3, 5], [2, 0, 3], [2, 3, 4, 5], [1, 1, 1, 1, 1, 1, 1, 2]];
        foreach (var type in TensorFrame.Supported)
            foreach (var shape in shapes)
            {
                using var t = Random(type, shape, g);
                using var back = RoundTrip(t);
                Assert.Equal(type, back.dtype);
                Assert.Equal(shape, back.shape);
                Assert.True(t.bytes.SequenceEqual(back.bytes), $"{type} [{string.Join(",", shape)}] changed on the wire");
            }
    }

    [Fact]
    public void A_tensor_over_64_MB_round_trips()
    {
        using var t = arange(16_777_217 + 5, dtype: ScalarType.Float32);     // 64 MiB + 24 bytes
        Assert.True(t.NumberOfElements * 4 > 64L << 20);
        using var back = RoundTrip(t);
        Assert.True(t.bytes.SequenceEqual(back.bytes));
    }

    [Fact]
    public void Non_contiguous_tensors_travel_as_their_values()
    {
        using var t = arange(12, dtype: ScalarType.Float32).reshape(3, 4).t();
        using var back = RoundTrip(t);
        Assert.Equal([4L, 3L], back.shape);
        Assert.True(MoCE.Core.Tests.Tiny.Same(back, t));
    }

    [Fact]
    public void Bf16_encoding_halves_the_payload_and_rounds_like_torch()
    {
        using var t = randn([64, 8], generator: new Generator(3));
        var raw = new WireWriter(); TensorFrame.Write(raw, t);
        var half = new WireWriter(); TensorFrame.Write(half, t, WireEncoding.Bf16);
        Assert.Equal(64 * 8 * 2, raw.ToArray().Length - half.ToArray().Length);
        using var back = RoundTrip(t, WireEncoding.Bf16);
        using var expected = t.to_type(ScalarType.BFloat16).to_type(ScalarType.Float32);
        Assert.Equal(ScalarType.Float32, back.dtype);
        Assert.True(MoCE.Core.Tests.Tiny.Same(back, expected));
        Assert.False(MoCE.Core.Tests.Tiny.Same(back, t));                                          // it really is rounded
    }

    /// <summary>One instance of every message and event type, with small tensors from <paramref name="g"/>.</summary>
    private List<object> Samples(Generator g)
    {
        var actor = system.ActorOf(Props.Empty, $"sample-{Guid.NewGuid():N}");
        var spec = new ExpertSpec("run-1", new MoCE.Core.Config.MaeConfig { Dim = 32 }, new MoCE.Core.Config.MoeConfig { Experts = 3, Layers = [0, 2] },
                                  new MoCE.Core.Config.TrainConfig { Seed = 7, BaseLr = 1e-3 }, "/shared/run/checkpoints", r0(), RecoveryPolicy.ExpertLocal);
        static CheckpointRef r0() => new("initial", 0, "initial-00000000-bbbbbbbbbbbbbbbb.ckpt", new string('b', 64));
        Tensor T(params long[] shape) => randn(shape, generator: g);
        var r = new CheckpointRef("expert-2", 40, "expert-2-00000040-aaaaaaaaaaaaaaaa.ckpt", new string('a', 64));   // the name the store gives it
        var rec = new RecoveryRecord(23, "expert-1", "global-rollback", "chaos: ünïcode", 20, 3, 812.5, 7, 2);
        return
        [
            new GetSquaredGradNorm(5, 3), new SquaredGradNormResponse(5, "router", 0.125), new Apply(5, 1e-4, 0.5, 3), new StepApplied(5, "expert-0"),
            new Checkpoint(40, 1 << 20), new CheckpointTaken(40, 1 << 20, "expert-2"), new CheckpointWritten(40, r, 1 << 20), new Committed(40), new Crash(40, "chaos"), new RestoreCheckpoint(40, r, 3), new Restored(40, "trainer"),
            new AbortStep(6), new StepAborted(6, "expert-3"),
            new ExpertForward(7, 2, 1, T(5, 4, 8)), new ExpertOutput(7, 2, 1, 3, T(5, 4, 8)),
            new ExpertBackward(7, 2, 1, T(5, 4, 8)), new ExpertInputGrad(7, 2, 1, 3, T(5, 4, 8)),
            new Route(8, 1, 3, T(4, 4, 8), tensor(new long[] { 0, 3, 1, 1 }), new HashSet<int> { 2, 0 }),
            new Routed(8, 3, T(4, 4, 8), T(4, 4), tensor(new long[] { 1, 0, 3, 3 }).reshape(4, 1), 4, 1),
            new RouteBackward(8, 1, 3, T(4, 4, 8)), new RoutedBackward(8, 3, T(4, 4, 8)),
            new Prefetch(9), new GetTarget(9), new Target(9, T(4, 5, 8)),
            new TrainStep(10, 4, new HashSet<int> { 1 }),
            new StepCompleted(10, new StepStats(10, 0.5, 1e-4, 2.5, 16), [new ExpertStat(1, 0, 64, 0.25, 0.7), new ExpertStat(1, 1, 0, 0, 0.7)], 3),
            new StepFailed(10, 4, "another owner failed"), new ExpertRecovered(20, 2), new ExpertCopyRestored(13, 2, 13), new GetRunStatus(0), new RunStatusResponse(30, 20, [rec]),
            new RunFinished(30, [rec, rec with { Owner = "router", Fallback = "expert-exact: expert-1 lost with its node" }]), new SupervisorActor.Start(100), new SupervisorActor.StopAndCommit(),
            new CheckpointCommitted(40, [r, r with { Owner = "trainer" }], [new RoutedTokens(38, [5, 0, 11]), new RoutedTokens(39, [0, 16, 0])]), rec, new Incarnation(0, 3), new ExpertActor.ExpertSnapshot(40, r),
            new GetHostInfo(3), new HostInfo(3, "akka.tcp://moce@127.0.0.1:4051", ["cpu", "cuda:1"], ["run-1/2"]), new HostExpert(3, 2, spec, true),
            new ExpertHosted(3, 2, actor, "akka.tcp://moce@127.0.0.1:4051", "cuda:1"), new OwnerFailure(-1, "expert-2", "chaos", true), new OwnerFailure(13, "expert-2", "chaos", true, StepPhase.Apply),
            new UseExperts(4, [actor, actor]), new ExpertLost(4, 1), new CopyTo(4, actor), new CopyTo(4, ActorRefs.Nobody),
            new PeerCopy(41, "run-1", 2, 41, [("blocks.1.mlp.experts.2.fc1.weight", T(8, 4)), ("blocks.1.mlp.experts.2.fc1.weight.exp_avg", T(8, 4))]), new GetExperts(-1), new StopExpert(5, "run-1", 2),
            new ExpertsSlow(70, 3, 1, [2], 250.0), new KillNode(90),
            new ChaosFired(70, "expert-0", "duplicate", "backward message between the router and expert-0"),
            new AddExperts(-1, 2, "akka.tcp://moce@127.0.0.1:4555", 60), new ExpertsAddedReply(60, [3, 4], [1, 1], ""),
            new ExpertsAdded(60, 3, [1, 1], "", new CheckpointCommitted(60, [r, r with { Owner = "expert-3" }])),
            new DrainNode(-1, "akka.tcp://moce@127.0.0.1:4553"), new NodeDrained(50, "akka.tcp://moce@127.0.0.1:4553", [0, 2], ""),
            new ExpertsStatus(40, 30, [new ExpertInfo(0, "akka.tcp://moce@127.0.0.1:4553", "cpu", 512, "up"), new ExpertInfo(1, "", "", 0, "placing")]),
            // signed control commands (the signature's bytes are not checked here, only carried)
            new DrainNode(-1, "akka.ssl.tcp://moce@10.0.0.2:4553") { By = Signature },
            new AddExperts(-1, 1, "", -1) { By = Signature }, new SupervisorActor.StopAndCommit { By = Signature },
            new RunStopping(12, ""), new RunStopping(12, "refused: mallory (moce-node"),
            new ProveMembership(3, "00112233445566778899AABBCCDDEEFF"),
            new MembershipProof(3, "00112233445566778899AABBCCDDEEFF", "akka.ssl.tcp://moce@10.0.0.2:4553", ["coordinator", "experts"]) { By = Signature },
        ];
    }

    private static readonly MoCE.Actors.Security.CommandSignature Signature =
        new(Convert.ToBase64String(new byte[400]), 1_790_000_000_000, Convert.ToBase64String([1, 2, 3, 250]));

    /// <summary>Records compare by value, but tensors by reference: compare tensor properties by their elements.</summary>
    private static void AssertSame(object expected, object actual)
    {
        Assert.Equal(expected.GetType(), actual.GetType());
        foreach (var p in expected.GetType().GetProperties())
        {
            object? a = p.GetValue(expected), b = p.GetValue(actual);
            if (a is Tensor ta) Assert.True(MoCE.Core.Tests.Tiny.Same(ta, (Tensor)b!), $"{expected.GetType().Name}.{p.Name}");
            else if (a is IReadOnlyList<(string, Tensor)> na)                      // named tensors: names in order, elements bit for bit
            {
                var nb = (IReadOnlyList<(string, Tensor)>)b!;
                Assert.Equal(na.Select(x => x.Item1), nb.Select(x => x.Item1));
                for (int i = 0; i < na.Count; i++) Assert.True(MoCE.Core.Tests.Tiny.Same(na[i].Item2, nb[i].Item2), $"{expected.GetType().Name}.{p.Name}[{na[i].Item1}]");
            }
            else if (a is not null && a.GetType().Namespace?.StartsWith("MoCE", StringComparison.Ordinal) == true && !a.GetType().IsEnum) AssertSame(a, b!);   // nested records (configs)
            else if (a is System.Collections.IEnumerable ea && a is not string)
                Assert.Equal(ea.Cast<object>().OrderBy(x => x.ToString()), ((System.Collections.IEnumerable)b!).Cast<object>().OrderBy(x => x.ToString()));
            else Assert.Equal(a, b);
        }
    }

    /// <summary>A journal written before commits carried their token window (body version 1) still recovers: its commits
    /// have no window, and the add after a restore from one counts only the steps trained since.</summary>
    [Fact]
    public void A_commit_of_body_version_1_reads_without_its_window()
    {
        using var w = new WireWriter();
        w.U8(1);
        w.I64(40);
        w.U32(0);
        var back = Assert.IsType<CheckpointCommitted>(Serializer.FromBinary(w.ToArray(), nameof(CheckpointCommitted)));
        Assert.Equal((40L, 0), (back.Step, back.Manifest.Count));
        Assert.Null(back.Window);
    }

    /// <summary>A recovery record journaled before records carried a fallback (body version 3) reads with none; an owner's
    /// failure of that version has no phase.</summary>
    [Fact]
    public void A_recovery_record_and_an_owner_failure_of_body_version_3_read_without_fallback_or_phase()
    {
        using var w = new WireWriter();
        w.U8(3);
        w.I64(23); w.Str("expert-1"); w.Str("global-rollback"); w.Str("boom"); w.I64(20); w.I64(3); w.F64(10.5); w.I32(0); w.I64(0);
        Assert.Equal(new RecoveryRecord(23, "expert-1", "global-rollback", "boom", 20, 3, 10.5, 0), Serializer.FromBinary(w.ToArray(), nameof(RecoveryRecord)));
        using var f = new WireWriter();
        f.U8(3);
        f.I64(-1); f.Str("expert-2"); f.Str("chaos"); f.U8(1);
        Assert.Equal(new OwnerFailure(-1, "expert-2", "chaos", true), Serializer.FromBinary(f.ToArray(), nameof(OwnerFailure)));
    }

    [Fact]
    public void Every_message_and_event_is_bound_to_the_wire_serializer_and_round_trips()
    {
        var samples = Samples(new Generator(2));
        var messageTypes = typeof(IStepMessage).Assembly.GetTypes().Where(t => typeof(IStepMessage).IsAssignableFrom(t) && !t.IsInterface && !t.IsAbstract);
        Assert.Empty(messageTypes.Except(samples.Select(s => s.GetType())));           // a new message type needs a wire format and a sample here
        Assert.Empty(Serializer.Types.Except(samples.Select(s => s.GetType())));
        foreach (var m in samples)
        {
            var s = system.Serialization.FindSerializerFor(m);
            Assert.True(s is WireSerializer, $"{m.GetType().Name} is bound to {s.GetType().Name}, not the wire serializer");
            var copy = Clone(m);                                               // the serializer disposes what it sends: keep the original
            var bytes = s.ToBinary(copy);
            var back = ((SerializerWithStringManifest)s).FromBinary(bytes, Serialization.ManifestFor(s, m));
            AssertSame(m, back);
        }
    }

    [Fact]
    public void The_sender_s_tensor_is_disposed_once_serialized()
    {
        var t = ones(2, 3);
        Serializer.ToBinary(new ExpertForward(1, 0, 0, t));
        Assert.True(t.IsInvalid);
    }

    private object Clone(object m) => Serializer.FromBinary(Serializer.ToBinary(CopyTensors(m)), Serializer.Manifest(m));

    /// <summary>The same message with its tensors cloned (ToBinary disposes them).</summary>
    private static object CopyTensors(object m)
    {
        var ctor = m.GetType().GetConstructors().OrderByDescending(c => c.GetParameters().Length).First();
        var args = ctor.GetParameters().Select(p =>
        {
            var v = m.GetType().GetProperty(p.Name!, System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.IgnoreCase)!.GetValue(m);
            return v switch
            {
                Tensor t => t.clone(),
                IReadOnlyList<(string, Tensor)> named => named.Select(x => (x.Item1, x.Item2.clone())).ToList(),
                _ => v,
            };
        }).ToArray();
        var copy = ctor.Invoke(args);
        var positional = ctor.GetParameters().Select(p => p.Name!).ToHashSet(StringComparer.OrdinalIgnoreCase);
        foreach (var p in m.GetType().GetProperties().Where(p => p.CanWrite && !positional.Contains(p.Name)))   // init-only members (a signature)
            p.SetValue(copy, p.GetValue(m));
        return copy;
    }

    [Fact]
    public void Ten_thousand_random_and_mutated_frames_decode_or_fail_with_a_wire_error_and_nothing_else()
    {
        var rng = new Random(20261129);
        var valid = Samples(new Generator(4)).Select(m => (manifest: Serializer.Manifest(m), bytes: Serializer.ToBinary(CopyTensors(m)))).ToList();
        var manifests = valid.Select(v => v.manifest).Append("NoSuchMessage").ToArray();
        int decoded = 0, rejected = 0, inside = 0, refused = 0;
        var store = new CheckpointStore(MoCE.Core.Tests.Tiny.TempDir());
        for (int i = 0; i < 10_000; i++)
        {
            var (manifest, original) = valid[rng.Next(valid.Count)];
            var bytes = (byte[])original.Clone();
            switch (i % 6)
            {
                case 0:                                                        // flip 1..8 random bits
                    for (int k = rng.Next(1, 9); k > 0 && bytes.Length > 0; k--) bytes[rng.Next(bytes.Length)] ^= (byte)(1 << rng.Next(8));
                    break;
                case 1:                                                        // truncate anywhere
                    bytes = bytes[..rng.Next(bytes.Length)];
                    break;
                case 2:                                                        // a lying 8-byte length or dimension
                    if (bytes.Length >= 8)
                    {
                        int at = rng.Next(bytes.Length - 7);
                        long lie = rng.Next(4) switch { 0 => long.MaxValue, 1 => -1, 2 => 1L << 40, _ => rng.NextInt64(0, 1 << 20) };
                        BitConverter.TryWriteBytes(bytes.AsSpan(at, 8), lie);
                    }
                    break;
                case 3:                                                        // a lying 4-byte count or string length
                    if (bytes.Length >= 4) BitConverter.TryWriteBytes(bytes.AsSpan(rng.Next(bytes.Length - 3), 4), rng.Next(2) == 0 ? uint.MaxValue : (uint)rng.Next(1 << 16));
                    break;
                case 4:                                                        // pure noise under a real manifest
                    bytes = new byte[rng.Next(0, 300)];
                    rng.NextBytes(bytes);
                    break;
                default:                                                       // a valid body under another manifest, plus junk
                    manifest = manifests[rng.Next(manifests.Length)];
                    bytes = [.. bytes, .. Enumerable.Range(0, rng.Next(3)).Select(_ => (byte)rng.Next(256))];
                    break;
            }
            try
            {
                var m = Serializer.FromBinary(bytes, manifest);
                if (m is MalformedFrame) { rejected++; continue; }            // a message's bad frame, for its receiver
                decoded++;
                foreach (var p in m.GetType().GetProperties().Where(p => p.PropertyType == typeof(Tensor))) ((Tensor?)p.GetValue(m))?.Dispose();
                // a decoded checkpoint reference names a file inside the store, or the store refuses it
                var refs = m switch
                {
                    RestoreCheckpoint rc => [rc.Ref], CheckpointWritten cw => [cw.Ref], ExpertActor.ExpertSnapshot es => [es.Ref],
                    CheckpointCommitted cc => cc.Manifest, _ => (IEnumerable<CheckpointRef>)[],
                };
                foreach (var cr in refs)
                {
                    try { Assert.Equal(store.Location, Path.GetDirectoryName(Path.GetFullPath(store.PathOf(cr)))); inside++; }
                    catch (CheckpointCorruptException) { refused++; }
                }
            }
            catch (SerializationException) { rejected++; }                    // a journal event's, or an unknown manifest
            // anything else (IndexOutOfRange, OutOfMemory, Overflow, a torch error) fails the test
        }
        Assert.Equal(10_000, decoded + rejected);
        // most are rejected; the share depends on the samples (a flipped bit inside a string or a number still decodes):
        // 7,984 with the samples of body version 2, so a decoder that let a kind of damage through would fall far below
        Assert.True(rejected > 7_500, $"only {rejected} of 10,000 mutated frames were rejected");
        Assert.True(inside > 0 && refused > 0, $"checkpoint references: {inside} inside the store, {refused} refused");
    }

    /// <summary>A message whose frame breaks after some of its tensors were decoded arrives as a MalformedFrame (its
    /// receiver fails the step with it), and those tensors are disposed, not left to the finalizer; a bad journal
    /// event still throws, so that a recovery never skips it.</summary>
    [Fact]
    public void A_malformed_message_frame_arrives_as_MalformedFrame_with_its_decoded_tensors_disposed()
    {
        var bytes = Serializer.ToBinary(new Routed(3, 1, ones(4, 8), ones(4, 2), zeros([4, 1], ScalarType.Int64), 1, 0));
        bytes[^13] ^= 1;                                                       // the last tensor's payload: its checksum fails
        var live = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        var bad = Assert.IsType<MalformedFrame>(Serializer.FromBinary(bytes, nameof(Routed)));
        Assert.Equal(nameof(Routed), bad.Manifest);
        Assert.Contains("checksum", bad.Error);
        Assert.Equal(live, TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount);   // the two tensors decoded before it
        Assert.Contains("a malformed Routed frame from akka://", bad.Failure(system.DeadLetters).Message);

        var ev = Serializer.ToBinary(new CheckpointCommitted(5, [new("trainer", 5, "trainer-00000005-0123456789abcdef.ckpt", new string('a', 64))]));
        Assert.Throws<WireFormatException>(() => Serializer.FromBinary(ev[..^3], nameof(CheckpointCommitted)));
    }

    [Fact]
    public void Truncated_headers_and_lying_lengths_are_rejected_with_a_clear_reason()
    {
        var w = new WireWriter();
        TensorFrame.Write(w, ones(3, 4));
        var frame = w.ToArray();
        for (int n = 0; n < TensorFrame.HeaderBytes(2); n++)
            Assert.Contains("truncated", Read(frame[..n]));
        var lie = (byte[])frame.Clone();
        BitConverter.TryWriteBytes(lie.AsSpan(8 + 16, 8), 1L << 40);            // payload length
        Assert.Contains("payload length", Read(lie));
        lie = (byte[])frame.Clone();
        BitConverter.TryWriteBytes(lie.AsSpan(8, 8), 1L << 40);                 // the first dimension
        Assert.Contains("payload length", Read(lie));
        lie = (byte[])frame.Clone();
        BitConverter.TryWriteBytes(lie.AsSpan(8, 8), long.MaxValue);
        BitConverter.TryWriteBytes(lie.AsSpan(16, 8), long.MaxValue);
        Assert.Contains("overflows", Read(lie));
        lie = (byte[])frame.Clone();
        lie[^1] ^= 1;
        Assert.Contains("checksum", Read(lie));
        lie = (byte[])frame.Clone();
        lie[4] = 9;
        Assert.Contains("version 9", Read(lie));

        static string Read(byte[] bytes)
        {
            var e = Assert.Throws<WireFormatException>(() => { var r = new WireReader(bytes, "frame"); TensorFrame.Read(ref r).Dispose(); });
            return e.Message;
        }
    }
}
