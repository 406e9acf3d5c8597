using System.Text.RegularExpressions;
using MoCE.Cli.Commands;
using MoCE.Runs.Configuration;
using YamlDotNet.Core;
using YamlDotNet.Core.Events;
using YamlDotNet.Serialization;

namespace MoCE.Cli.Tests;

/// <summary>deploy/: the compose file, the Prometheus configuration and the Kubernetes manifests parse as YAML, hold
/// the services the README describes, and every `moce node` command line in them is one `moce` accepts: known
/// options, a configuration that resolves and validates (the image's /app/hocon files read from this build).</summary>
public class DeployManifestTests
{
    private static string Deploy(string file) => Path.Combine(AppContext.BaseDirectory, "deploy", file);
    private static readonly IDeserializer Yaml = new DeserializerBuilder().Build();

    private static List<object?> Documents(string file)
    {
        var parser = new MergingParser(new Parser(new StringReader(File.ReadAllText(file))));   // compose uses <<: anchors
        parser.Consume<StreamStart>();
        var docs = new List<object?>();
        while (parser.Accept<DocumentStart>(out _)) docs.Add(Yaml.Deserialize<object>(parser));
        return docs;
    }

    private static Dictionary<object, object> Map(object? o) => Assert.IsType<Dictionary<object, object>>(o);
    private static List<string> Strings(object? o) => Assert.IsType<List<object>>(o).Select(x => Assert.IsType<string>(x)).ToList();

    /// <summary>A `moce node ...` argument list, checked as the binary would check it, with TLS on: its certificate and
    /// the CA's are named (they are made at deploy time, so the files themselves are not read here).</summary>
    private static MoceConfig CheckNode(List<string> args)
    {
        Assert.Equal("node", args[0]);
        var cli = CliArgs.Parse([.. args.Select(a => a.Replace("/app/hocon/", Path.Combine(AppContext.BaseDirectory, "hocon") + "/"))]);
        Assert.Empty(cli.Flags.Keys.Except(NodeCommand.Flags));
        var config = NodeCommand.Resolve(cli);
        Assert.EndsWith(".pfx", config.Node.TlsCertificate);                      // mutual TLS from the start
        Assert.EndsWith("ca.crt", config.Node.TlsCa);
        (config.Node with { TlsCertificate = "", TlsCa = "", Insecure = true }).Validated();   // the rest of the node's options
        if (config.Node.Coordinator) Assert.NotNull(cli.Run);                   // a coordinator needs the run directory
        return config;
    }

    [Fact]
    public void The_compose_file_runs_postgres_two_coordinators_two_expert_nodes_and_prometheus_with_valid_commands()
    {
        var compose = Map(Assert.Single(Documents(Deploy("docker-compose.yml"))));
        var services = Map(compose["services"]);
        Assert.Equal(["certs", "coordinator-1", "coordinator-2", "experts-1", "experts-2", "postgres", "prepare", "prometheus"], services.Keys.Cast<string>().Order());
        // the certs job makes the CA in its own volume and a certificate per node, under a password with no default
        var certs = Map(services["certs"]);
        var script = string.Join(" ", Strings(certs["entrypoint"]));
        Assert.Contains("cert init --out /ca", script);
        // each node's certificate has a role the supervisor admits with the node's cluster roles (a coordinator's: coordinator)
        var issued = Regex.Matches(script, @"for n in ([^;]+); do moce cert issue --ca /ca --name \$\$n --role (\w+)")
            .SelectMany(m => m.Groups[1].Value.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(n => (n, role: MoCE.Actors.Security.ClusterCertificates.ParseRole("--role", m.Groups[2].Value))))
            .ToDictionary(x => x.n, x => x.role);
        Assert.Contains("ca:/ca", Strings(certs["volumes"]));
        var roles = new Dictionary<string, string>();
        foreach (var name in new[] { "coordinator-1", "coordinator-2", "experts-1", "experts-2" })
        {
            var s = Map(services[name]);
            Assert.Contains("runs:/runs", Strings(s["volumes"]));                     // the shared checkpoint volume
            Assert.Contains("certs:/certs:ro", Strings(s["volumes"]));                // certificates, not the CA's key
            Assert.DoesNotContain(Strings(s["volumes"]), v => v.StartsWith("ca:", StringComparison.Ordinal));
            Assert.StartsWith("${MOCE_TLS_PASSWORD:?", (string)Map(s["environment"])["MOCE_TLS_PASSWORD"]);
            Assert.Contains("MOCE_POSTGRES", Map(s["environment"]).Keys.Cast<string>());
            Assert.Contains("certs", Map(s["depends_on"]).Keys.Cast<string>());
            var args = Strings(s["command"]);
            var node = CheckNode(args).Node;
            Assert.Equal($"/certs/{name}.pfx", node.TlsCertificate);
            Assert.Equal(name, node.Host);                                           // a flag's value as given, not quoted twice
            roles[name] = args[args.IndexOf("--roles") + 1];
            Assert.Contains(issued[name], MoCE.Actors.Security.MembershipGate.RolesFor(node.Roles));
        }
        Assert.Equal(["coordinator", "coordinator", "experts", "experts"], roles.Values);
        // the database password has no default: compose refuses to start without MOCE_PG_PASSWORD
        var password = (string)Map(Map(services["postgres"])["environment"])["POSTGRES_PASSWORD"];
        Assert.StartsWith("${MOCE_PG_PASSWORD:?", password);
        Assert.Contains("Password=${MOCE_PG_PASSWORD:?", (string)Map(Map(services["coordinator-1"])["environment"])["MOCE_POSTGRES"]);
        var targets = Strings(Map(Assert.IsType<List<object>>(Map(Map(Assert.Single(Documents(Deploy("prometheus.yml"))))["scrape_configs"] is List<object> l ? l[0] : null)["static_configs"])[0])["targets"]);
        Assert.Equal(roles.Keys.Select(n => $"{n}:9100"), targets);                // Prometheus scrapes every node's metrics port
    }

    [Fact]
    public void The_kubernetes_manifests_hold_statefulsets_headless_services_a_shared_volume_and_valid_commands()
    {
        var docs = Documents(Deploy("k8s/moce.yaml")).Select(Map).ToList();
        var kinds = docs.Select(d => $"{d["kind"]}/{Map(d["metadata"])["name"]}").ToList();
        Assert.Equal(["Job/moce-prepare", "PersistentVolumeClaim/moce-runs", "Service/moce-coordinator", "Service/moce-experts",
                      "Service/moce-postgres", "StatefulSet/moce-coordinator", "StatefulSet/moce-experts", "StatefulSet/moce-postgres"], kinds.Order());
        // no password ships: the Secret is created by the operator with a generated one (the file's header says how)
        var text = File.ReadAllText(Deploy("k8s/moce.yaml"));
        Assert.DoesNotContain("change-me", text);
        Assert.Matches(@"moce-coordinator-1; do moce cert issue --ca ca --name \$n --role coordinator", text);   // coordinators: a coordinator's certificate
        Assert.Matches(@"moce-experts-0 moce-experts-1; do moce cert issue --ca ca --name \$n --role node", text);
        Assert.DoesNotMatch(@"Password=[^$""]", text);
        Assert.Contains("create secret generic moce-postgres", text);
        foreach (var name in new[] { "moce-coordinator", "moce-experts" })
        {
            var svc = docs.Single(d => (string)d["kind"] == "Service" && (string)Map(d["metadata"])["name"] == name);
            Assert.Equal("None", Map(svc["spec"])["clusterIP"]);                 // headless: stable pod DNS names for seeds
            var set = Map(docs.Single(d => (string)d["kind"] == "StatefulSet" && (string)Map(d["metadata"])["name"] == name)["spec"]);
            Assert.Equal(name, set["serviceName"]);
            var pod = Map(Map(set["template"])["spec"]);
            var container = Map(Assert.IsType<List<object>>(pod["containers"])[0]);
            var config = CheckNode(Strings(container["args"]));
            Assert.Equal("moce-coordinator-0.moce-coordinator:4551", Assert.Single(config.Node.Seeds));
            Assert.Equal("/tls/$(POD_NAME).pfx", config.Node.TlsCertificate);        // each pod its own certificate, from the Secret
            Assert.Contains(Assert.IsType<List<object>>(pod["volumes"]).Select(Map), v => v.TryGetValue("secret", out var sec) && (string)Map(sec)["secretName"] == "moce-tls");
            Assert.Contains(Assert.IsType<List<object>>(container["env"]).Select(Map), e => (string)e["name"] == "MOCE_TLS_PASSWORD");
            Assert.Equal("moce-runs", Map(Map(Assert.IsType<List<object>>(pod["volumes"])[0])["persistentVolumeClaim"])["claimName"]);
        }
    }
}
