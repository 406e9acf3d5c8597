using System.Security.Cryptography.X509Certificates;
using System.Text.RegularExpressions;
using MoCE.Actors;
using MoCE.Actors.Security;
using static MoCE.Cli.Tests.PretrainProcessTests;

namespace MoCE.Cli.Tests;

/// <summary>`moce cert init` and `moce cert issue`, the real binary: a CA once, certificates it signs with the role asked
/// for, keys only under a password and only for their owner.</summary>
[System.Runtime.Versioning.UnsupportedOSPlatform("windows")]
public class CertProcessTests
{
    [Fact]
    public void Cert_init_makes_one_CA_and_issue_signs_node_and_operator_certificates()
    {
        var dir = Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N"));
        var ca = Path.Combine(dir, "ca");
        Environment.SetEnvironmentVariable(NodeOptions.TlsPasswordVariable, null);
        var (code, output) = Moce(["cert", "init", "--out", ca]);
        Assert.Equal(2, code);
        Assert.Contains("$MOCE_TLS_PASSWORD", output);
        Assert.False(File.Exists(Path.Combine(ca, ClusterCertificates.CaKeyFile)));

        const string password = "pw for the test";
        Environment.SetEnvironmentVariable(NodeOptions.TlsPasswordVariable, password);
        (code, output) = Moce(["cert", "init", "--out", ca, "--name", "test-ca"]);
        Assert.True(code == 0, output);
        var key = Path.Combine(ca, ClusterCertificates.CaKeyFile);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(key));
        (code, output) = Moce(["cert", "init", "--out", ca]);
        Assert.Equal(2, code);
        Assert.Contains("exists", output);

        var trust = new ClusterTrust(ClusterCertificates.LoadPublic("ca", Path.Combine(ca, ClusterCertificates.CaCertFile)), []);
        foreach (var (name, role, expected) in new[] { ("node-1", "node", PeerRole.Node), ("alice", "operator", PeerRole.Operator) })
        {
            var pfx = Path.Combine(dir, name + ".pfx");
            (code, output) = Moce(["cert", "issue", "--ca", ca, "--name", name, "--role", role, "--out", pfx, "--days", "30"]);
            Assert.True(code == 0, output);
            using var cert = X509CertificateLoader.LoadPkcs12FromFile(pfx, password);
            Assert.True(cert.HasPrivateKey);
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(pfx));
            var v = trust.Check(cert);
            Assert.True(v.Accepted, v.Reason);
            Assert.Equal(expected, v.Role);
            Assert.Equal(name, ClusterCertificates.NameOf(cert));
            Assert.Contains($"serial {ClusterCertificates.NormalizeSerial(cert.SerialNumber)}", output);   // what revokes it
            Assert.InRange((cert.NotAfter - DateTime.Now).TotalDays, 29, 31);
        }
        (code, output) = Moce(["cert", "issue", "--ca", ca, "--name", "bob", "--role", "admin", "--out", Path.Combine(dir, "bob.pfx")]);
        Assert.Equal(2, code);
        Assert.Matches(new Regex("--role.*expected node, operator, coordinator"), output);
        Environment.SetEnvironmentVariable(NodeOptions.TlsPasswordVariable, "not the CA's");
        (code, output) = Moce(["cert", "issue", "--ca", ca, "--name", "bob", "--role", "node", "--out", Path.Combine(dir, "bob.pfx")]);
        Assert.Equal(2, code);
        Assert.Contains("cannot be opened", output);
        Environment.SetEnvironmentVariable(NodeOptions.TlsPasswordVariable, null);
        Directory.Delete(dir, recursive: true);
    }
}
