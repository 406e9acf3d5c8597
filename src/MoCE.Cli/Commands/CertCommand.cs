using System.Globalization;
using MoCE.Actors;
using MoCE.Actors.Security;
using MoCE.Core.Config;

namespace MoCE.Cli.Commands;

/// <summary><c>moce cert init --out DIR</c> and <c>moce cert issue --ca DIR --name NAME --role node|coordinator|operator --out FILE</c>:
/// the cluster CA and the certificates it issues (<see cref="ClusterCertificates"/>). Private keys are written under the
/// password in $MOCE_TLS_PASSWORD.</summary>
public static class CertCommand
{
    public static int Run(CliArgs cli)
    {
        var password = Environment.GetEnvironmentVariable(NodeOptions.TlsPasswordVariable) ?? "";
        string Flag(string name) => cli.Flags.TryGetValue(name, out var v) && v.Length > 0 ? v : throw new ConfigException("--" + name, $"is required: see moce cert {cli.Positionals.FirstOrDefault()} --help");
        var validity = TimeSpan.FromDays(cli.FlagInt("days", 365));
        switch (cli.Positionals.FirstOrDefault())
        {
            case "init":
            {
                cli.RejectFlagsExcept("out", "name", "days");
                var dir = Flag("out");
                using var ca = ClusterCertificates.InitFiles(dir, cli.Flags.GetValueOrDefault("name", "moce-cluster-ca"), validity, password);
                Console.WriteLine($"CA {ca.Subject}, valid until {ca.NotAfter.ToUniversalTime():yyyy-MM-dd}");
                Console.WriteLine($"  {Path.Combine(dir, ClusterCertificates.CaKeyFile)}: its key (keep it off the cluster; moce cert issue reads it)");
                Console.WriteLine($"  {Path.Combine(dir, ClusterCertificates.CaCertFile)}: its certificate (every node and tool: moce.node.tls-ca)");
                return 0;
            }
            case "issue":
            {
                cli.RejectFlagsExcept("ca", "name", "role", "days", "out");
                var role = ClusterCertificates.ParseRole("--role", Flag("role"));
                using var cert = ClusterCertificates.IssueFile(Flag("ca"), Flag("name"), role, validity, password, Flag("out"));
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"{cert.Subject}, serial {ClusterCertificates.NormalizeSerial(cert.SerialNumber)}, valid until {cert.NotAfter.ToUniversalTime():yyyy-MM-dd} → {Flag("out")}"));
                Console.WriteLine("  revoke it by adding its serial to moce.node.tls-revoked on every node");
                return 0;
            }
            default:
                throw new ConfigException("cert", $"expected a subcommand, init or issue: moce cert init|issue (got '{string.Join(" ", cli.Positionals)}')");
        }
    }
}
