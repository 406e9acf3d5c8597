using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Akka.Actor;
using Akka.Cluster;
using MoCE.Actors.Placement;

namespace MoCE.Actors.Tests;

/// <summary>Remoting over mutual TLS: nodes with the cluster's certificate form a cluster over real TCP on 127.0.0.1;
/// a node with another certificate (self-signed, same subject) cannot join, and the seed logs the rejected handshake.</summary>
public sealed class ClusterTlsTests : IDisposable
{
    private readonly string dir = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "moce-tls-" + Guid.NewGuid().ToString("N"))).FullName;
    private readonly List<ActorSystem> systems = [];

    public void Dispose()
    {
        foreach (var s in systems) s.Terminate().Wait(TimeSpan.FromSeconds(20));
        Directory.Delete(dir, recursive: true);
    }

    /// <summary>A self-signed certificate with its key, as a PKCS#12 file protected by the password.</summary>
    private string Certificate(string name, string password)
    {
        using var key = RSA.Create(2048);
        var req = new CertificateRequest("CN=moce-cluster", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        using var cert = req.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30));
        var path = Path.Combine(dir, name + ".pfx");
        File.WriteAllBytes(path, cert.Export(X509ContentType.Pkcs12, password));
        return path;
    }


    private ActorSystem Node(int port, int seed, string certificate)
    {
        var o = new NodeOptions([NodeRoles.Coordinator], "127.0.0.1", port, [$"127.0.0.1:{seed}"], ["cpu"], 1, 1, certificate);
        var system = ClusterNode.CreateSystem(o, ClusterNode.Config(o, ActorEngine.AkkaConfig()));
        systems.Add(system);
        Cluster.Get(system).JoinSeedNodes(o.SeedAddresses);
        return system;
    }

    private static bool Eventually(Func<bool> condition, TimeSpan timeout)
    {
        var end = DateTime.UtcNow + timeout;
        while (DateTime.UtcNow < end) { if (condition()) return true; Thread.Sleep(100); }
        return condition();
    }

    [Fact]
    public void Only_nodes_with_the_cluster_certificate_can_join()
    {
        const string password = "correct horse";
        var cluster = Certificate("cluster", password);
        var stranger = Certificate("stranger", password);
        Environment.SetEnvironmentVariable(NodeOptions.TlsPasswordVariable, password);
        int seedPort = ClusterNode.FreeLoopbackPort();
        var seed = Node(seedPort, seedPort, cluster);
        var logs = new List<string>();
        var listener = seed.ActorOf(Props.Create(() => new LogListener(logs)));
        seed.EventStream.Subscribe(listener, typeof(Akka.Event.LogEvent));

        var member = Node(ClusterNode.FreeLoopbackPort(), seedPort, cluster);
        Assert.True(Eventually(() => Cluster.Get(seed).State.Members.Count(m => m.Status == MemberStatus.Up) == 2, TimeSpan.FromSeconds(30)),
            "a node with the cluster's certificate joins over TLS:\n" + Logs(logs));

        var intruder = Node(ClusterNode.FreeLoopbackPort(), seedPort, stranger);
        Assert.False(Eventually(() => Cluster.Get(seed).State.Members.Count >= 3 || Cluster.Get(intruder).State.Members.Count > 0, TimeSpan.FromSeconds(12)),
            "a node with another certificate must not join");
        Assert.Equal(2, Cluster.Get(seed).State.Members.Count);
        lock (logs) Assert.Contains(logs, l => l.Contains("certificate", StringComparison.OrdinalIgnoreCase) || l.Contains("TLS", StringComparison.Ordinal) || l.Contains("SSL", StringComparison.Ordinal));
        Assert.NotNull(member);
    }

    private static string Logs(List<string> logs) { lock (logs) return string.Join("\n", logs.TakeLast(30)); }

    private sealed class LogListener : ReceiveActor
    {
        public LogListener(List<string> logs) => Receive<Akka.Event.LogEvent>(e => { lock (logs) logs.Add(e.ToString()); });
    }
}
