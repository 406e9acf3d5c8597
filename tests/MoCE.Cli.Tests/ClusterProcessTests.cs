using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;
using MoCE.Core.Checkpoints;
using Xunit.Abstractions;
using static MoCE.Cli.Tests.PretrainProcessTests;

namespace MoCE.Cli.Tests;

/// <summary>The pre-training and clustering of one baby run, and the same run's MoCE phase trained by one `moce train`
/// process: what every cluster run below must equal.</summary>
public sealed class ClusterRunFixture
{
    public static readonly string[] Baby =
    [
        .. MoCE.Cli.Tests.Baby.Model,
        "-o", "pretrain.steps=20", "-o", "pretrain.batch-size=32", "-o", "train.batch-size=16",
        "-o", "train.steps=150", "-o", "train.checkpoint-every=10", "-o", "train.log-every=10",
    ];

    public string Base { get; } = Path.Combine(Path.GetTempPath(), "moce-tests", "cluster-" + Guid.NewGuid().ToString("N"));
    public string Reference => Base + "-single";

    public ClusterRunFixture()
    {
        _ = MoCE.Tests.TestPostgres.ConnectionString;            // the nodes' shared journal ($MOCE_POSTGRES), or a clear error
        var (code, output) = Moce(["pretrain", "--run", Base, .. Baby]);
        if (code != 0) throw new InvalidOperationException(output);
        (code, output) = Moce(["cluster", "--run", Base, .. Baby]);
        if (code != 0) throw new InvalidOperationException(output);
        ClusterProcessTests.CopyRun(Base, Reference);
        (code, output) = Moce(["train", "--run", Reference, "--engine", "actors", .. Baby]);
        if (code != 0) throw new InvalidOperationException(output);
    }
}

/// <summary>Real `moce node` processes on 127.0.0.1 with PostgreSQL: two coordinators and two expert nodes train the
/// run; SIGKILL of an expert node or of the active coordinator mid-run. Each ends with the weights of the one-process
/// run (bit for bit: fp32 on the wire, and the router folds expert outputs in plan order).</summary>
public class ClusterProcessTests(ClusterRunFixture fx, ITestOutputHelper output) : IClassFixture<ClusterRunFixture>
{
    /// <summary>Bounds against a hang, not a busy machine: a cluster run here takes 30 to 110 s on 2 idle cores.</summary>
    private static readonly TimeSpan RunTimeout = TimeSpan.FromSeconds(600);
    /// <summary>An expert node's exit after SIGTERM (it leaves the cluster first): seconds when idle.</summary>
    private static readonly TimeSpan LeaveTimeout = TimeSpan.FromSeconds(180);

    /// <summary>A running `moce node`, its output kept line by line.</summary>
    private sealed class Node : IDisposable
    {
        private readonly Process p;
        private readonly StringBuilder log = new();
        public string Name { get; }

        public Node(string name, params string[] args) : this(name, Tls.None, args) { }

        /// <summary>With a certificate in <paramref name="args"/>, mutual TLS (its password from <paramref name="tls"/>);
        /// without, plain TCP on 127.0.0.1 (--insecure).</summary>
        public Node(string name, Tls tls, params string[] args)
        {
            Name = name;
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "moce.dll"));
            psi.ArgumentList.Add("node");
            if (!args.Contains("--tls-certificate")) psi.ArgumentList.Add("--insecure");
            foreach (var (k, v) in tls.Environment) psi.Environment[k] = v;
            foreach (var a in args) psi.ArgumentList.Add(a);
            p = Process.Start(psi)!;
            p.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.AppendLine(e.Data); };
            p.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.AppendLine(e.Data); };
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
        }

        public string Output { get { lock (log) return log.ToString(); } }

        /// <summary>Waits (bounded) until the output matches; the match, or a failure that shows the output.</summary>
        public Match WaitFor(string pattern, TimeSpan timeout)
        {
            var clock = Stopwatch.StartNew();
            while (clock.Elapsed < timeout)
            {
                var m = Regex.Match(Output, pattern);
                if (m.Success) return m;
                if (p.HasExited) break;
                Thread.Sleep(50);
            }
            var last = Regex.Match(Output, pattern);
            if (last.Success) return last;
            throw new TimeoutException($"{Name} did not log /{pattern}/ within {timeout.TotalSeconds:F0} s (exited: {p.HasExited}):\n{Tail}");
        }

        public int WaitForExit(TimeSpan timeout)
        {
            if (!p.WaitForExit(timeout)) throw new TimeoutException($"{Name} did not exit within {timeout.TotalSeconds:F0} s:\n{Tail}");
            p.WaitForExit();
            return p.ExitCode;
        }

        public string Tail => string.Join("\n", Output.Split('\n').TakeLast(40));
        public bool Exited => p.HasExited;
        public void Kill() => p.Kill(entireProcessTree: true);                    // SIGKILL: no shutdown, no leaving
        public void Terminate() => Process.Start("kill", ["-TERM", p.Id.ToString()])!.WaitForExit();
        private bool disposed;
        public void Dispose()
        {
            if (disposed) return;
            disposed = true;
            if (!p.HasExited) p.Kill(entireProcessTree: true);
            p.Dispose();
        }
    }

    /// <summary>Certificates of a test's cluster CA (and of a stranger's CA), written under one password that only the
    /// test's child processes are given (not this process's environment: other tests run beside it).</summary>
    private sealed class Tls
    {
        public static readonly Tls None = new();
        public IReadOnlyDictionary<string, string> Environment { get; } = new Dictionary<string, string>();
        private readonly string dir = "", password = "";
        private readonly System.Security.Cryptography.X509Certificates.X509Certificate2? ca, otherCa;
        public string CaFile => Path.Combine(dir, "ca.crt");
        public string OtherCaFile => Path.Combine(dir, "other-ca.crt");

        private Tls() { }

        public Tls(string dir)
        {
            this.dir = Directory.CreateDirectory(dir).FullName;
            password = Guid.NewGuid().ToString("N");
            Environment = new Dictionary<string, string> { [MoCE.Actors.NodeOptions.TlsPasswordVariable] = password };
            ca = MoCE.Actors.Security.ClusterCertificates.CreateCa("test-cluster-ca", TimeSpan.FromDays(2));
            otherCa = MoCE.Actors.Security.ClusterCertificates.CreateCa("test-cluster-ca", TimeSpan.FromDays(2));   // the same name
            File.WriteAllText(CaFile, MoCE.Actors.Security.ClusterCertificates.Pem(ca));
            File.WriteAllText(OtherCaFile, MoCE.Actors.Security.ClusterCertificates.Pem(otherCa));
        }

        /// <summary>A certificate of the test's CA with its private key, held in this process.</summary>
        public System.Security.Cryptography.X509Certificates.X509Certificate2 Certificate(string name, MoCE.Actors.Security.PeerRole role)
        {
            using var cert = MoCE.Actors.Security.ClusterCertificates.Issue(ca!, name, role, TimeSpan.FromDays(1));
            return System.Security.Cryptography.X509Certificates.X509CertificateLoader.LoadPkcs12(
                cert.Export(System.Security.Cryptography.X509Certificates.X509ContentType.Pkcs12, password), password);
        }

        /// <summary>A certificate for <paramref name="name"/> in <paramref name="role"/> (from the other CA with
        /// <paramref name="stranger"/>): its PKCS#12 file and its serial number.</summary>
        public (string file, string serial) Issue(string name, MoCE.Actors.Security.PeerRole role, bool stranger = false)
        {
            using var cert = MoCE.Actors.Security.ClusterCertificates.Issue(stranger ? otherCa! : ca!, name, role, TimeSpan.FromDays(1));
            var file = Path.Combine(dir, name + ".pfx");
            File.WriteAllBytes(file, cert.Export(System.Security.Cryptography.X509Certificates.X509ContentType.Pkcs12, password));
            return (file, MoCE.Actors.Security.ClusterCertificates.NormalizeSerial(cert.SerialNumber));
        }
    }

    private sealed record Cluster(string Run, Node C1, Node C2, Node X1, Node X2, int[] Ports, int[] MetricsPorts) : IDisposable
    {
        public void Dispose() { foreach (var n in new[] { C1, C2, X1, X2 }) n.Dispose(); }
    }


    /// <summary>A new run (its own run id, so its journal rows are its own) from the fixture's dense model and clustering,
    /// trained by two coordinators (the first one, the oldest, runs the supervisor) and two expert nodes.</summary>
    private Cluster Start(string? existing = null, string[]? extra = null, string[]? coordinatorExtra = null, Tls? tls = null)
    {
        tls ??= Tls.None;
        string[] Own(string name) => tls == Tls.None ? [] : ["--tls-certificate", tls.Issue(name,
            name.StartsWith("coordinator", StringComparison.Ordinal) ? MoCE.Actors.Security.PeerRole.Coordinator : MoCE.Actors.Security.PeerRole.Node).file, "--tls-ca", tls.CaFile];
        extra ??= [];
        coordinatorExtra ??= [];
        var run = existing ?? fx.Base + "-" + Guid.NewGuid().ToString("N")[..8];
        if (existing is null)
        {
            CopyRun(fx.Base, run);
            File.WriteAllText(Path.Combine(run, "run.id"), Guid.NewGuid().ToString("N")[..12]);
        }
        int[] ports = [MoCE.Actors.ClusterNode.FreeLoopbackPort(), MoCE.Actors.ClusterNode.FreeLoopbackPort(), MoCE.Actors.ClusterNode.FreeLoopbackPort(), MoCE.Actors.ClusterNode.FreeLoopbackPort()];
        int[] metrics = [MoCE.Actors.ClusterNode.FreeLoopbackPort(), MoCE.Actors.ClusterNode.FreeLoopbackPort(), MoCE.Actors.ClusterNode.FreeLoopbackPort(), MoCE.Actors.ClusterNode.FreeLoopbackPort()];
        if (pendingSchedule is { } ps) File.WriteAllText(ps.file, ps.text(ports));
        string[] common = ["--seeds", $"127.0.0.1:{ports[0]}", "--min-expert-nodes", "2",
                           "--config", Path.Combine(AppContext.BaseDirectory, "hocon", "persistence-postgres.conf"), .. ClusterRunFixture.Baby, .. extra];
        var c1 = new Node("coordinator 1", tls, ["--roles", "coordinator", "--port", ports[0].ToString(), "--metrics-port", metrics[0].ToString(), "--run", run, .. common, .. coordinatorExtra, .. Own("coordinator-1")]);
        c1.WaitFor(@"Singleton manager started singleton actor", TimeSpan.FromSeconds(180));   // the oldest coordinator runs the supervisor
        var cluster = new Cluster(run, c1,
            new Node("coordinator 2", tls, ["--roles", "coordinator", "--port", ports[1].ToString(), "--metrics-port", metrics[1].ToString(), "--run", run, .. common, .. coordinatorExtra, .. Own("coordinator-2")]),
            new Node("expert node 1", tls, ["--roles", "experts", "--port", ports[2].ToString(), "--metrics-port", metrics[2].ToString(), .. common, .. Own("experts-1")]),
            new Node("expert node 2", tls, ["--roles", "experts", "--port", ports[3].ToString(), "--metrics-port", metrics[3].ToString(), .. common, .. Own("experts-2")]),
            ports, metrics);
        // both expert hosts reach the supervisor; a node that dies on the way (a port taken, say) fails here, with its output
        var clock = Stopwatch.StartNew();
        while (!Regex.IsMatch(c1.Output, @"\(2 of 2 needed\)"))
        {
            foreach (var n in new[] { cluster.C1, cluster.C2, cluster.X1, cluster.X2 }.Where(n => n.Exited))
            {
                cluster.Dispose();
                throw new InvalidOperationException($"{n.Name} exited while the cluster formed:\n{n.Tail}");
            }
            if (clock.Elapsed > TimeSpan.FromSeconds(300))
            {
                var tails = string.Join("\n----\n", new[] { cluster.C1, cluster.C2, cluster.X1, cluster.X2 }.Select(n => $"{n.Name}:\n{n.Tail}"));
                cluster.Dispose();
                throw new TimeoutException($"the two expert nodes did not reach the supervisor within 300 s:\n{tails}");
            }
            Thread.Sleep(100);
        }
        return cluster;
    }

    /// <summary>Both coordinators exit 0 once the run is done; the expert nodes leave on SIGTERM (the killed one is gone).</summary>
    private void Finish(Cluster c, Node? killed = null)
    {
        var clock = Stopwatch.StartNew();
        Assert.True(c.C2.WaitForExit(RunTimeout) == 0, c.C2.Tail);
        if (killed != c.C1) Assert.True(c.C1.WaitForExit(RunTimeout) == 0, c.C1.Tail);
        output.WriteLine($"coordinators exited {clock.Elapsed.TotalSeconds:F1} s after the test began waiting");
        foreach (var x in new[] { c.X1, c.X2 }.Where(x => x != killed))
        {
            x.Terminate();
            Assert.True(x.WaitForExit(LeaveTimeout) == 0, x.Tail);
        }
        output.WriteLine($"expert nodes left {clock.Elapsed.TotalSeconds:F1} s after");
    }

    private static Dictionary<string, float[]> FinalWeights(string run)
    {
        var store = new CheckpointStore(Path.Combine(run, "train-moce", "checkpoints"));
        var commits = new CommitLog(store).Commits;
        Assert.Equal(150, commits[^1].Step);
        var w = new Dictionary<string, float[]>();
        foreach (var p in commits[^1].Parts)
        {
            using var c = store.Load(p);
            foreach (var (n, t) in TrainerCheckpoint.ModelWeights(c)) w[n] = t.data<float>().ToArray();
        }
        return w;
    }

    /// <summary>max |Δw| against the one-process run over every parameter; also every step's loss is the same.</summary>
    private double AssertEqualsOneProcess(string run, string what)
    {
        var expected = FinalWeights(fx.Reference);
        var got = FinalWeights(run);
        Assert.Equal(expected.Keys.Order(), got.Keys.Order());
        static string[] Losses(string r) => File.ReadAllLines(Path.Combine(r, "train-moce", "metrics.csv")).Select(l => string.Join(",", l.Split(',')[..2])).ToArray();
        Assert.Equal(Losses(fx.Reference), Losses(run));                        // every step once, each loss equal (first: the step where a run departs)
        var byParameter = expected.ToDictionary(kv => kv.Key, kv => kv.Value.Zip(got[kv.Key], (x, y) => (double)Math.Abs(x - y)).Max());
        double max = byParameter.Values.Max();
        output.WriteLine($"{what}: max |Δw| = {max:G3} over {expected.Values.Sum(v => v.Length)} weights");
        var differing = string.Join(", ", byParameter.Where(kv => kv.Value > 0).OrderByDescending(kv => kv.Value).Take(8).Select(kv => $"{kv.Key} {kv.Value:G3}"));
        Assert.True(max == 0, $"{what}: max |Δw| = {max} (must be 0: every restore is bit-exact); differing parameters: {differing}");
        return max;
    }

    /// <summary>Tokens each expert counted through its forward by the last checkpoint it wrote on that node.</summary>
    private static Dictionary<string, long> TokensByExpert(Node n) =>
        Regex.Matches(n.Output, @"(expert-\d+) on \S+ \(cpu\): checkpoint \d+, (\d+) tokens")
            .GroupBy(m => m.Groups[1].Value).ToDictionary(g => g.Key, g => long.Parse(g.Last().Groups[2].Value));

    private static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(10) };

    /// <summary>One scrape of a node's Prometheus endpoint: every sample line, "name{labels}" → value.</summary>
    private static Dictionary<string, double> Scrape(int port) =>
        Http.GetStringAsync($"http://127.0.0.1:{port}/metrics").GetAwaiter().GetResult().Split('\n')
            .Where(l => l.StartsWith("moce_", StringComparison.Ordinal))
            .Select(l => l.Split(' ')).ToDictionary(p => p[0], p => double.Parse(p[1], System.Globalization.CultureInfo.InvariantCulture));

    [Fact]
    public void Two_coordinators_and_two_expert_nodes_compute_on_both_nodes_and_equal_one_process()
    {
        using var c = Start();
        // scraped during the run: the active coordinator's step counter rises, and the expert nodes count every expert's tokens
        c.C1.WaitFor(@"\[actors\] step 30/150", RunTimeout);
        double early = Scrape(c.MetricsPorts[0])["moce_steps_total"];
        c.C1.WaitFor(@"\[actors\] step 60/150", RunTimeout);
        var late = Scrape(c.MetricsPorts[0]);
        var experts = Scrape(c.MetricsPorts[2]).Concat(Scrape(c.MetricsPorts[3])).Where(kv => kv.Key.StartsWith("moce_expert_tokens_total{", StringComparison.Ordinal)).ToList();
        output.WriteLine($"coordinator 1: moce_steps_total {early} then {late["moce_steps_total"]}; expert nodes: {string.Join(", ", experts.Select(kv => $"{kv.Key} {kv.Value}"))}");
        Assert.True(early >= 30 && late["moce_steps_total"] > early, $"the step counter rises: {early} then {late["moce_steps_total"]}");
        Assert.Equal(3, experts.Count(kv => kv.Value > 0));                      // expert-0..2, each on one node, each computing
        Assert.Contains(late, kv => kv.Key.StartsWith("moce_wire_bytes_total{direction=\"sent\",message=\"ExpertForward\"}", StringComparison.Ordinal) && kv.Value > 0);

        // moce experts list, as a cluster client through an expert node's receptionist: every expert up, where it was placed
        var (code, json) = Moce(["experts", "list", "--insecure", "--seeds", $"127.0.0.1:{c.Ports[2]}", "--format", "json"]);
        Assert.True(code == 0, json);
        using var doc = System.Text.Json.JsonDocument.Parse(json);                 // stdout is only the answer
        var listed = doc.RootElement.GetProperty("Experts").EnumerateArray().ToList();
        output.WriteLine($"moce experts list: {string.Join("; ", listed.Select(e => $"expert-{e.GetProperty("Expert")} {e.GetProperty("State")} on {e.GetProperty("Node")}"))}");
        Assert.Equal(3, listed.Count);
        Assert.All(listed, e => Assert.Equal("up", e.GetProperty("State").GetString()));
        Assert.Equal(2, listed.Select(e => e.GetProperty("Node").GetString()).Distinct().Count());   // on both expert nodes
        Assert.True(doc.RootElement.GetProperty("CommittedStep").GetInt64() >= 50);
        Finish(c);
        var x1 = TokensByExpert(c.X1);
        var x2 = TokensByExpert(c.X2);
        output.WriteLine($"expert node 1: {string.Join(", ", x1.Select(kv => $"{kv.Key} {kv.Value} tokens"))}; expert node 2: {string.Join(", ", x2.Select(kv => $"{kv.Key} {kv.Value} tokens"))}");
        Assert.True(x1.Values.Sum() > 0 && x2.Values.Sum() > 0, "both expert nodes computed");
        Assert.Empty(x1.Keys.Intersect(x2.Keys));                                // each expert on one node
        Assert.Equal(3, x1.Count + x2.Count);
        Assert.DoesNotContain("Password=", c.C1.Output + c.C2.Output + c.X1.Output + c.X2.Output);
        AssertEqualsOneProcess(c.Run, "four processes");
    }

    [Fact]
    public void Sigkill_of_an_expert_node_moves_its_experts_to_the_other_and_the_run_equals_an_uninterrupted_one()
    {
        using var c = Start();
        var rng = new Random(81);
        int at = rng.Next(3, 10) * 10;
        c.C1.WaitFor($@"\[actors\] step {at}/150", RunTimeout);
        Thread.Sleep(rng.Next(0, 300));
        var victim = TokensByExpert(c.X1).Count > 0 ? c.X1 : c.X2;
        var survivor = victim == c.X1 ? c.X2 : c.X1;
        var moved = Regex.Matches(c.C1.Output, @"(expert-\d+) runs on \S+") .Count;
        victim.Kill();
        var failed = c.C1.WaitFor(@"Owner (\S+) failed at step (\d+): lost with its node", RunTimeout);
        c.C1.WaitFor(@"Recovered from .* restored commit (\d+)", RunTimeout);
        Finish(c, killed: victim);
        output.WriteLine($"killed {victim.Name} after step {at}: {failed.Groups[1].Value} lost at step {failed.Groups[2].Value}");
        foreach (var e in failed.Groups[1].Value.Split(','))
            Assert.Matches($@"{e} runs on \S+ \(cpu\)", c.C1.Output[c.C1.Output.IndexOf(failed.Value, StringComparison.Ordinal)..]);   // placed again
        Assert.True(Regex.Matches(c.C1.Output, @"(expert-\d+) runs on \S+").Count > moved);
        Assert.True(TokensByExpert(survivor).Count == 3, $"the surviving node hosts every expert at the end:\n{survivor.Tail}");
        AssertEqualsOneProcess(c.Run, $"SIGKILL of {victim.Name}");
    }

    [Fact]
    public void Sigkill_of_the_active_coordinator_hands_the_run_to_the_other_with_no_committed_step_lost()
    {
        using var c = Start();
        var rng = new Random(82);
        int at = rng.Next(3, 10) * 10;
        c.C1.WaitFor($@"\[actors\] step {at}/150", RunTimeout);
        Thread.Sleep(rng.Next(0, 300));
        c.C1.Kill();
        var committed = Regex.Matches(c.C1.Output, @"Committed checkpoint (\d+)").Select(m => long.Parse(m.Groups[1].Value)).Max();
        var resumed = long.Parse(c.C2.WaitFor(@"Resumed from committed checkpoint (\d+)", RunTimeout).Groups[1].Value);
        output.WriteLine($"killed coordinator 1 after step {at}: its last commit was {committed}; coordinator 2 resumed from {resumed}");
        Assert.True(resumed >= committed, $"coordinator 2 resumed from {resumed}, but {committed} was committed");
        Finish(c, killed: c.C1);
        Assert.Contains("Actor engine finished at step 150", c.C2.Output);
        AssertEqualsOneProcess(c.Run, "SIGKILL of the active coordinator");
    }

    [Fact]
    public void A_node_joining_and_a_node_drained_move_experts_at_a_commit_and_the_run_equals_an_uninterrupted_one()
    {
        using var c = StartPaced();
        // a fresh node joins the training run as early as possible (the run is short): under placement = spread,
        // an expert moves to it at a commit
        c.C1.WaitFor(@"\[actors\] step 10/150", RunTimeout);
        int port = MoCE.Actors.ClusterNode.FreeLoopbackPort();
        using var x3 = new Node("expert node 3", ["--roles", "experts", "--port", port.ToString(), "--seeds", $"127.0.0.1:{c.Ports[0]}",
            "--config", Path.Combine(AppContext.BaseDirectory, "hocon", "persistence-postgres.conf"), .. ClusterRunFixture.Baby]);
        var rebalanced = c.C1.WaitFor($@"rebalance onto \S+:{port}: experts \[([\d,]+)\] moved, restored from commit (\d+)", RunTimeout);
        output.WriteLine(rebalanced.Value);
        Assert.DoesNotContain("Recovered from", c.C1.Output);                    // a planned move, not a failure

        // then expert node 1 is drained: its experts go to the others at a commit, and it leaves by itself
        var (code, said) = Moce(["node", "drain", $"127.0.0.1:{c.Ports[2]}", "--insecure", "--seeds", $"127.0.0.1:{c.Ports[0]}"]);
        Assert.True(code == 0, said + "\n" + c.C1.Tail);
        var drained = Regex.Match(said, @"drained \S+: experts \[([^\]]*)\] moved, restored from commit (\d+)");
        Assert.True(drained.Success, said);
        output.WriteLine(drained.Value);
        Assert.True(long.Parse(drained.Groups[2].Value) >= long.Parse(rebalanced.Groups[2].Value), said);   // committed at the drain
        Assert.True(c.X1.WaitForExit(LeaveTimeout) == 0, c.X1.Tail);
        Assert.Contains("Left the cluster (drained)", c.X1.Output);
        var moved = drained.Groups[1].Value.Split(", ", StringSplitOptions.RemoveEmptyEntries);
        Assert.NotEmpty(moved);
        var after = c.C1.Output[c.C1.Output.IndexOf("Draining", StringComparison.Ordinal)..];
        foreach (var e in moved) Assert.Matches($@"{e} runs on \S+:({c.Ports[3]}|{port}) \(cpu\)", after);   // on a node that stays
        Assert.DoesNotContain("Recovered from", c.C1.Output);

        x3.WaitFor(@"expert-\d+ on \S+ \(cpu\): checkpoint \d+, [1-9]\d* tokens", RunTimeout);   // the newcomer computed
        Finish(c, killed: c.X1);
        foreach (var line in c.C1.Output.Split('\n').Where(l => Regex.IsMatch(l, "Committed|moved|Draining|joined|runs on|Resumed|Recovered|failed")))
            output.WriteLine(line.TrimEnd());
        x3.Terminate();
        Assert.True(x3.WaitForExit(LeaveTimeout) == 0, x3.Tail);
        AssertEqualsOneProcess(c.Run, "a node joining, then expert node 1 drained");
    }

    [Fact]
    public void Experts_added_on_a_node_that_joined_train_there_and_survive_a_restart_of_the_whole_cluster()
    {
        string[] fill = ["-o", "actors.placement=fill"];                           // the newcomer gets only new experts
        using var c = StartPaced(fill);
        c.C1.WaitFor(@"\[actors\] step 10/150", RunTimeout);
        int port = MoCE.Actors.ClusterNode.FreeLoopbackPort(), metrics = MoCE.Actors.ClusterNode.FreeLoopbackPort();
        using var x3 = new Node("expert node 3", ["--roles", "experts", "--port", port.ToString(), "--metrics-port", metrics.ToString(), "--seeds", $"127.0.0.1:{c.Ports[0]}",
            "--config", Path.Combine(AppContext.BaseDirectory, "hocon", "persistence-postgres.conf"), .. ClusterRunFixture.Baby, .. fill]);
        c.C1.WaitFor($@"Expert host on \S+:{port}", RunTimeout);

        // two experts added on the new node while the run trains
        var (code, said) = Moce(["experts", "add", "--count", "2", "--node", $"127.0.0.1:{port}", "--insecure", "--seeds", $"127.0.0.1:{c.Ports[0]}"]);
        Assert.True(code == 0, said + "\n" + c.C1.Tail);
        var added = Regex.Match(said, @"added experts \[3, 4\] at step (\d+), split from \[(\d+), (\d+)\]");
        Assert.True(added.Success, said);
        long at = long.Parse(added.Groups[1].Value);
        output.WriteLine(added.Value);
        Assert.DoesNotContain("Recovered from", c.C1.Output);

        // they run on the new node, and each computes tokens within 50 steps (its checkpoint lines count them)
        foreach (var e in new[] { 3, 4 })
        {
            var first = x3.WaitFor($@"expert-{e} on \S+:{port} \(cpu\): checkpoint (\d+), [1-9]\d* tokens", RunTimeout);
            Assert.True(long.Parse(first.Groups[1].Value) <= at + 50, $"expert-{e} first counted tokens at checkpoint {first.Groups[1].Value}, added at {at}");
        }
        var tokens = Scrape(metrics).Where(kv => kv.Key.StartsWith("moce_expert_tokens_total{", StringComparison.Ordinal)).ToList();
        Assert.Equal(2, tokens.Count(kv => kv.Value > 0));
        var (listCode, json) = Moce(["experts", "list", "--insecure", "--seeds", $"127.0.0.1:{c.Ports[0]}", "--format", "json"]);
        Assert.True(listCode == 0, json);
        var listed = System.Text.Json.JsonDocument.Parse(json).RootElement.GetProperty("Experts").EnumerateArray().ToList();
        Assert.Equal(5, listed.Count);
        Assert.All(listed, e => Assert.Equal("up", e.GetProperty("State").GetString()));
        Assert.All(listed.Where(e => e.GetProperty("Expert").GetInt32() >= 3), e => Assert.EndsWith($":{port}", e.GetProperty("Node").GetString()));

        // the whole cluster stops (SIGTERM: the run commits first), then starts again on new processes
        c.C1.Terminate();
        Assert.True(c.C1.WaitForExit(RunTimeout) == 130, c.C1.Tail);             // stopped, not finished: it says so
        Assert.True(c.C2.WaitForExit(RunTimeout) == 0, c.C2.Tail);
        foreach (var x in new[] { c.X1, c.X2, x3 }) { x.Terminate(); Assert.True(x.WaitForExit(LeaveTimeout) == 0, x.Tail); }
        c.Dispose();
        var store = new CheckpointStore(Path.Combine(c.Run, "train-moce", "checkpoints"));
        var stop = new CommitLog(store).Commits[^1];
        output.WriteLine($"stopped at commit {stop.Step}: {string.Join(", ", stop.Parts.Select(p => p.Owner))}");
        Assert.True(stop.Step < 150);
        var parts = stop.Parts.ToDictionary(p => p.Owner);
        Assert.Contains("expert-4", parts.Keys);
        float[] atStop;                                                          // read now: later commits prune the file
        using (var c3 = store.Load(parts["expert-3"])) atStop = TrainerCheckpoint.ModelWeights(c3)["blocks.0.mlp.experts.3.fc1.weight"].data<float>().ToArray();

        using var again = Start(c.Run, fill);
        var resumed = again.C1.WaitFor(@"Resumed from committed checkpoint (\d+)", RunTimeout);
        Assert.Equal(stop.Step, long.Parse(resumed.Groups[1].Value));
        foreach (var e in new[] { "expert-3", "expert-4" })                      // restored from the stop's commit: their own weights
            Assert.Matches($@"{e} restored {Regex.Escape(parts[e].File)} \(commit {stop.Step}\)", again.X1.Output + again.X2.Output);
        Finish(again);
        var final = new CommitLog(store).Commits[^1];
        Assert.Equal(150, final.Step);
        Assert.Equal(5, final.Parts.Count(p => p.Owner.StartsWith("expert-", StringComparison.Ordinal)));
        Assert.Contains("Actor engine finished at step 150", again.C1.Output + again.C2.Output);
        // and they trained on: the final weights of expert 3 are not the ones it had at the stop
        using var atEnd = store.Load(final.Parts.Single(p => p.Owner == "expert-3"));
        Assert.NotEqual(atStop, TrainerCheckpoint.ModelWeights(atEnd)["blocks.0.mlp.experts.3.fc1.weight"].data<float>().ToArray());
    }

    [Fact]
    public void A_chaos_schedule_on_the_coordinators_kills_an_expert_node_fails_the_router_and_the_run_equals_an_uninterrupted_one()
    {
        // the expert node's port must be known before the schedule: the cluster's ports are drawn first, then the file written
        using var c = StartWithSchedule(ports =>
            "chaos { events = [\n" +
            $"  {{ kind = kill-node, node = \"127.0.0.1:{ports[2]}\", step = 40 }}\n" +
            "  { kind = fail, owner = router, step = 70 }\n" +
            "] }\n", ["-o", "node.chaos-kill=true"]);                  // the expert nodes obey a schedule's kill
        var killed = c.C1.WaitFor(@"Chaos at step (\d+): \S+ kill-node", RunTimeout);
        Assert.True(c.X1.WaitForExit(LeaveTimeout) != 0, c.X1.Tail);   // SIGKILL: no clean exit
        c.C1.WaitFor(@"Owner (\S+) failed at step \d+: lost with its node", RunTimeout);
        c.C1.WaitFor(@"Recovered from router's failure at step 70", RunTimeout);
        Finish(c, killed: c.X1);
        output.WriteLine($"{killed.Value}; expert node 1 exited");
        Assert.DoesNotContain("skipped: it is not an expert node", c.C1.Output);
        AssertEqualsOneProcess(c.Run, "a schedule's node kill and router failure");
    }

    /// <summary>expert-exact across nodes: each expert also keeps its state on the other expert node. A schedule kills expert
    /// node 1 at a step boundary; its experts come back on node 2, each putting back the copy node 1 sent there after its
    /// last update, and only the step in flight is retried: no rollback, no replay, no fallback, and the run equals the
    /// one-process run bit for bit.</summary>
    [Fact]
    public void Under_expert_exact_a_killed_expert_nodes_experts_come_back_on_the_other_node_from_its_copies_and_the_run_is_exact()
    {
        using var c = StartWithSchedule(ports => "chaos { events = [\n" +
            $"  {{ kind = kill-node, node = \"127.0.0.1:{ports[2]}\", step = 40 }}\n] }}\n",
            ["-o", "node.chaos-kill=true", "-o", "actors.policy=expert-exact"]);
        c.C1.WaitFor(@"Chaos at step 40: \S+ kill-node", RunTimeout);
        var lost = c.C1.WaitFor(@"Owner (\S+) failed at step (\d+): lost with its node", RunTimeout);
        var exact = c.C1.WaitFor(@"(expert-\d+) recovered exactly from its failure in step (\d+)", RunTimeout);
        Finish(c, killed: c.X1);
        string step = lost.Groups[2].Value;
        output.WriteLine($"{lost.Value}; {exact.Value}");
        // what the coordinator said about failures and recoveries, for any assertion below that fails
        string story = string.Join("\n", c.C1.Output.Split('\n').Where(l => Regex.IsMatch(l, "Chaos|failed|Falling|Recovered|recovered|Retrying|runs on|UNREACHABLE|downing|put back")));
        Assert.Equal(step, exact.Groups[2].Value);
        foreach (var e in lost.Groups[1].Value.Split(','))
        {
            Assert.True(Regex.IsMatch(c.X2.Output, $@"{e} put back its in-memory copy of the start of step {step}"), $"{e}'s copy was not put back on node 2:\n{c.X2.Tail}");
            Assert.True(Regex.IsMatch(c.C1.Output, $@"{e} recovered exactly from its failure in step {step}"), story);
        }
        Assert.False(c.C1.Output.Contains("Falling back to global-rollback", StringComparison.Ordinal), story);
        Assert.False(c.C1.Output.Contains("Recovered from", StringComparison.Ordinal), story);   // no global rollback: nothing was replayed
        AssertEqualsOneProcess(c.Run, "expert-exact after a node kill");
    }

    /// <summary>A cluster of real processes over mutual TLS with the test's CA, paced: while it trains, a node with a
    /// certificate of another CA and a node whose certificate is revoked try to join, a client with a node's certificate
    /// (not an operator's) asks to drain a node, to add an expert and to stop the run, and a member with an operator's
    /// certificate joins as an expert node. Each is refused and logged with its identity (the member is downed), the run
    /// places no expert on any of them, and it ends with the one-process run's weights bit for bit. A process that is no
    /// member sends an expert host KillNode: refused and logged, and the node lives on.</summary>
    [Fact]
    public void Over_TLS_strangers_revoked_nodes_and_non_operators_are_refused_while_the_run_goes_on()
    {
        var tls = new Tls(Path.Combine(Path.GetTempPath(), "moce-tests", "tls-" + Guid.NewGuid().ToString("N")));
        var revoked = tls.Issue("old-node", MoCE.Actors.Security.PeerRole.Node);
        using var c = StartWithSchedule(_ => "chaos { events = [\n" + Pace + "] }\n", ["-o", $"node.tls-revoked=[\"{revoked.serial}\"]"], tls);
        c.C1.WaitFor(@"\[actors\] step 10/150", RunTimeout);
        Assert.Contains("remoting over mutual TLS", c.C1.Output);
        string pg = Path.Combine(AppContext.BaseDirectory, "hocon", "persistence-postgres.conf");
        int strangerPort = MoCE.Actors.ClusterNode.FreeLoopbackPort(), oldPort = MoCE.Actors.ClusterNode.FreeLoopbackPort();
        using var stranger = new Node("stranger", tls, ["--roles", "experts", "--port", strangerPort.ToString(), "--seeds", $"127.0.0.1:{c.Ports[0]}", "--config", pg,
            .. ClusterRunFixture.Baby, "--tls-certificate", tls.Issue("stranger", MoCE.Actors.Security.PeerRole.Node, stranger: true).file, "--tls-ca", tls.OtherCaFile]);
        using var old = new Node("revoked node", tls, ["--roles", "experts", "--port", oldPort.ToString(), "--seeds", $"127.0.0.1:{c.Ports[0]}", "--config", pg,
            .. ClusterRunFixture.Baby, "--tls-certificate", revoked.file, "--tls-ca", tls.CaFile]);
        c.C1.WaitFor(@"TLS peer \S+ refused: stranger \(moce-node, serial \w+, issuer [^)]*\) does not chain to the cluster CA", RunTimeout);
        c.C1.WaitFor(@"TLS peer \S+ refused: old-node \(moce-node, serial " + revoked.serial + @", [^)]*\) is revoked", RunTimeout);

        // a client with a node's certificate: it connects (a node may), but may not steer
        var mallory = tls.Issue("mallory", MoCE.Actors.Security.PeerRole.Node).file;
        string[] client = ["--seeds", $"127.0.0.1:{c.Ports[0]}", "--tls-certificate", mallory, "--tls-ca", tls.CaFile];
        var (code, said) = MoceWith(tls.Environment, ["node", "drain", $"127.0.0.1:{c.Ports[2]}", .. client]);
        Assert.True(code == 2, said);
        Assert.Contains("refused: mallory (moce-node", said);
        Assert.Contains("may not drain-node: it needs the moce-operator role", said);
        (code, said) = MoceWith(tls.Environment, ["experts", "add", "--count", "1", .. client]);
        Assert.True(code == 2, said);
        Assert.Contains("may not add-experts", said);
        (code, said) = MoceWith(tls.Environment, ["stop", .. client]);
        Assert.True(code == 2, said);
        Assert.Contains("may not stop-and-commit: it needs the moce-operator or moce-coordinator role", said);
        c.C1.WaitFor(@"Refused DrainNode from \S+: mallory", RunTimeout);
        c.C1.WaitFor(@"Refused AddExperts from \S+: mallory", RunTimeout);
        c.C1.WaitFor(@"Refused StopAndCommit from \S+: mallory", RunTimeout);

        // a process that is no member, with a node's certificate, sends an expert host KillNode: refused, the node lives on
        using (var killer = Intruder(tls.Certificate("killer", MoCE.Actors.Security.PeerRole.Node), tls, null, c.Ports[0]))
        {
            killer.ActorSelection($"akka.ssl.tcp://moce@127.0.0.1:{c.Ports[2]}/user/{MoCE.Actors.ExpertHostActor.Name}").Tell(new MoCE.Actors.Messages.KillNode(77));
            c.X1.WaitFor(@"Refused KillNode \(step 77\) from \S+: this node does not accept a chaos schedule's kill", RunTimeout);
        }
        Assert.False(c.X1.Exited, c.X1.Tail);

        // an operator's certificate joining as an expert node, past the start check of moce node, as a hostile process
        // would: the handshake admits it (an operator's tools connect), the supervisor asks it to prove its membership,
        // refuses its role and downs it
        using var impostor = tls.Certificate("impostor", MoCE.Actors.Security.PeerRole.Operator);
        using var intruder = Intruder(impostor, tls, [MoCE.Actors.Placement.NodeRoles.Experts], c.Ports[0]);
        c.C1.WaitFor(@"Refused member \S+: impostor \(moce-operator, [^)]*\) may not join: it needs the moce-node or moce-coordinator role; downing it", RunTimeout);
        var downed = Stopwatch.StartNew();
        while (!intruder.WhenTerminated.IsCompleted && downed.Elapsed < LeaveTimeout) Thread.Sleep(100);
        Assert.True(intruder.WhenTerminated.IsCompleted, $"the refused member was downed, and its system ends (waited {downed.Elapsed.TotalSeconds:F0} s)");
        Assert.Matches(@"Member \S+ proved it is experts-1 \(moce-node", c.C1.Output);
        Assert.Matches(@"Member \S+ proved it is coordinator-2 \(moce-coordinator", c.C1.Output);

        Finish(c);
        foreach (var port in new[] { strangerPort, oldPort }) Assert.DoesNotMatch($@"runs on \S+:{port}\b", c.C1.Output + c.C2.Output);
        Assert.DoesNotContain("Recovered from", c.C1.Output);
        AssertEqualsOneProcess(c.Run, "over TLS with refused joins and commands");
    }

    /// <summary>A process that skips what `moce node` checks at its start: an actor system in this process with
    /// <paramref name="cert"/> over TLS. With <paramref name="roles"/> it joins the cluster as a member with those roles and
    /// answers the supervisor's membership question with that certificate; without, it only connects (remote, no member).</summary>
    private static Akka.Actor.ActorSystem Intruder(System.Security.Cryptography.X509Certificates.X509Certificate2 cert, Tls tls, string[]? roles, int seedPort)
    {
        var o = new MoCE.Actors.NodeOptions(roles ?? [MoCE.Actors.Placement.NodeRoles.Experts], "127.0.0.1", MoCE.Actors.ClusterNode.FreeLoopbackPort(), [$"127.0.0.1:{seedPort}"], ["cpu"], 1, 1);
        var trust = new MoCE.Actors.Security.ClusterTrust(MoCE.Actors.Security.ClusterCertificates.LoadPublic("ca", tls.CaFile), []);
        var setup = new Akka.Remote.Transport.DotNetty.DotNettySslSetup(cert, false, true, false, trust.Callback());
        var config = Akka.Configuration.ConfigurationFactory.ParseString($"akka.remote.dot-netty.tcp.enable-ssl = true{(roles is null ? "\nakka.actor.provider = remote" : "")}")
            .WithFallback(MoCE.Actors.ClusterNode.Config(o, MoCE.Actors.ActorEngine.AkkaConfig()));
        var system = Akka.Actor.ActorSystem.Create(MoCE.Actors.ClusterNode.SystemName, Akka.Actor.BootstrapSetup.Create().WithConfig(config).And(setup));
        if (roles is null) return system;
        system.ActorOf(MoCE.Actors.MembershipActor.Props(System.Security.Cryptography.X509Certificates.X509CertificateLoader.LoadPkcs12(cert.Export(
            System.Security.Cryptography.X509Certificates.X509ContentType.Pkcs12, "x"), "x")), MoCE.Actors.MembershipActor.Name);
        Akka.Cluster.Cluster.Get(system).JoinSeedNodes([MoCE.Actors.NodeOptions.SeedAddress($"127.0.0.1:{seedPort}", tls: true)]);
        return system;
    }

    /// <summary>A failure in each phase of a planned move. Move 1, the rebalance onto a node that joins, has the router
    /// fail in its cut: the rollback replays to the boundary, which commits again and moves. Move 2, the drain of expert
    /// node 1, has the trainer fail while its experts are placed on the other nodes; move 3, the drain of the node that
    /// joined, has the router fail in the restore. In both the rollback's restore completes the move. Each move
    /// completes, each later drain is accepted, each drained node leaves, and the run equals the uninterrupted one. The
    /// run is paced (<see cref="Pace"/>): a drain that came after its end met no run (it once did, on a busy machine).</summary>
    [Fact]
    public void A_failure_in_the_cut_placement_or_restore_of_a_move_completes_it_and_the_run_equals_an_uninterrupted_one()
    {
        using var c = StartWithSchedule(_ =>
            "chaos { events = [\n" +
            "  { kind = fail-in-move, move = 1, phase = cut, owner = router }\n" +
            "  { kind = fail-in-move, move = 2, phase = placement, owner = trainer }\n" +
            "  { kind = fail-in-move, move = 3, phase = restore, owner = router }\n" + Pace +
            "] }\n");
        c.C1.WaitFor(@"\[actors\] step 10/150", RunTimeout);
        int port = MoCE.Actors.ClusterNode.FreeLoopbackPort();
        using var x3 = new Node("expert node 3", ["--roles", "experts", "--port", port.ToString(), "--seeds", $"127.0.0.1:{c.Ports[0]}",
            "--config", Path.Combine(AppContext.BaseDirectory, "hocon", "persistence-postgres.conf"), .. ClusterRunFixture.Baby]);
        c.C1.WaitFor(@"Chaos at step \d+: router fail-in-move \(throws in the cut of planned move 1\)", RunTimeout);
        c.C1.WaitFor(@"Recovered from router's failure", RunTimeout);
        var rebalanced = c.C1.WaitFor($@"rebalance onto \S+:{port}: experts \[([\d,]+)\] moved, restored from commit (\d+)", RunTimeout);
        output.WriteLine(rebalanced.Value);

        // the drains follow each other at once (the run is short: a drain that came after its end would get no answer);
        // the drained nodes' exits are checked after
        void Drain(int nodePort, int move, string owner, string phase)
        {
            var (code, said) = Moce(["node", "drain", $"127.0.0.1:{nodePort}", "--insecure", "--seeds", $"127.0.0.1:{c.Ports[0]}"]);
            Assert.True(code == 0, said + "\n--- coordinator 1:\n" + string.Join("\n", c.C1.Output.Split('\n')
                .Where(l => Regex.IsMatch(l, "Committed|moved|moving|Draining|joined|Chaos|Recovered|failed|Restoring|runs on|Member|straggl|step \\d+/150")).TakeLast(60)));   // accepted: the earlier move is not "under way"
            Assert.Matches(@"drained \S+: experts \[[^\]]+\] moved, restored from commit \d+", said);
            Assert.Matches($@"Chaos at step \d+: {owner} fail-in-move \(throws in the {phase} of planned move {move}\)", c.C1.Output);
            output.WriteLine(Regex.Match(said, @"drained .*").Value);
        }
        Drain(c.Ports[2], 2, "trainer", "placement");
        Drain(port, 3, "router", "restore");
        foreach (var node in new[] { c.X1, x3 })
        {
            Assert.True(node.WaitForExit(LeaveTimeout) == 0, node.Tail);
            Assert.Contains("Left the cluster (drained)", node.Output);
        }
        Assert.Equal(3, Regex.Matches(c.C1.Output, @"Recovered from (router|trainer)'s failure").Count);
        Assert.Matches(@"Chaos at step \d+: router straggler", c.C1.Output);       // the pacing was real
        Finish(c, killed: c.X1);
        foreach (var line in c.C1.Output.Split('\n').Where(l => Regex.IsMatch(l, "Committed|moved|moving|Draining|joined|Chaos|Resumed|Recovered|failed")))
            output.WriteLine(line.TrimEnd());
        AssertEqualsOneProcess(c.Run, "a failure in each phase of three moves");
    }

    /// <summary>A chaos event that paces the run: the router takes 75 ms longer for each block's forward and backward, so
    /// 150 steps last at least 45 s however fast the machine. A test that starts a node or runs a tool while the run
    /// trains needs the run to outlast that, which at full speed (15 to 45 steps/s) 150 steps do not. Timing only: the
    /// run still equals the one-process run bit for bit.</summary>
    private const string Pace = "  { kind = straggler, owner = router, from = 0, to = 1000000, ms = 75 }\n";

    /// <summary><see cref="Start"/> with the run paced (<see cref="Pace"/>).</summary>
    private Cluster StartPaced(string[]? extra = null) => StartWithSchedule(_ => "chaos { events = [\n" + Pace + "] }\n", extra);

    /// <summary><see cref="Start"/> with a chaos schedule for the coordinators, written once the ports are drawn.</summary>
    private Cluster StartWithSchedule(Func<int[], string> schedule, string[]? extra = null, Tls? tls = null)
    {
        var file = Path.Combine(Path.GetTempPath(), "moce-tests", $"chaos-{Guid.NewGuid():N}.conf");
        Directory.CreateDirectory(Path.GetDirectoryName(file)!);
        pendingSchedule = (file, schedule);
        try { return Start(null, extra, ["--chaos", file], tls); }
        finally { pendingSchedule = null; }
    }

    private (string file, Func<int[], string> text)? pendingSchedule;

    internal static void CopyRun(string from, string to)
    {
        foreach (var d in Directory.GetDirectories(from, "*", SearchOption.AllDirectories)) Directory.CreateDirectory(d.Replace(from, to));
        Directory.CreateDirectory(to);
        foreach (var f in Directory.GetFiles(from, "*", SearchOption.AllDirectories)) File.Copy(f, f.Replace(from, to));
    }
}
