using Akka.Actor;
using Akka.Configuration;
using Akka.Serialization;
using MoCE.Actors.Messages;
using MoCE.Actors.Wire;
using MoCE.Core.Tests;
using static TorchSharp.torch;

namespace MoCE.Actors.Tests;

/// <summary>Messages between two actor systems over real TCP on 127.0.0.1: a tensor arrives bit for bit, and a
/// malformed frame is dropped with a log line while the receiving node and the association keep working.</summary>
public sealed class RemoteWireTests
{
    /// <summary>The receiving node's own log, from its event stream.</summary>
    private sealed class Capture : ReceiveActor
    {
        public Capture(List<string> messages) => Receive<Akka.Event.LogEvent>(e => { lock (messages) messages.Add($"{e.LogLevel()} {e.Message} {e.Cause?.Message}"); });
    }

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

    /// <summary>Answers ExpertForward with its input + 1 (as an expert answers with its output), and "ping" with "pong".</summary>
    private sealed class Echo : ReceiveActor
    {
        public Echo()
        {
            Receive<ExpertForward>(m => { Sender.Tell(new ExpertOutput(m.Step, m.Generation, m.Block, 0, m.Input + 1)); m.Input.Dispose(); });
            Receive<string>(_ => Sender.Tell("pong"));
        }
    }

    private static ActorSystem Node(string name, string extra = "") => ActorSystem.Create(name,
        ConfigurationFactory.ParseString("akka.actor.provider = remote\n" + extra).WithFallback(ActorEngine.AkkaConfig()));

    [Fact]
    public async Task A_tensor_crosses_bit_for_bit_and_a_malformed_frame_is_dropped_while_the_node_keeps_running()
    {
        using var receiver = Node("receiver");
        var logged = new List<string>();
        var log = receiver.ActorOf(Props.Create(() => new Capture(logged)));
        receiver.EventStream.Subscribe(log, typeof(Akka.Event.Warning));
        receiver.EventStream.Subscribe(log, typeof(Akka.Event.Error));
        using var sender = Node("sender");
        using var impostor = Node("impostor", $$"""
            akka.actor.serializers.moce-wire = "{{typeof(Impostor).AssemblyQualifiedName}}"
            akka.actor.serialization-bindings { "{{typeof(Garbage).AssemblyQualifiedName}}" = moce-wire }
            """);
        try
        {
            receiver.ActorOf(Props.Create(() => new Echo()), "expert-0");
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
                impostorRef.Tell(new Garbage(bytes));
            Assert.Equal("pong", await impostorRef.Ask<string>("ping", timeout));   // same association, after the bad frames
            Assert.Equal("pong", await sender.ActorSelection(path).Ask<string>("ping", timeout));
            reply.Output.Dispose();

            var deadline = DateTime.UtcNow + timeout;
            while (DateTime.UtcNow < deadline && logged.Count(m => m.Contains(nameof(ExpertForward))) < 3) await Task.Delay(50);
            lock (logged)
                Assert.True(logged.Count(m => m.Contains(nameof(ExpertForward)) && m.Contains("deserializ", StringComparison.OrdinalIgnoreCase)) >= 3,
                    "each dropped frame is logged:\n" + string.Join("\n", logged));
        }
        finally
        {
            foreach (var s in new[] { impostor, sender, receiver }) await s.Terminate().WaitAsync(TimeSpan.FromSeconds(10));
        }
    }
}
