using System.Security.Cryptography.X509Certificates;
using Akka.Actor;
using MoCE.Actors.Messages;
using MoCE.Actors.Security;
using MoCE.Core.Tests;

namespace MoCE.Actors.Tests;

/// <summary>With TLS, a run obeys drain, add and stop only when a certificate of the cluster CA with an allowed role signed
/// exactly that command, recently, once. Refused commands change nothing: the run equals an undisturbed one bit for bit.</summary>
public class ControlAuthorizationTests(MoceFixture fx) : IClassFixture<MoceFixture>
{
    private static readonly TimeSpan Window = TimeSpan.FromMinutes(5);
    private static readonly X509Certificate2 Ca = ClusterCertificates.CreateCa("test-ca", TimeSpan.FromDays(30));
    private static readonly X509Certificate2 Operator = ClusterCertificates.Issue(Ca, "alice", PeerRole.Operator, TimeSpan.FromDays(10));
    private static readonly X509Certificate2 Node = ClusterCertificates.Issue(Ca, "node-1", PeerRole.Node, TimeSpan.FromDays(10));
    private static readonly X509Certificate2 Coordinator = ClusterCertificates.Issue(Ca, "coordinator-1", PeerRole.Coordinator, TimeSpan.FromDays(10));

    private static ControlAuthorizer Authorizer(params string[] revoked) => new(new ClusterTrust(Ca, revoked), Window);

    [Fact]
    public void A_command_is_obeyed_only_signed_by_an_allowed_role_over_itself_recently_and_once()
    {
        var now = DateTimeOffset.UtcNow;
        var auth = Authorizer(ClusterCertificates.NormalizeSerial(Node.SerialNumber) + "FF");   // a serial that is no one's
        var drain = new DrainNode(-1, "akka.ssl.tcp://moce@10.0.0.2:4553");
        var signed = ControlSigning.Sign(drain, Operator, now);
        var v = auth.Check(signed, now);
        Assert.True(v.Accepted, v.Reason);
        Assert.Equal(PeerRole.Operator, v.Role);
        Assert.Contains("replayed", auth.Check(signed, now.AddSeconds(1)).Reason);

        string Refusal(IControlCommand c, DateTimeOffset at) { var r = Authorizer().Check(c, at); Assert.False(r.Accepted); return r.Reason; }
        Assert.Contains("unsigned", Refusal(drain, now));
        Assert.Contains("needs the moce-operator role", Refusal(ControlSigning.Sign(drain, Node, now), now));
        Assert.Contains("does not match the command", Refusal(signed with { Node = "akka.ssl.tcp://moce@10.0.0.3:4553" }, now));   // another node, same signature
        Assert.Contains("outside the 300 s window", Refusal(ControlSigning.Sign(drain, Operator, now.AddMinutes(-6)), now));
        var add = new AddExperts(-1, 1, "", -1);
        Assert.Contains("does not match the command", Refusal(ControlSigning.Sign(add, Operator, now) with { Count = 50 }, now));
        using var otherCa = ClusterCertificates.CreateCa("test-ca", TimeSpan.FromDays(30));
        using var forged = ClusterCertificates.Issue(otherCa, "alice", PeerRole.Operator, TimeSpan.FromDays(10));
        Assert.Contains("does not chain to the cluster CA", Refusal(ControlSigning.Sign(add, forged, now), now));
        var revoked = Authorizer(ClusterCertificates.NormalizeSerial(Operator.SerialNumber)).Check(ControlSigning.Sign(add, Operator, now), now);
        Assert.Contains("revoked", revoked.Reason);
        // a coordinator may stop a run (its Ctrl-C or SIGTERM), and an operator; an expert node may not
        Assert.True(Authorizer().Check(ControlSigning.Sign(new SupervisorActor.StopAndCommit(), Coordinator, now), now).Accepted);
        Assert.True(Authorizer().Check(ControlSigning.Sign(new SupervisorActor.StopAndCommit(), Operator, now), now).Accepted);
        Assert.Contains("may not stop-and-commit: it needs the moce-operator or moce-coordinator role", Refusal(ControlSigning.Sign(new SupervisorActor.StopAndCommit(), Node, now), now));
        Assert.Contains("may not drain-node", Refusal(ControlSigning.Sign(drain, Coordinator, now), now));
    }

    /// <summary>A run whose supervisor checks control commands: unsigned or node-signed drain and add, and an unsigned
    /// or node-signed stop, are refused with the reason while it trains, and it trains on to its end with the weights of a run nobody
    /// disturbed. An operator's signed add and stop are then obeyed (the mechanism is not simply off).</summary>
    [Fact]
    public async Task Refused_commands_leave_the_run_bit_for_bit_as_an_undisturbed_one()
    {
        var moe = MoceFixture.Moe with { Layers = [0, 1] };
        var train = Tiny.Train(steps: 30);
        var quiet = new ActorRun(fx, moe, train) { Control = Authorizer() };
        Assert.Equal(30, quiet.Run(until: 30, checkpointEvery: 10).Step);

        var disturbed = new ActorRun(fx, moe, train) { Control = Authorizer() };
        var bound = TimeSpan.FromSeconds(30);
        Task<string>[] asked = [];
        var done = disturbed.Run(until: 30, checkpointEvery: 10, started: s =>       // sent while it starts and trains
        {
            var now = DateTimeOffset.UtcNow;
            asked =
            [
                s.Ask<ExpertsAddedReply>(new AddExperts(-1, 1, "", -1), bound).ContinueWith(t => t.Result.Error, TaskScheduler.Default),
                s.Ask<ExpertsAddedReply>(ControlSigning.Sign(new AddExperts(-1, 1, "", -1), Node, now), bound).ContinueWith(t => t.Result.Error, TaskScheduler.Default),
                s.Ask<NodeDrained>(ControlSigning.Sign(new DrainNode(-1, "akka.tcp://moce@127.0.0.1:1"), Node, now), bound).ContinueWith(t => t.Result.Error, TaskScheduler.Default),
                s.Ask<RunStopping>(ControlSigning.Sign(new SupervisorActor.StopAndCommit(), Node, now), bound).ContinueWith(t => t.Result.Error, TaskScheduler.Default),
            ];
            s.Tell(new SupervisorActor.StopAndCommit());
        });
        Assert.Equal(30, done.Step);                                                 // the unsigned stop did not stop it
        var replies = await Task.WhenAll(asked).WaitAsync(bound);
        Assert.Contains("refused: (unsigned) sent add-experts unsigned", replies[0]);
        Assert.Contains("refused: node-1 (moce-node", replies[1]);
        Assert.Contains("may not add-experts", replies[1]);
        Assert.Contains("may not drain-node", replies[2]);
        Assert.Contains("may not stop-and-commit", replies[3]);
        var a = quiet.CommittedWeights(30);
        var b = disturbed.CommittedWeights(30);
        Assert.Equal(a.Keys.Order(), b.Keys.Order());
        foreach (var (name, t) in a) Assert.True(Tiny.Same(t, b[name]), $"{name} differs from the undisturbed run");

        // an operator's signed add is obeyed
        var obeyed = new ActorRun(fx, moe, Tiny.Train(steps: 20)) { Control = Authorizer() };
        Task<ExpertsAddedReply>? adding = null;
        obeyed.Run(until: 20, checkpointEvery: 10,
            started: s => adding = s.Ask<ExpertsAddedReply>(ControlSigning.Sign(new AddExperts(-1, 1, "", 12), Operator, DateTimeOffset.UtcNow), bound));
        var added = await adding!.WaitAsync(bound);
        Assert.True(added.Error.Length == 0, added.Error);
        Assert.Single(added.Added);

        // and an operator's signed stop: answered without an error, the run commits and ends before its last step
        var stopped = new ActorRun(fx, moe, Tiny.Train(steps: 20)) { Control = Authorizer() };
        Task<RunStopping>? stopping = null;
        var end = stopped.Run(until: 20, checkpointEvery: 10,
            started: s => stopping = s.Ask<RunStopping>(ControlSigning.Sign(new SupervisorActor.StopAndCommit(), Operator, DateTimeOffset.UtcNow), bound));
        var answer = await stopping!.WaitAsync(bound);
        Assert.True(answer.Error.Length == 0, answer.Error);
        Assert.True(end.Step < 20, $"the operator's stop should end the run early; it ran to {end.Step}");
    }

    /// <summary>A cluster client wraps its message in an envelope Akka writes as JSON (Newtonsoft), with the command
    /// inside it: a signed command must come out of that whole, signature included, and still verify. (Computed members
    /// of a command were once written there and could not be read back: drain and add never arrived.)</summary>
    [Fact]
    public void A_signed_command_survives_the_cluster_client_s_json_envelope_and_still_verifies()
    {
        using var system = ActorSystem.Create("json-envelope", ActorEngine.AkkaConfig());
        var json = new Akka.Serialization.NewtonSoftJsonSerializer((ExtendedActorSystem)system);
        var now = DateTimeOffset.UtcNow;
        object[] commands = [ControlSigning.Sign(new DrainNode(-1, "akka.ssl.tcp://moce@10.0.0.2:4553"), Operator, now),
                             ControlSigning.Sign(new AddExperts(-1, 2, "", 40), Operator, now), new SupervisorActor.StopAndCommit()];
        foreach (var c in commands)
        {
            var back = json.FromBinary(json.ToBinary(new Akka.Cluster.Tools.Client.ClusterClient.Send("/user/run-proxy", c)), typeof(Akka.Cluster.Tools.Client.ClusterClient.Send));
            var inner = Assert.IsAssignableFrom<IControlCommand>(((Akka.Cluster.Tools.Client.ClusterClient.Send)back).Message);
            Assert.Equal(c, inner);
            if (inner.By.Signature.Length > 0) Assert.True(Authorizer().Check(inner, now).Accepted);
        }
    }

    /// <summary>10,000 seeded mutations of signed control commands and membership proofs (bits flipped, truncated, lying lengths, noise) on the
    /// wire: each decodes to a command the authorizer judges, or fails as a wire error, and nothing else; and no mutation
    /// is obeyed as a command other than the one the operator signed.</summary>
    [Fact]
    public void Ten_thousand_mutated_control_commands_crash_nothing_and_none_is_obeyed_as_another_command()
    {
        using var system = ActorSystem.Create("fuzz-control", ActorEngine.AkkaConfig());
        var serializer = (Wire.WireSerializer)system.Serialization.FindSerializerForType(typeof(DrainNode));
        var now = DateTimeOffset.UtcNow;
        IControlCommand[] commands =
        [
            ControlSigning.Sign(new DrainNode(-1, "akka.ssl.tcp://moce@10.0.0.2:4553"), Operator, now),
            ControlSigning.Sign(new AddExperts(-1, 2, "akka.ssl.tcp://moce@10.0.0.3:4553", 40), Operator, now),
            ControlSigning.Sign(new SupervisorActor.StopAndCommit(), Coordinator, now),
            ControlSigning.Sign(new MembershipProof(-1, "00112233445566778899AABBCCDDEEFF", "akka.ssl.tcp://moce@10.0.0.4:4553", ["experts"]), Node, now),
        ];
        var valid = commands.Select(c => (manifest: serializer.Manifest(c), bytes: serializer.ToBinary(c), canonical: c.Canonical())).ToList();
        var rng = new Random(20261203);
        int decoded = 0, rejected = 0, obeyed = 0;
        for (int i = 0; i < 10_000; i++)
        {
            var (manifest, original, canonical) = valid[rng.Next(valid.Count)];
            var bytes = (byte[])original.Clone();
            switch (i % 4)
            {
                case 0: for (int k = rng.Next(1, 9); k > 0; k--) bytes[rng.Next(bytes.Length)] ^= (byte)(1 << rng.Next(8)); break;
                case 1: bytes = bytes[..rng.Next(bytes.Length)]; break;
                case 2: BitConverter.TryWriteBytes(bytes.AsSpan(rng.Next(bytes.Length - 3), 4), rng.Next(2) == 0 ? uint.MaxValue : (uint)rng.Next(1 << 16)); break;
                default: rng.NextBytes(bytes.AsSpan(rng.Next(bytes.Length))); break;      // noise from somewhere to the end
            }
            object m;
            try { m = serializer.FromBinary(bytes, manifest); }
            catch (System.Runtime.Serialization.SerializationException) { rejected++; continue; }
            if (m is Wire.MalformedFrame) { rejected++; continue; }
            decoded++;
            var v = Authorizer().Check((IControlCommand)m, now);                     // a verdict, never an exception
            if (!v.Accepted) continue;
            obeyed++;
            Assert.Equal(canonical, ((IControlCommand)m).Canonical());                 // what is obeyed is what was signed
        }
        Assert.Equal(10_000, decoded + rejected);
        Assert.True(decoded > 1_000 && obeyed < decoded / 2, $"{decoded} decoded, {obeyed} of them obeyed, {rejected} rejected");
    }
}
