using Akka.Actor;
using Akka.Serialization;
using MoCE.Actors.Messages;
using System.Text.Json;
using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Core.Training;
using TorchSharp;

namespace MoCE.Actors.Wire;

/// <summary>The serializer of every MoCE message and journal event (hocon/akka.conf binds them by type). A message
/// is named by a stable manifest (its record name, never a CLR type name) and its body starts with a format
/// version byte, so a later build can still read what an earlier one wrote: a new version adds a reader here and
/// keeps the old ones. Tensors inside a body are <see cref="TensorFrame"/>s.
///
/// Ownership: a tensor in a message belongs to whoever holds the message; once the message is serialized for a
/// remote receiver the sender's handle is useless, so this serializer disposes the message's tensors after writing
/// them. Locally, messages never pass through here and tensors travel by reference.</summary>
public sealed class WireSerializer : SerializerWithStringManifest
{
    public const int Id = 4711;
    /// <summary>Body format version written by this build. 2: a commit carries its token window; Apply, Checkpoint and
    /// GetSquaredGradNorm carry their generation. 3: DrainNode, AddExperts and StopAndCommit carry their signature (and ProveMembership and MembershipProof exist).
    /// 4: OwnerFailure carries the phase of the step it failed in, a RecoveryRecord its fallback, CheckpointWritten its
    /// generation (and ExpertCopyRestored and CheckpointTaken exist).</summary>
    public const byte BodyVersion = 4;

    private delegate object ReadBody(ref WireReader r, byte version);
    private readonly Dictionary<Type, (string manifest, Action<WireWriter, object> write)> writers = [];
    private readonly Dictionary<string, ReadBody> readers = [];
    private readonly WireEncoding encoding;

    public override int Identifier => Id;

    public WireSerializer(ExtendedActorSystem system) : this(system, Encoding(system)) { }

    public WireSerializer(ExtendedActorSystem system, WireEncoding encoding) : base(system)
    {
        this.encoding = encoding;
        // owner protocol (every owner: trainer, router, experts)
        Add<GetSquaredGradNorm>((w, m) => { w.I64(m.Step); w.I32(m.Generation); }, (ref WireReader r, byte v) => new GetSquaredGradNorm(r.I64(), v >= 2 ? r.I32() : 0));
        Add<SquaredGradNormResponse>((w, m) => { w.I64(m.Step); w.Str(m.Owner); w.F64(m.Value); },
            (ref WireReader r, byte _) => new SquaredGradNormResponse(r.I64(), r.Str(), r.F64()));
        Add<Apply>((w, m) => { w.I64(m.Step); w.F64(m.Lr); w.F64(m.ClipScale); w.I32(m.Generation); },
            (ref WireReader r, byte v) => new Apply(r.I64(), r.F64(), r.F64(), v >= 2 ? r.I32() : 0));
        Add<StepApplied>((w, m) => { w.I64(m.Step); w.Str(m.Owner); }, (ref WireReader r, byte _) => new StepApplied(r.I64(), r.Str()));
        Add<Checkpoint>((w, m) => { w.I64(m.Step); w.I32(m.Generation); }, (ref WireReader r, byte v) => new Checkpoint(r.I64(), v >= 2 ? r.I32() : 0));
        Add<CheckpointTaken>((w, m) => { w.I64(m.Step); w.I32(m.Generation); w.Str(m.Owner); }, (ref WireReader r, byte _) => new CheckpointTaken(r.I64(), r.I32(), r.Str()));
        Add<CheckpointWritten>((w, m) => { w.I64(m.Step); Ref(w, m.Ref); w.I32(m.Generation); }, (ref WireReader r, byte v) => new CheckpointWritten(r.I64(), Ref(ref r), v >= 4 ? r.I32() : 0));
        Add<Committed>((w, m) => w.I64(m.Step), (ref WireReader r, byte _) => new Committed(r.I64()));
        Add<Crash>((w, m) => { w.I64(m.Step); w.Str(m.Reason); }, (ref WireReader r, byte _) => new Crash(r.I64(), r.Str()));
        Add<RestoreCheckpoint>((w, m) => { w.I64(m.Step); Ref(w, m.Ref); w.I32(m.Generation); }, (ref WireReader r, byte _) => new RestoreCheckpoint(r.I64(), Ref(ref r), r.I32()));
        Add<Restored>((w, m) => { w.I64(m.Step); w.Str(m.Owner); }, (ref WireReader r, byte _) => new Restored(r.I64(), r.Str()));
        Add<AbortStep>((w, m) => w.I64(m.Step), (ref WireReader r, byte _) => new AbortStep(r.I64()));
        Add<StepAborted>((w, m) => { w.I64(m.Step); w.Str(m.Owner); }, (ref WireReader r, byte _) => new StepAborted(r.I64(), r.Str()));

        // router ↔ expert (the data plane)
        Add<ExpertForward>((w, m) => { w.I64(m.Step); w.I32(m.Generation); w.I32(m.Block); Tensor(w, m.Input); },
            (ref WireReader r, byte _) => new ExpertForward(r.I64(), r.I32(), r.I32(), TensorFrame.Read(ref r)));
        Add<ExpertOutput>((w, m) => { w.I64(m.Step); w.I32(m.Generation); w.I32(m.Block); w.I32(m.Expert); Tensor(w, m.Output); },
            (ref WireReader r, byte _) => new ExpertOutput(r.I64(), r.I32(), r.I32(), r.I32(), TensorFrame.Read(ref r)));
        Add<ExpertBackward>((w, m) => { w.I64(m.Step); w.I32(m.Generation); w.I32(m.Block); Tensor(w, m.GradOutput); },
            (ref WireReader r, byte _) => new ExpertBackward(r.I64(), r.I32(), r.I32(), TensorFrame.Read(ref r)));
        Add<ExpertInputGrad>((w, m) => { w.I64(m.Step); w.I32(m.Generation); w.I32(m.Block); w.I32(m.Expert); Tensor(w, m.GradInput); },
            (ref WireReader r, byte _) => new ExpertInputGrad(r.I64(), r.I32(), r.I32(), r.I32(), TensorFrame.Read(ref r)));
        Add<CopyTo>((w, m) => { w.I64(m.Step); ActorRef(w, m.Host); }, (ref WireReader r, byte _) => new CopyTo(r.I64(), ActorRef(ref r)));
        Add<PeerCopy>((w, m) =>
        {
            w.I64(m.Step); w.Str(m.RunId); w.I32(m.Expert); w.I64(m.OptimizerSteps); w.U32((uint)m.State.Count);
            foreach (var (name, t) in m.State) { w.Str(name); TensorFrame.Write(w, t, WireEncoding.Raw); t.Dispose(); }   // exact: never bf16
        }, (ref WireReader r, byte _) =>
        {
            long step = r.I64();
            var run = r.Str();
            int expert = r.I32();
            long optimizerSteps = r.I64();
            var state = new (string, torch.Tensor)[r.Count(8)];
            for (int i = 0; i < state.Length; i++) state[i] = (r.Str(), TensorFrame.Read(ref r));
            return new PeerCopy(step, run, expert, optimizerSteps, state);
        });

        // trainer ↔ router
        Add<Route>((w, m) => { w.I64(m.Step); w.I32(m.Generation); w.I32(m.Block); Tensor(w, m.Hidden); Tensor(w, m.ClusterIds); Ints(w, m.Down); },
            (ref WireReader r, byte _) => new Route(r.I64(), r.I32(), r.I32(), TensorFrame.Read(ref r), TensorFrame.Read(ref r), Ints(ref r)));
        Add<Routed>((w, m) => { w.I64(m.Step); w.I32(m.Block); Tensor(w, m.Output); Tensor(w, m.Probs); Tensor(w, m.Choice); w.I64(m.TokensPerRow); w.I32(m.ReroutedRows); },
            (ref WireReader r, byte _) => new Routed(r.I64(), r.I32(), TensorFrame.Read(ref r), TensorFrame.Read(ref r), TensorFrame.Read(ref r), r.I64(), r.I32()));
        Add<RouteBackward>((w, m) => { w.I64(m.Step); w.I32(m.Generation); w.I32(m.Block); Tensor(w, m.GradOutput); },
            (ref WireReader r, byte _) => new RouteBackward(r.I64(), r.I32(), r.I32(), TensorFrame.Read(ref r)));
        Add<RoutedBackward>((w, m) => { w.I64(m.Step); w.I32(m.Block); Tensor(w, m.GradHidden); },
            (ref WireReader r, byte _) => new RoutedBackward(r.I64(), r.I32(), TensorFrame.Read(ref r)));

        // trainer ↔ teacher
        Add<Prefetch>((w, m) => w.I64(m.Step), (ref WireReader r, byte _) => new Prefetch(r.I64()));
        Add<GetTarget>((w, m) => w.I64(m.Step), (ref WireReader r, byte _) => new GetTarget(r.I64()));
        Add<Target>((w, m) => { w.I64(m.Step); Tensor(w, m.Latent); }, (ref WireReader r, byte _) => new Target(r.I64(), TensorFrame.Read(ref r)));

        // supervisor ↔ trainer, experts, the engine
        Add<TrainStep>((w, m) => { w.I64(m.Step); w.I32(m.Generation); Ints(w, m.Down); }, (ref WireReader r, byte _) => new TrainStep(r.I64(), r.I32(), Ints(ref r)));
        Add<StepCompleted>((w, m) =>
        {
            w.I64(m.Step); Stats(w, m.Stats); w.I32(m.ReroutedImages);
            w.U32((uint)m.Routing.Count);
            foreach (var e in m.Routing) { w.I32(e.Block); w.I32(e.Expert); w.I64(e.Tokens); w.F64(e.LossShare); w.F64(e.GateEntropy); }
        }, (ref WireReader r, byte _) =>
        {
            long step = r.I64();
            var stats = Stats(ref r);
            int rerouted = r.I32();
            var routing = new ExpertStat[r.Count(32)];
            for (int i = 0; i < routing.Length; i++) routing[i] = new ExpertStat(r.I32(), r.I32(), r.I64(), r.F64(), r.F64());
            return new StepCompleted(step, stats, routing, rerouted);
        });
        Add<StepFailed>((w, m) => { w.I64(m.Step); w.I32(m.Generation); w.Str(m.Error); }, (ref WireReader r, byte _) => new StepFailed(r.I64(), r.I32(), r.Str()));
        Add<ExpertRecovered>((w, m) => { w.I64(m.Step); w.I32(m.Expert); }, (ref WireReader r, byte _) => new ExpertRecovered(r.I64(), r.I32()));
        Add<ExpertCopyRestored>((w, m) => { w.I64(m.Step); w.I32(m.Expert); w.I64(m.CopyStep); }, (ref WireReader r, byte _) => new ExpertCopyRestored(r.I64(), r.I32(), r.I64()));
        Add<GetRunStatus>((w, m) => w.I64(m.Step), (ref WireReader r, byte _) => new GetRunStatus(r.I64()));
        Add<RunStatusResponse>((w, m) => { w.I64(m.Step); w.I64(m.CommittedStep); Recoveries(w, m.Recoveries); },
            (ref WireReader r, byte v) => new RunStatusResponse(r.I64(), r.I64(), Recoveries(ref r, v)));
        Add<RunStopping>((w, m) => { w.I64(m.Step); w.Str(m.Error); }, (ref WireReader r, byte _) => new RunStopping(r.I64(), r.Str()));
        Add<RunFinished>((w, m) => { w.I64(m.Step); Recoveries(w, m.Recoveries); }, (ref WireReader r, byte v) => new RunFinished(r.I64(), Recoveries(ref r, v)));
        Add<SupervisorActor.Start>((w, m) => w.I64(m.Until), (ref WireReader r, byte _) => new SupervisorActor.Start(r.I64()));
        Add<SupervisorActor.StopAndCommit>((w, m) => Sig(w, m.By), (ref WireReader r, byte v) => new SupervisorActor.StopAndCommit { By = Sig(ref r, v) });

        // supervisor ↔ expert hosts (placement)
        Add<GetHostInfo>((w, m) => w.I64(m.Step), (ref WireReader r, byte _) => new GetHostInfo(r.I64()));
        Add<HostInfo>((w, m) => { w.I64(m.Step); w.Str(m.Node); Strs(w, m.Devices); Strs(w, m.Hosting); },
            (ref WireReader r, byte _) => new HostInfo(r.I64(), r.Str(), Strs(ref r), Strs(ref r)));
        Add<ProveMembership>((w, m) => { w.I64(m.Step); w.Str(m.Nonce); }, (ref WireReader r, byte _) => new ProveMembership(r.I64(), r.Str()));
        Add<MembershipProof>((w, m) => { w.I64(m.Step); w.Str(m.Nonce); w.Str(m.Address); Strs(w, m.ClusterRoles); Sig(w, m.By); },
            (ref WireReader r, byte v) => new MembershipProof(r.I64(), r.Str(), r.Str(), Strs(ref r)) { By = Sig(ref r, v) });
        Add<HostExpert>((w, m) => { w.I64(m.Step); w.I32(m.Expert); Spec(w, m.Spec); w.U8(m.Recover ? (byte)1 : (byte)0); },
            (ref WireReader r, byte _) => new HostExpert(r.I64(), r.I32(), Spec(ref r), Bool(ref r)));
        Add<ExpertHosted>((w, m) => { w.I64(m.Step); w.I32(m.Expert); ActorRef(w, m.Ref); w.Str(m.Node); w.Str(m.Device); },
            (ref WireReader r, byte _) => new ExpertHosted(r.I64(), r.I32(), ActorRef(ref r), r.Str(), r.Str()));
        Add<OwnerFailure>((w, m) => { w.I64(m.Step); w.Str(m.Owner); w.Str(m.Error); w.U8(m.Restarted ? (byte)1 : (byte)0); w.U8((byte)m.Phase); },
            (ref WireReader r, byte v) => new OwnerFailure(r.I64(), r.Str(), r.Str(), Bool(ref r), v >= 4 ? Phase(ref r) : StepPhase.Other));
        Add<UseExperts>((w, m) => { w.I64(m.Step); w.U32((uint)m.Experts.Count); foreach (var a in m.Experts) ActorRef(w, a); },
            (ref WireReader r, byte _) =>
            {
                long step = r.I64();
                var refs = new IActorRef[r.Count(4)];
                for (int i = 0; i < refs.Length; i++) refs[i] = ActorRef(ref r);
                return new UseExperts(step, refs);
            });
        Add<GetExperts>((w, m) => w.I64(m.Step), (ref WireReader r, byte _) => new GetExperts(r.I64()));
        Add<ExpertsStatus>((w, m) =>
        {
            w.I64(m.Step); w.I64(m.CommittedStep); w.U32((uint)m.Experts.Count);
            foreach (var e in m.Experts) { w.I32(e.Expert); w.Str(e.Node); w.Str(e.Device); w.I64(e.TokensLastStep); w.Str(e.State); }
        }, (ref WireReader r, byte _) =>
        {
            long step = r.I64(), committed = r.I64();
            var experts = new ExpertInfo[r.Count(28)];
            for (int i = 0; i < experts.Length; i++) experts[i] = new ExpertInfo(r.I32(), r.Str(), r.Str(), r.I64(), r.Str());
            return new ExpertsStatus(step, committed, experts);
        });
        Add<DrainNode>((w, m) => { w.I64(m.Step); w.Str(m.Node); Sig(w, m.By); }, (ref WireReader r, byte v) => new DrainNode(r.I64(), r.Str()) { By = Sig(ref r, v) });
        Add<NodeDrained>((w, m) => { w.I64(m.Step); w.Str(m.Node); IntList(w, m.Moved); w.Str(m.Error); },
            (ref WireReader r, byte _) => new NodeDrained(r.I64(), r.Str(), IntList(ref r), r.Str()));
        Add<StopExpert>((w, m) => { w.I64(m.Step); w.Str(m.RunId); w.I32(m.Expert); }, (ref WireReader r, byte _) => new StopExpert(r.I64(), r.Str(), r.I32()));
        Add<AddExperts>((w, m) => { w.I64(m.Step); w.I32(m.Count); w.Str(m.Node); w.I64(m.AtStep); Sig(w, m.By); },
            (ref WireReader r, byte v) => new AddExperts(r.I64(), r.I32(), r.Str(), r.I64()) { By = Sig(ref r, v) });
        Add<ExpertsAddedReply>((w, m) => { w.I64(m.Step); IntList(w, m.Added); IntList(w, m.Sources); w.Str(m.Error); },
            (ref WireReader r, byte _) => new ExpertsAddedReply(r.I64(), IntList(ref r), IntList(ref r), r.Str()));
        Add<KillNode>((w, m) => w.I64(m.Step), (ref WireReader r, byte _) => new KillNode(r.I64()));
        Add<ExpertLost>((w, m) => { w.I64(m.Step); w.I32(m.Expert); }, (ref WireReader r, byte _) => new ExpertLost(r.I64(), r.I32()));

        // journal events and snapshots
        Add<CheckpointCommitted>(Commit, (ref WireReader r, byte v) => Commit(ref r, v));
        Add<ExpertsSlow>((w, m) => { w.I64(m.Step); w.I32(m.Generation); w.I32(m.Block); IntList(w, m.Experts); w.F64(m.WaitedMs); },
            (ref WireReader r, byte _) => new ExpertsSlow(r.I64(), r.I32(), r.I32(), IntList(ref r), r.F64()));
        Add<ChaosFired>((w, m) => { w.I64(m.Step); w.Str(m.Owner); w.Str(m.Kind); w.Str(m.Detail); },
            (ref WireReader r, byte _) => new ChaosFired(r.I64(), r.Str(), r.Str(), r.Str()));
        Add<ExpertsAdded>((w, m) => { w.I64(m.Step); w.I32(m.From); IntList(w, m.Sources); w.Str(m.Node); Commit(w, m.Commit); },
            (ref WireReader r, byte v) => new ExpertsAdded(r.I64(), r.I32(), IntList(ref r), r.Str(), Commit(ref r, v)));
        Add<RecoveryRecord>(Recovery, (ref WireReader r, byte v) => Recovery(ref r, v));
        Add<Incarnation>((w, m) => { w.I64(m.Step); w.I32(m.Number); }, (ref WireReader r, byte _) => new Incarnation(r.I64(), r.I32()));
        Add<ExpertActor.ExpertSnapshot>((w, m) => { w.I64(m.Step); Ref(w, m.Ref); }, (ref WireReader r, byte _) => new ExpertActor.ExpertSnapshot(r.I64(), Ref(ref r)));
    }

    private static WireEncoding Encoding(ExtendedActorSystem system)
    {
        var name = system.Settings.Config.GetString("moce.wire.tensor-encoding", "fp32");
        return name switch
        {
            "fp32" => WireEncoding.Raw,
            "bf16" => WireEncoding.Bf16,
            _ => throw new Akka.Configuration.ConfigurationException($"moce.wire.tensor-encoding: expected fp32 or bf16, got '{name}'"),
        };
    }

    private void Add<T>(Action<WireWriter, T> write, ReadBody read)
    {
        var manifest = typeof(T).Name;
        writers.Add(typeof(T), (manifest, (w, o) => write(w, (T)o)));
        readers.Add(manifest, read);
    }

    /// <summary>The types this serializer carries (hocon/akka.conf must bind each of them).</summary>
    public IEnumerable<Type> Types => writers.Keys;

    public override string Manifest(object o) =>
        writers.TryGetValue(o.GetType(), out var x) ? x.manifest : throw new ArgumentException($"{o.GetType()} has no wire format");

    public override byte[] ToBinary(object obj)
    {
        if (!writers.TryGetValue(obj.GetType(), out var x)) throw new ArgumentException($"{obj.GetType()} has no wire format");
        using var w = new WireWriter();
        w.U8(BodyVersion);
        x.write(w, obj);
        var bytes = w.ToArray();
        WireTraffic.Count(x.manifest, bytes.Length, sent: true);
        return bytes;
    }

    public override object FromBinary(byte[] bytes, string manifest)
    {
        if (!readers.TryGetValue(manifest, out var read)) throw new WireFormatException($"unknown wire manifest '{manifest}'");
        WireTraffic.Count(manifest, bytes.Length, sent: false);
        var r = new WireReader(bytes, manifest);
        try
        {
            byte version = r.U8();
            if (version is 0 or > BodyVersion) throw r.Bad($"body version {version} is not supported (this build reads 1..{BodyVersion})");
            var message = read(ref r, version);
            r.End();
            return message;
        }
        catch (WireFormatException e)
        {
            r.DisposeDecoded();                                                  // what the bad frame held so far
            if (JournalEvents.Contains(manifest)) throw;
            return new MalformedFrame(manifest, e.Message);
        }
    }

    /// <summary>The manifests of journal events and snapshots: one that does not parse must fail the recovery, never
    /// be skipped.</summary>
    private static readonly HashSet<string> JournalEvents =
        [nameof(CheckpointCommitted), nameof(ChaosFired), nameof(ExpertsAdded), nameof(RecoveryRecord), nameof(Incarnation), nameof(ExpertActor.ExpertSnapshot)];

    /// <summary>Writes a message's tensor and, the message having left this process, disposes it.</summary>
    private void Tensor(WireWriter w, torch.Tensor t)
    {
        TensorFrame.Write(w, t, encoding);
        t.Dispose();
    }

    private static void Commit(WireWriter w, CheckpointCommitted m)
    {
        w.I64(m.Step);
        w.U32((uint)m.Manifest.Count);
        foreach (var p in m.Manifest) Ref(w, p);
        w.U8(m.Window is null ? (byte)0 : (byte)1);
        if (m.Window is null) return;
        w.U32((uint)m.Window.Count);
        foreach (var t in m.Window)
        {
            w.I64(t.Step);
            w.U32((uint)t.Tokens.Count);
            foreach (var n in t.Tokens) w.I64(n);
        }
    }

    private static CheckpointCommitted Commit(ref WireReader r, byte version)
    {
        long step = r.I64();
        var parts = new CheckpointRef[r.Count(20)];
        for (int i = 0; i < parts.Length; i++) parts[i] = Ref(ref r);
        if (version < 2 || r.U8() == 0) return new CheckpointCommitted(step, parts);
        var window = new RoutedTokens[r.Count(12)];
        for (int i = 0; i < window.Length; i++)
        {
            long s = r.I64();
            var tokens = new long[r.Count(8)];
            for (int e = 0; e < tokens.Length; e++) tokens[e] = r.I64();
            window[i] = new RoutedTokens(s, tokens);
        }
        return new CheckpointCommitted(step, parts, window);
    }

    private static void IntList(WireWriter w, IReadOnlyList<int> list)
    {
        w.U32((uint)list.Count);
        foreach (var x in list) w.I32(x);
    }
    private static int[] IntList(ref WireReader r)
    {
        var list = new int[r.Count(4)];
        for (int i = 0; i < list.Length; i++) list[i] = r.I32();
        return list;
    }

    private static void Ref(WireWriter w, CheckpointRef r) { w.Str(r.Owner); w.I64(r.Step); w.Str(r.File); w.Str(r.Sha256); }
    private static CheckpointRef Ref(ref WireReader r) => new(r.Str(), r.I64(), r.Str(), r.Str());

    private void ActorRef(WireWriter w, IActorRef a) => w.Str(a.IsNobody() ? "" : Akka.Serialization.Serialization.SerializedActorPath(a));   // "": Nobody
    private IActorRef ActorRef(ref WireReader r)
    {
        var path = r.Str();
        if (path.Length == 0) return ActorRefs.Nobody;
        try { return system.Provider.ResolveActorRef(path); }
        catch (Exception e) when (e is FormatException or UriFormatException or ArgumentException) { throw r.Bad($"actor path '{path}': {e.Message}"); }
    }

    private static bool Bool(ref WireReader r) => r.U8() switch { 0 => false, 1 => true, var b => throw r.Bad($"boolean byte {b}") };

    private static void Sig(WireWriter w, Security.CommandSignature s) { w.Str(s.Certificate); w.I64(s.IssuedAtMs); w.Str(s.Signature); }

    /// <summary>A control command's signature; before version 3 there was none.</summary>
    private static Security.CommandSignature Sig(ref WireReader r, byte version) =>
        version < 3 ? Security.CommandSignature.None : new Security.CommandSignature(r.Str(), r.I64(), r.Str());

    private static void Strs(WireWriter w, IReadOnlyList<string> list)
    {
        w.U32((uint)list.Count);
        foreach (var x in list) w.Str(x);
    }
    private static string[] Strs(ref WireReader r)
    {
        var list = new string[r.Count(4)];
        for (int i = 0; i < list.Length; i++) list[i] = r.Str();
        return list;
    }

    /// <summary>An expert spec: the configuration records as JSON (they are plain records of numbers, strings and
    /// enums, and JSON names their fields, so a field added later reads back with its default), then the paths.</summary>
    private static void Spec(WireWriter w, ExpertSpec s)
    {
        w.Str(s.RunId);
        w.Str(JsonSerializer.Serialize(s.Model)); w.Str(JsonSerializer.Serialize(s.Moe)); w.Str(JsonSerializer.Serialize(s.Train));
        w.Str(s.Store); Ref(w, s.Initial); w.I32((int)s.Policy);
    }
    private static ExpertSpec Spec(ref WireReader r)
    {
        var runId = r.Str();
        var model = Json<MaeConfig>(ref r); var moe = Json<MoeConfig>(ref r); var train = Json<TrainConfig>(ref r);
        var store = r.Str();
        var initial = Ref(ref r);
        int policy = r.I32();
        if (!Enum.IsDefined((RecoveryPolicy)policy)) throw r.Bad($"recovery policy {policy}");
        return new ExpertSpec(runId, model, moe, train, store, initial, (RecoveryPolicy)policy);
    }
    private static T Json<T>(ref WireReader r)
    {
        var text = r.Str();
        try { return JsonSerializer.Deserialize<T>(text) ?? throw r.Bad($"{typeof(T).Name} is null"); }
        catch (JsonException e) { throw r.Bad($"{typeof(T).Name}: {e.Message}"); }
    }

    private static void Ints(WireWriter w, IReadOnlySet<int> set)
    {
        w.U32((uint)set.Count);
        foreach (var i in set.Order()) w.I32(i);
    }
    private static HashSet<int> Ints(ref WireReader r)
    {
        var set = new HashSet<int>();
        for (int i = r.Count(4); i > 0; i--) set.Add(r.I32());
        return set;
    }

    private static void Stats(WireWriter w, StepStats s) { w.I64(s.Step); w.F64(s.Loss); w.F64(s.Lr); w.F64(s.GradNorm); w.I32(s.Images); }
    private static StepStats Stats(ref WireReader r) => new(r.I64(), r.F64(), r.F64(), r.F64(), r.I32());

    private static void Recovery(WireWriter w, RecoveryRecord m)
    {
        w.I64(m.Step); w.Str(m.Owner); w.Str(m.Policy); w.Str(m.Error); w.I64(m.RestoredStep); w.I64(m.StepsReplayed);
        w.F64(m.DetectionToRecoveredMs); w.I32(m.ReroutedImages); w.I64(m.StepsMissed); w.Str(m.Fallback);
    }
    private static RecoveryRecord Recovery(ref WireReader r, byte version) =>
        new(r.I64(), r.Str(), r.Str(), r.Str(), r.I64(), r.I64(), r.F64(), r.I32(), r.I64(), version >= 4 ? r.Str() : "");

    private static StepPhase Phase(ref WireReader r)
    {
        byte p = r.U8();
        return Enum.IsDefined((StepPhase)p) ? (StepPhase)p : throw r.Bad($"step phase {p}");
    }

    private static void Recoveries(WireWriter w, IReadOnlyList<RecoveryRecord> list)
    {
        w.U32((uint)list.Count);
        foreach (var x in list) Recovery(w, x);
    }
    private static RecoveryRecord[] Recoveries(ref WireReader r, byte version)
    {
        var list = new RecoveryRecord[r.Count(60)];
        for (int i = 0; i < list.Length; i++) list[i] = Recovery(ref r, version);
        return list;
    }
}
