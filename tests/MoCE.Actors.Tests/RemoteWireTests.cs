using Akka.Actor;
using Akka.Configuration;
using Akka.Serialization;
using MoCE.Actors.Messages;
using MoCE.Actors.Wire;
using MoCE.Core.Tests;
using static TorchSharp.torch;

namespace MoCE.Actors.Tests;

/// <summary>Messages between two actor systems over real TCP on 127.0.0.1: a tensor arrives bit for bit, and a
/// malformed frame reaches its receiver as a MalformedFrame, with its sender, so that the sender's request fails at
/// once (not at its ask timeout), while the receiving node and the association keep working.</summary>
public sealed class RemoteWireTests
{
    /// <summary>A message that an impostor sends under the wire serializer's id and a real manifest, with bytes that
    /// are not a valid body: what a corrupted or hostile frame looks like to the receiver.</summary>
    public sealed record Garbage(byte[] Bytes);

    public sealed class Impostor(ExtendedActorSystem system) : SerializerWithStringManifest(system)
    {
        public override int Identifier => WireSerializer.Id;
        public override string Manifest(object o) => nameof(ExpertForward);
        public override byte[] ToBinary(object obj) => ((Garbage)obj).Bytes;
        public override object FromBinary(byte[] bytes, string manifest) => throw new NotSupportedException();
    }

    /// <summary>Answers ExpertForward with its input + 1 (as an expert answers with its output), and "ping" with "pong";
    /// a malformed frame with a failure, as every owner does (its own failure then recovers the step).</summary>
    private sealed class Echo : ReceiveActor
    {
        public Echo(List<string> malformed)
        {
            Receive<MalformedFrame>(m =>
            {
                var e = m.Failure(Sender);
                lock (malformed) malformed.Add(e.Message);
                Sender.Tell(new Status.Failure(new InvalidDataException(e.Message)));
            });
            Receive<ExpertForward>(m => { Sender.Tell(new ExpertOutput(m.Step, m.Generation, m.Block, 0, m.Input + 1)); m.Input.Dispose(); });
            Receive<string>(_ => Sender.Tell("pong"));
        }
    }

    private static ActorSystem Node(string name, string extra = "") => ActorSystem.Create(name,
        ConfigurationFactory.ParseString("akka.actor.provider = remote\n" + extra).WithFallback(ActorEngine.AkkaConfig()));

    [Fact]
    public async Task A_tensor_crosses_bit_for_bit_and_a_malformed_frame_fails_its_request_at_once_while_the_node_keeps_running()
    {
        using var receiver = Node("receiver");
        using var sender = Node("sender");
        using var impostor = Node("impostor", $$"""
            akka.actor.serializers.moce-wire = "{{typeof(Impostor).AssemblyQualifiedName}}"
            akka.actor.serialization-bindings { "{{typeof(Garbage).AssemblyQualifiedName}}" = moce-wire }
            """);
        try
        {
            var malformed = new List<string>();
            receiver.ActorOf(Props.Create(() => new Echo(malformed)), "expert-0");
            var address = ((ExtendedActorSystem)receiver).Provider.DefaultAddress;
            var path = $"{address}/user/expert-0";
            var timeout = TimeSpan.FromSeconds(20);

            using var input = randn([6, 4, 8], generator: new Generator(5));
            var sent = input.clone();
            var reply = await sender.ActorSelection(path).Ask<ExpertOutput>(new ExpertForward(3, 1, 1, sent), timeout);
            Assert.True(sent.IsInvalid);                                       // the sender's handle went with the message
            using var expected = input + 1;
            Assert.True(Tiny.Same(expected, reply.Output), "the tensor changed on its way");
            Assert.Equal((3L, 1, 1), (reply.Step, reply.Generation, reply.Block));

            var rng = new Random(7);
            var valid = ((WireSerializer)sender.Serialization.FindSerializerForType(typeof(ExpertForward))).ToBinary(new ExpertForward(4, 1, 1, ones(2, 3)));
            var impostorRef = await impostor.ActorSelection(path).ResolveOne(timeout);
            foreach (var bytes in new[] { valid[..(valid.Length / 2)], valid.Select(b => (byte)(b ^ 0x5a)).ToArray(), Enumerable.Range(0, 64).Select(_ => (byte)rng.Next(256)).ToArray() })
            {
                // the request fails within a second with the receiver's answer (an ask timeout would be a TaskCanceledException)
                var clock = System.Diagnostics.Stopwatch.StartNew();
                var failed = await Assert.ThrowsAnyAsync<Exception>(() => impostorRef.Ask<ExpertOutput>(new Garbage(bytes), TimeSpan.FromSeconds(1)));
                Assert.Contains("a malformed ExpertForward frame from akka.tcp://impostor@", failed.Message);
                Assert.True(clock.Elapsed < TimeSpan.FromSeconds(1), $"the failure took {clock.Elapsed}");
            }
            Assert.Equal("pong", await impostorRef.Ask<string>("ping", timeout));   // same association, after the bad frames
            Assert.Equal("pong", await sender.ActorSelection(path).Ask<string>("ping", timeout));
            reply.Output.Dispose();
            lock (malformed) Assert.Equal(3, malformed.Count);                        // each reached the receiver once, with its sender
        }
        finally
        {
            foreach (var s in new[] { impostor, sender, receiver }) await s.Terminate().WaitAsync(TimeSpan.FromSeconds(10));
        }
    }
}
