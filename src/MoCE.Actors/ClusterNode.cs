using Akka.Actor;
using Akka.Cluster;
using Akka.Cluster.Tools.Client;
using Akka.Cluster.Tools.Singleton;
using Akka.Configuration;
using MoCE.Actors.Messages;
using MoCE.Actors.Placement;
using System.Collections.Immutable;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Akka.Actor.Setup;
using Akka.Remote.Transport.DotNetty;
using MoCE.Core.Config;

namespace MoCE.Actors;

/// <summary>One process of a cluster run (moce node). Roles: <c>coordinator</c> (can run the supervisor, a cluster
/// singleton, with the trainer, router and teacher) and <c>experts</c> (hosts experts on its devices).</summary>
/// <param name="Seeds">"host:port" of the seed nodes; a node that lists itself first starts the cluster.</param>
/// <param name="MinExpertNodes">Expert nodes the supervisor waits for before it places the experts.</param>
/// <param name="TlsCertificate">PKCS#12 file of this node's (or tool's) certificate with its private key, issued by the
/// cluster CA (<c>moce cert issue</c>): remoting runs over mutual TLS; null or empty: plain TCP. Its password comes from
/// $MOCE_TLS_PASSWORD.</param>
/// <param name="TlsCa">The cluster CA's certificate (PEM, <c>moce cert init</c>): a peer is accepted when its certificate
/// chains to it (<see cref="Security.ClusterTrust"/>). Required with a certificate.</param>
/// <param name="TlsRevoked">Serial numbers of revoked certificates: refused though they chain to the CA.</param>
/// <param name="ChaosKill">An experts node obeys a chaos schedule's kill-node (KillNode ends the process); off, it refuses it.</param>
/// <param name="Insecure">Plain TCP without a certificate (--insecure): allowed only when asked for, with a warning.</param>
public sealed record NodeOptions(IReadOnlyList<string> Roles, string Host, int Port, IReadOnlyList<string> Seeds,
                                 IReadOnlyList<string> Devices, int MinExpertNodes, int OwnerThreads, string? TlsCertificate = null,
                                 string? TlsCa = null, IReadOnlyList<string>? TlsRevoked = null, bool ChaosKill = false, bool Insecure = false)
{
    /// <summary>Where the certificate file's password comes from (never the configuration: that is logged and copied).</summary>
    public const string TlsPasswordVariable = "MOCE_TLS_PASSWORD";

    public bool Coordinator => Roles.Contains(NodeRoles.Coordinator);
    public bool Experts => Roles.Contains(NodeRoles.Experts);

    public NodeOptions Validated()
    {
        if (Roles.Count == 0 || Roles.Any(r => r is not (NodeRoles.Coordinator or NodeRoles.Experts)))
            throw new ConfigException("moce.node.roles", $"expected one or both of {NodeRoles.Coordinator}, {NodeRoles.Experts}; got [{string.Join(", ", Roles)}]");
        if (Port is < 0 or > 65535) throw new ConfigException("moce.node.port", $"expected 0..65535, got {Port}");
        if (Seeds.Count == 0) throw new ConfigException("moce.node.seed-nodes", "is empty: list at least one \"host:port\" (the first node lists itself)");
        foreach (var s in Seeds) _ = SeedAddress(s);
        if (MinExpertNodes < 1) throw new ConfigException("moce.node.min-expert-nodes", "must be ≥ 1");
        if (Experts) _ = new NodeResources(Devices, OwnerThreads, ChaosPlan.None, new EngineThreads()).Validated();
        if (string.IsNullOrEmpty(TlsCertificate)) { RequireTransport(); return this; }
        using var c = LoadCertificate();                                         // once: the trust and the role are checked on it
        _ = Trust(c);
        var allowed = Security.MembershipGate.RolesFor(Roles);
        var role = Security.ClusterCertificates.RoleOf(c);
        if (role is null || !allowed.Contains(role.Value))
            throw new ConfigException("moce.node.tls-certificate", $"'{TlsCertificate}' is a {(role is { } r ? Security.ClusterCertificates.RoleName(r) : "role-less")} " +
                $"certificate; a node with roles [{string.Join(", ", Roles)}] needs the {string.Join(" or ", allowed.Select(Security.ClusterCertificates.RoleName))} role " +
                "(moce cert issue --role ...): the supervisor would refuse it as a member");
        return this;
    }

    /// <summary>Mutual TLS with a certificate the cluster's trust accepts, or plain TCP asked for with --insecure; else a
    /// clear error. Nodes and tools (a cluster client) alike.</summary>
    public void RequireTransport()
    {
        if (!string.IsNullOrEmpty(TlsCertificate)) { using var c = LoadCertificate(); _ = Trust(c); }
        else if (!Insecure)
            throw new ConfigException("moce.node.tls-certificate", "is empty: a cluster runs mutual TLS by default. Give this process's certificate and the CA's " +
                                      "(--tls-certificate NAME.pfx --tls-ca ca.crt; moce cert init and moce cert issue make them), or --insecure for plain TCP " +
                                      "on a network where every process that reaches the port may join and steer the run");
    }

    /// <summary>The cluster's trust (CA and revocation list), after checking that this node's own certificate passes it:
    /// a node the others would refuse fails at its start with the reason, not later with a silent handshake failure.</summary>
    public Security.ClusterTrust Trust(X509Certificate2 own)
    {
        if (string.IsNullOrEmpty(TlsCa))
            throw new ConfigException("moce.node.tls-ca", "is empty: with a certificate (moce.node.tls-certificate) name the cluster CA's certificate (moce cert init writes ca.crt)");
        var trust = new Security.ClusterTrust(Security.ClusterCertificates.LoadPublic("moce.node.tls-ca", TlsCa), TlsRevoked ?? []);
        var v = trust.Check(own);
        if (!v.Accepted) throw new ConfigException("moce.node.tls-certificate", $"'{TlsCertificate}' ({v.Identity}) {v.Reason}: the cluster's nodes would refuse it");
        return trust;
    }

    /// <summary>The cluster's certificate with its private key, or a clear error naming the key.</summary>
    public X509Certificate2 LoadCertificate()
    {
        if (!File.Exists(TlsCertificate)) throw new ConfigException("moce.node.tls-certificate", $"'{TlsCertificate}' does not exist");
        X509Certificate2 cert;
        try { cert = X509CertificateLoader.LoadPkcs12FromFile(TlsCertificate, Environment.GetEnvironmentVariable(TlsPasswordVariable)); }
        catch (CryptographicException e) { throw new ConfigException("moce.node.tls-certificate", $"'{TlsCertificate}' cannot be read as PKCS#12 with the password in ${TlsPasswordVariable}: {e.Message}"); }
        if (!cert.HasPrivateKey) throw new ConfigException("moce.node.tls-certificate", $"'{TlsCertificate}' holds no private key: a node must prove it owns the certificate");
        return cert;
    }

    /// <summary>How far a control command's signing time may be from the supervisor's clock (and how long its signature is
    /// remembered against a replay).</summary>
    public static readonly TimeSpan ControlWindow = TimeSpan.FromMinutes(5);

    /// <summary>With TLS, a control command signed with this node's or tool's certificate; anything else as it is.</summary>
    public object SignedIfTls(object message)
    {
        if (string.IsNullOrEmpty(TlsCertificate) || message is not Security.IControlCommand c) return message;
        using var cert = LoadCertificate();
        return Security.ControlSigning.Sign(c, cert, DateTimeOffset.UtcNow);
    }

    /// <summary>The supervisor's check of control commands under this node's trust.</summary>
    public Security.ControlAuthorizer ControlAuthorizer()
    {
        using var cert = LoadCertificate();
        return new Security.ControlAuthorizer(Trust(cert), ControlWindow);
    }

    /// <summary>The seed addresses: akka.tcp, or akka.ssl.tcp with TLS.</summary>
    public IEnumerable<Address> SeedAddresses => Seeds.Select(s => SeedAddress(s, !string.IsNullOrEmpty(TlsCertificate)));

    public static Address SeedAddress(string hostPort, bool tls = false)
    {
        int colon = hostPort.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(hostPort.AsSpan(colon + 1), out var port) || port is < 1 or > 65535)
            throw new ConfigException("moce.node.seed-nodes", $"'{hostPort}' is not host:port");
        return new Address(tls ? "akka.ssl.tcp" : "akka.tcp", ClusterNode.SystemName, hostPort[..colon], port);
    }
}

/// <summary>A node's actor system, joining its cluster; on a coordinator, the proxy of the run's supervisor.</summary>
public sealed record NodeStarted(ActorSystem System, IActorRef? Supervisor);

/// <summary>Everything a coordinator node needs to run the run when the singleton lands on it.</summary>
public sealed record CoordinatorRun(ActorContextSetup Setup, SupervisorHooks Hooks, long Until, long CheckpointEvery, int Keep);

/// <summary>Runs one cluster node until the run ends (a coordinator) or until it is stopped (an experts-only node).</summary>
public static class ClusterNode
{
    public const string SystemName = "moce";
    /// <summary>The singleton manager's name on every coordinator; the supervisor runs as its child on the oldest one.</summary>
    public const string RunManager = "run";

    /// <summary>The node's actor system configuration: cluster provider, address and roles over the user's configuration
    /// (which must name a shared journal).</summary>
    public static Config Config(NodeOptions o, Config journal) => ConfigurationFactory.ParseString($"""
        akka.actor.provider = cluster
        akka.remote.dot-netty.tcp.hostname = "{o.Host}"
        akka.remote.dot-netty.tcp.port = {o.Port}
        akka.cluster.roles = [{string.Join(", ", o.Roles.Select(r => $"\"{r}\""))}]
        """).WithFallback(journal);

    /// <summary>The node's actor system. With a TLS certificate, remoting is mutual TLS (Akka.Remote's DotNetty transport,
    /// require-mutual-authentication): both ends of every connection present a certificate and prove they hold its
    /// private key, and each accepts the other's only if it chains to the cluster CA, names a role and is not revoked
    /// (<see cref="Security.ClusterTrust"/>; host names are not checked). A peer without such a certificate fails the
    /// handshake, so it can neither join nor send a message; each refusal is logged with the peer's identity.</summary>
    public static ActorSystem CreateSystem(NodeOptions o, Config config)
    {
        if (string.IsNullOrEmpty(o.TlsCertificate)) return ActorSystem.Create(SystemName, config);
        var cert = o.LoadCertificate();
        var tls = new DotNettySslSetup(cert, suppressValidation: false, requireMutualAuthentication: true, validateCertificateHostname: false,
                                       o.Trust(cert).Callback());
        var withTls = ConfigurationFactory.ParseString("akka.remote.dot-netty.tcp.enable-ssl = true").WithFallback(config);
        return ActorSystem.Create(SystemName, BootstrapSetup.Create().WithConfig(withTls).And(tls));
    }

    /// <summary>A TCP port on 127.0.0.1 that is free now (for local clusters: tests, moce bench-cluster), drawn at random
    /// below Linux's ephemeral range (32768 and up): a port the kernel hands out for port 0 can be taken by any outgoing
    /// connection (a database client, another node) before the node binds it.</summary>
    public static int FreeLoopbackPort()
    {
        for (int attempt = 0; ; attempt++)
        {
            int port = Random.Shared.Next(20000, 32000);
            lock (HandedOut) if (!HandedOut.Add(port)) continue;                 // never the same port twice in a process
            var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, port);
            try
            {
                l.Start();
                l.Stop();
                return port;
            }
            catch (System.Net.Sockets.SocketException) when (attempt < 100) { }
        }
    }

    private static readonly HashSet<int> HandedOut = [];

    /// <summary>The path tools send to through a cluster client to reach the run's supervisor.</summary>
    public const string SupervisorService = "/user/" + RunManager + "-proxy";

    /// <summary>Asks the cluster at <paramref name="o"/>'s seeds, as a cluster client (this process does not join).
    /// Throws <see cref="ClusterUnreachableException"/> when no node of the cluster has been in contact for
    /// <c>akka.cluster.client.reconnect-timeout</c> (hocon/akka.conf): at the start (nothing runs at the seeds) or
    /// on the way (the run ended and its nodes left before the answer), instead of waiting out <paramref name="timeout"/>.
    /// <paramref name="ct"/> stops the wait (what was asked may still be done).</summary>
    public static T Ask<T>(NodeOptions o, Config config, object query, TimeSpan timeout, CancellationToken ct = default)
    {
        var clientConfig = ConfigurationFactory.ParseString($"""
            akka.actor.provider = remote
            akka.loglevel = WARNING
            akka.remote.dot-netty.tcp.hostname = "{o.Host}"
            akka.remote.dot-netty.tcp.port = 0
            """).WithFallback(config);
        o.RequireTransport();
        using var system = CreateSystem(o, clientConfig);
        try
        {
            query = o.SignedIfTls(query);
            var contacts = o.SeedAddresses.Select(a => ActorPath.Parse($"{a}/system/receptionist")).ToImmutableHashSet();
            var settings = ClusterClientSettings.Create(system).WithInitialContacts(contacts);
            var client = system.ActorOf(ClusterClient.Props(settings), "client");
            var lost = client.WatchAsync();                                       // the client stops itself after the reconnect timeout
            var answer = client.Ask<T>(new ClusterClient.Send(SupervisorService, query), timeout, ct);   // Ctrl-C: stop waiting
            if (Task.WhenAny(answer, lost).GetAwaiter().GetResult() == lost && !answer.IsCompleted)
                throw new ClusterUnreachableException($"no node of the cluster at [{string.Join(", ", o.Seeds)}] was in contact for " +
                    $"{settings.ReconnectTimeout?.TotalSeconds:G3} s before an answer came: no run is there, or it ended and its nodes left");
            return answer.GetAwaiter().GetResult();
        }
        finally { system.Terminate().Wait(TimeSpan.FromSeconds(10)); }
    }

    /// <summary>Joins the cluster, hosts experts if the node has that role, and as a coordinator runs the supervisor when
    /// the singleton lands here; returns the run's end (null for an experts-only node, stopped by <paramref name="ct"/>).
    /// The process leaves the cluster gracefully on the way out. <paramref name="chaos"/>: the fault plan of the experts this
    /// node hosts (the coordinators' owners take theirs from the run's setup). <paramref name="started"/> gets the node's
    /// actor system once it is joining and, on a coordinator, the proxy of the run's supervisor, for a caller that
    /// watches the cluster or sends the run commands (<see cref="DrainNode"/>, say).</summary>
    public static RunFinished? Run(NodeOptions o, Config config, CoordinatorRun? run, Serilog.ILogger log, CancellationToken ct,
                                   ChaosPlan? chaos = null, Action<NodeStarted>? started = null)
    {
        o.Validated();
        if (o.Coordinator && run is null) throw new ArgumentException("a coordinator node needs its run", nameof(run));
        var provider = config.GetString("akka.persistence.journal.sql.provider-name");
        if (provider.StartsWith("SQLite", StringComparison.Ordinal))
            throw new ConfigException("akka.persistence.journal.sql.provider-name",
                $"is {provider}: the nodes of a cluster share one journal; use a database server (--config hocon/persistence-postgres.conf)");
        var threads = new EngineThreads();
        using var system = CreateSystem(o, config);
        try
        {
            _ = ClusterClientReceptionist.Get(system);                           // every node answers cluster clients
            if (!string.IsNullOrEmpty(o.TlsCertificate))                         // proves its membership to the supervisor
                system.ActorOf(MembershipActor.Props(o.LoadCertificate()), MembershipActor.Name);
            if (o.Experts)
                system.ActorOf(ExpertHostActor.Props(new NodeResources(o.Devices, o.OwnerThreads, chaos ?? ChaosPlan.None, threads, o.ChaosKill)), ExpertHostActor.Name);
            var cluster = Cluster.Get(system);
            cluster.JoinSeedNodes(o.SeedAddresses);     // after the host exists: the supervisor asks it when we are Up
            log.Information("Node {Address} with roles [{Roles}] joining [{Seeds}]{Devices}; remoting over {Transport}", cluster.SelfAddress, string.Join(", ", o.Roles),
                string.Join(", ", o.Seeds), o.Experts ? $"; experts on [{string.Join(", ", o.Devices)}]" : "",
                string.IsNullOrEmpty(o.TlsCertificate) ? "plain TCP" : $"mutual TLS with the certificate in {o.TlsCertificate}");
            if (string.IsNullOrEmpty(o.TlsCertificate))
                log.Warning("Insecure (--insecure): plain TCP, no identities; any process that reaches {Address} can join, drain, add experts or stop the run", cluster.SelfAddress);
            var removed = system.WhenTerminated;                                 // downed: run-coordinated-shutdown-when-down
            if (run is null)
            {
                started?.Invoke(new NodeStarted(system, null));
                Task.WaitAny([removed, Task.Delay(Timeout.Infinite, ct).ContinueWith(_ => { }, TaskScheduler.Default)]);
                if (removed.IsCompleted && !ct.IsCancellationRequested)
                {
                    // drained (moce node drain): it was asked to leave, and left; anything else is a removal
                    if (CoordinatedShutdown.Get(system).ShutdownReason is CoordinatedShutdown.ClusterLeavingReason)
                    {
                        log.Information("Left the cluster (drained)");
                        return null;
                    }
                    throw new InvalidOperationException("this node was removed from the cluster");
                }
                return null;
            }
            var setup = string.IsNullOrEmpty(o.TlsCertificate) ? run.Setup : run.Setup with { Control = o.ControlAuthorizer() };
            system.ActorOf(ClusterSingletonManager.Props(
                SupervisorActor.Restartable(setup, run.Hooks, run.CheckpointEvery, run.Keep, o.MinExpertNodes),
                PoisonPill.Instance, ClusterSingletonManagerSettings.Create(system).WithRole(NodeRoles.Coordinator)), RunManager);
            var supervisor = system.ActorOf(ClusterSingletonProxy.Props($"/user/{RunManager}",
                ClusterSingletonProxySettings.Create(system).WithRole(NodeRoles.Coordinator)), RunManager + "-proxy");
            // `moce experts list` and other tools reach the supervisor through a cluster client: /user/run-proxy on any coordinator
            ClusterClientReceptionist.Get(system).RegisterService(supervisor);
            var done = new TaskCompletionSource<RunFinished>(TaskCreationOptions.RunContinuationsAsynchronously);
            system.ActorOf(RunClientActor.Props(supervisor, run.Until, TimeSpan.FromSeconds(2), done), "run-client");
            started?.Invoke(new NodeStarted(system, supervisor));
            using var reg = ct.Register(() => supervisor.Tell(o.SignedIfTls(new SupervisorActor.StopAndCommit()), ActorRefs.NoSender));
            if (Task.WaitAny(done.Task, removed) == 1) throw new InvalidOperationException("this node was removed from the cluster before the run finished");
            return done.Task.GetAwaiter().GetResult();
        }
        finally
        {
            CoordinatedShutdown.Get(system).Run(CoordinatedShutdown.ClusterLeavingReason.Instance).Wait(TimeSpan.FromSeconds(30));
            threads.JoinAll(TimeSpan.FromSeconds(30));
            run?.Setup.Threads.JoinAll(TimeSpan.FromSeconds(30));
        }
    }
}

/// <summary>A cluster client lost, or never had, contact with any node of the cluster before its answer came.</summary>
public sealed class ClusterUnreachableException(string message) : Exception(message);
