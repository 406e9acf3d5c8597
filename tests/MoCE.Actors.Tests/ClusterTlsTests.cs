using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Akka.Actor;
using Akka.Cluster;
using MoCE.Actors.Placement;
using MoCE.Actors.Security;
using MoCE.Core.Config;

namespace MoCE.Actors.Tests;

/// <summary>Remoting over mutual TLS with a cluster CA: nodes with certificates the CA issued form a cluster over real TCP
/// on 127.0.0.1; a node with a certificate from another CA, a revoked node and a certificate without a role cannot join,
/// and the seed logs each refusal with the peer's identity and the reason.</summary>
public sealed class ClusterTlsTests : IDisposable
{
    private const string Password = "correct horse";
    private readonly string dir = Directory.CreateDirectory(Path.Combine(Path.GetTempPath(), "moce-tls-" + Guid.NewGuid().ToString("N"))).FullName;
    private readonly List<ActorSystem> systems = [];

    public ClusterTlsTests() => Environment.SetEnvironmentVariable(NodeOptions.TlsPasswordVariable, Password);

    public void Dispose()
    {
        foreach (var s in systems) s.Terminate().Wait(TimeSpan.FromSeconds(20));
        Directory.Delete(dir, recursive: true);
    }

    /// <summary>A CA's public certificate as a PEM file.</summary>
    private string CaFile(X509Certificate2 ca, string name)
    {
        var path = Path.Combine(dir, name + ".crt");
        File.WriteAllText(path, ClusterCertificates.Pem(ca));
        return path;
    }

    /// <summary>A certificate with its key as a PKCS#12 file protected by the password.</summary>
    private string Pfx(X509Certificate2 cert, string name)
    {
        var path = Path.Combine(dir, name + ".pfx");
        File.WriteAllBytes(path, cert.Export(X509ContentType.Pkcs12, Password));
        return path;
    }

    /// <summary>Signed by <paramref name="ca"/>, with a subject of our choosing (a role or none).</summary>
    private static X509Certificate2 Crafted(X509Certificate2 ca, string subject, DateTimeOffset from, DateTimeOffset to)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        using var cert = req.Create(ca, from, to, RandomNumberGenerator.GetBytes(8));
        return cert.CopyWithPrivateKey(key);
    }

    private ActorSystem Node(int port, int seed, string certificate, string ca, IReadOnlyList<string>? revoked = null)
    {
        var o = new NodeOptions([NodeRoles.Coordinator], "127.0.0.1", port, [$"127.0.0.1:{seed}"], ["cpu"], 1, 1, certificate, ca, revoked);
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
    public void Trust_needs_the_cluster_CA_a_role_a_valid_date_and_no_revocation()
    {
        using var ca = ClusterCertificates.CreateCa("test-ca", TimeSpan.FromDays(30));
        using var other = ClusterCertificates.CreateCa("test-ca", TimeSpan.FromDays(30));   // the same name: only the key tells them apart
        using var node = ClusterCertificates.Issue(ca, "node-a", PeerRole.Node, TimeSpan.FromDays(10));
        using var op = ClusterCertificates.Issue(ca, "alice", PeerRole.Operator, TimeSpan.FromDays(10));
        using var stranger = ClusterCertificates.Issue(other, "node-a", PeerRole.Node, TimeSpan.FromDays(10));
        using var noRole = Crafted(ca, "CN=node-b, O=moce", DateTimeOffset.UtcNow.AddMinutes(-4), DateTimeOffset.UtcNow.AddDays(1));
        using var expired = Crafted(ca, "CN=node-c, OU=moce-node, O=moce", DateTimeOffset.UtcNow.AddMinutes(-4), DateTimeOffset.UtcNow.AddMinutes(-1));   // within the CA's validity, which starts 5 minutes back
        var trust = new ClusterTrust(ca, ["00" + node.SerialNumber.ToLowerInvariant()]);     // serials compare as numbers in hex

        Assert.Equal(PeerRole.Operator, new ClusterTrust(ca, []).Check(op).Role);
        Assert.True(new ClusterTrust(ca, []).Check(node).Accepted);
        var revoked = trust.Check(node);
        Assert.False(revoked.Accepted);
        Assert.Contains("revoked", revoked.Reason);
        Assert.Contains("node-a (moce-node, serial", revoked.Identity);
        Assert.Contains("does not chain to the cluster CA", trust.Check(stranger).Reason);
        Assert.Contains("names no role", trust.Check(noRole).Reason);
        Assert.Contains("does not chain to the cluster CA", trust.Check(expired).Reason);
        Assert.Contains("NotTimeValid", trust.Check(expired).Reason);
    }

    [Fact]
    public void A_node_whose_own_certificate_the_cluster_refuses_fails_at_its_start()
    {
        using var ca = ClusterCertificates.CreateCa("test-ca", TimeSpan.FromDays(30));
        using var node = ClusterCertificates.Issue(ca, "node-a", PeerRole.Node, TimeSpan.FromDays(10));
        var o = new NodeOptions([NodeRoles.Coordinator], "127.0.0.1", 0, ["127.0.0.1:1"], ["cpu"], 1, 1, Pfx(node, "node-a"), CaFile(ca, "ca"),
                                [ClusterCertificates.NormalizeSerial(node.SerialNumber)]);
        var e = Assert.Throws<ConfigException>(() => o.Validated());
        Assert.Contains("is revoked", e.Message);
        Assert.Throws<ConfigException>(() => (o with { TlsCa = "" }).Validated());

        // a certificate whose role may not join with the node's roles: a coordinator with a node's, anyone with an operator's
        using var op = ClusterCertificates.Issue(ca, "alice", PeerRole.Operator, TimeSpan.FromDays(10));
        using var coordinator = ClusterCertificates.Issue(ca, "coordinator-a", PeerRole.Coordinator, TimeSpan.FromDays(10));
        var valid = o with { TlsRevoked = [] };
        e = Assert.Throws<ConfigException>(() => valid.Validated());
        Assert.Contains("is a node certificate; a node with roles [coordinator] needs the coordinator role", e.Message);
        e = Assert.Throws<ConfigException>(() => (valid with { Roles = [NodeRoles.Experts], TlsCertificate = Pfx(op, "alice") }).Validated());
        Assert.Contains("needs the node or coordinator role", e.Message);
        _ = (valid with { Roles = [NodeRoles.Experts] }).Validated();
        _ = (valid with { Roles = [NodeRoles.Coordinator, NodeRoles.Experts], TlsCertificate = Pfx(coordinator, "coordinator-a") }).Validated();
    }

    [Fact]
    public void Only_nodes_with_certificates_of_the_cluster_CA_can_join()
    {
        using var ca = ClusterCertificates.CreateCa("cluster-ca", TimeSpan.FromDays(30));
        using var otherCa = ClusterCertificates.CreateCa("cluster-ca", TimeSpan.FromDays(30));
        string caFile = CaFile(ca, "ca"), otherCaFile = CaFile(otherCa, "other-ca");
        using var revokedCert = ClusterCertificates.Issue(ca, "revoked-node", PeerRole.Node, TimeSpan.FromDays(10));
        string[] revoked = [ClusterCertificates.NormalizeSerial(revokedCert.SerialNumber)];
        int seedPort = ClusterNode.FreeLoopbackPort();
        using (var c = ClusterCertificates.Issue(ca, "seed", PeerRole.Node, TimeSpan.FromDays(10)))
        {
            var seed = Node(seedPort, seedPort, Pfx(c, "seed"), caFile, revoked);
            var logs = new List<string>();
            var listener = seed.ActorOf(Props.Create(() => new LogListener(logs)));
            seed.EventStream.Subscribe(listener, typeof(Akka.Event.LogEvent));

            using var m = ClusterCertificates.Issue(ca, "member", PeerRole.Node, TimeSpan.FromDays(10));
            Node(ClusterNode.FreeLoopbackPort(), seedPort, Pfx(m, "member"), caFile, revoked);
            Assert.True(Eventually(() => Cluster.Get(seed).State.Members.Count(x => x.Status == MemberStatus.Up) == 2, TimeSpan.FromSeconds(30)),
                "a node with a certificate of the cluster CA joins over TLS:\n" + Logs(logs));

            // another CA (same name), the CA's certificate but revoked, the CA's certificate without a role
            using var s = ClusterCertificates.Issue(otherCa, "stranger", PeerRole.Node, TimeSpan.FromDays(10));
            var stranger = Node(ClusterNode.FreeLoopbackPort(), seedPort, Pfx(s, "stranger"), otherCaFile);
            var revokedNode = Node(ClusterNode.FreeLoopbackPort(), seedPort, Pfx(revokedCert, "revoked-node"), caFile);
            using var n = Crafted(ca, "CN=roleless, O=moce", DateTimeOffset.UtcNow.AddMinutes(-4), DateTimeOffset.UtcNow.AddDays(1));
            var rolelessNode = NodeSkippingOwnCheck(seedPort, Pfx(n, "roleless"), caFile);

            Assert.False(Eventually(() => Cluster.Get(seed).State.Members.Count >= 3 || new[] { stranger, revokedNode, rolelessNode }.Any(x => Cluster.Get(x).State.Members.Count > 0),
                TimeSpan.FromSeconds(12)), "no refused node may join:\n" + Logs(logs));
            Assert.Equal(2, Cluster.Get(seed).State.Members.Count);
            Assert.True(Eventually(() => { lock (logs) return logs.Any(l => l.Contains("refused: stranger (moce-node", StringComparison.Ordinal) && l.Contains("does not chain to the cluster CA", StringComparison.Ordinal))
                                                         && logs.Any(l => l.Contains("refused: revoked-node (moce-node", StringComparison.Ordinal) && l.Contains("is revoked", StringComparison.Ordinal))
                                                         && logs.Any(l => l.Contains("refused: roleless (no role", StringComparison.Ordinal)); }, TimeSpan.FromSeconds(10)),
                "each refusal is logged with the peer's identity and the reason:\n" + Logs(logs));
        }
    }

    /// <summary>A node with a certificate its own start check would refuse (no role): built the way CreateSystem builds
    /// one, with the cluster CA's trust, so that the seed's refusal is what is tested.</summary>
    private ActorSystem NodeSkippingOwnCheck(int seedPort, string certificate, string ca)
    {
        var o = new NodeOptions([NodeRoles.Coordinator], "127.0.0.1", ClusterNode.FreeLoopbackPort(), [$"127.0.0.1:{seedPort}"], ["cpu"], 1, 1, certificate, ca);
        var cert = o.LoadCertificate();
        var trust = new ClusterTrust(ClusterCertificates.LoadPublic("ca", ca), []);
        var tls = new Akka.Remote.Transport.DotNetty.DotNettySslSetup(cert, false, true, false, trust.Callback());
        var config = Akka.Configuration.ConfigurationFactory.ParseString("akka.remote.dot-netty.tcp.enable-ssl = true").WithFallback(ClusterNode.Config(o, ActorEngine.AkkaConfig()));
        var system = ActorSystem.Create(ClusterNode.SystemName, BootstrapSetup.Create().WithConfig(config).And(tls));
        systems.Add(system);
        Cluster.Get(system).JoinSeedNodes(o.SeedAddresses);
        return system;
    }

    private static string Logs(List<string> logs) { lock (logs) return string.Join("\n", logs.TakeLast(30)); }

    private sealed class LogListener : ReceiveActor
    {
        public LogListener(List<string> logs) => Receive<Akka.Event.LogEvent>(e => { lock (logs) logs.Add(e.ToString()); });
    }
}
