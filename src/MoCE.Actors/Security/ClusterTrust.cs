using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Akka.Event;
using Akka.Remote.Transport.DotNetty;

namespace MoCE.Actors.Security;

/// <summary>Whom a node talks to: a peer's certificate must chain to the cluster CA (the only trust anchor: the system's
/// store is not consulted), be valid now, carry a role, and not be on the revocation list (serial numbers, from
/// moce.node.tls-revoked). Host names are not checked: identities are the certificates' names and roles.</summary>
public sealed class ClusterTrust(X509Certificate2 ca, IEnumerable<string> revokedSerials)
{
    private readonly HashSet<string> revoked = revokedSerials.Select(ClusterCertificates.NormalizeSerial).ToHashSet(StringComparer.Ordinal);

    public X509Certificate2 Ca => ca;

    /// <summary>The decision on one certificate, and the identity it names (for the log).</summary>
    public sealed record Verdict(bool Accepted, string Identity, PeerRole? Role, string Reason);

    /// <summary>A certificate that does not parse (a damaged or crafted one from the wire) is refused, never thrown.</summary>
    public Verdict Check(X509Certificate2 cert)
    {
        try { return CheckParsed(cert); }
        catch (CryptographicException e) { return new Verdict(false, "(malformed certificate)", null, $"is not a well-formed certificate: {e.Message}"); }
    }

    private Verdict CheckParsed(X509Certificate2 cert)
    {
        var role = ClusterCertificates.RoleOf(cert);
        string identity = $"{ClusterCertificates.NameOf(cert)} ({(role is { } r ? ClusterCertificates.RoleUnit(r) : "no role")}, serial {ClusterCertificates.NormalizeSerial(cert.SerialNumber)}, issuer {cert.Issuer})";
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.Add(ca);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;              // revocation is the configured list
        bool built = chain.Build(cert);
        if (!built || chain.ChainElements.Count < 2 || chain.ChainElements[^1].Certificate.Thumbprint != ca.Thumbprint)
        {
            var status = string.Join(", ", chain.ChainStatus.Select(s => s.Status.ToString()).Distinct());
            return new Verdict(false, identity, role, $"does not chain to the cluster CA {ca.Subject}{(status.Length > 0 ? $" ({status})" : "")}");
        }
        if (revoked.Contains(ClusterCertificates.NormalizeSerial(cert.SerialNumber))) return new Verdict(false, identity, role, "is revoked (moce.node.tls-revoked)");
        if (role is null) return new Verdict(false, identity, null, $"names no role (OU {string.Join(", ", Enum.GetValues<PeerRole>().Select(ClusterCertificates.RoleUnit))})");
        return new Verdict(true, identity, role, "");
    }

    /// <summary>The TLS handshake's check for Akka.Remote: <see cref="Check"/>; every refusal is logged (one warning
    /// naming the peer's address, identity and reason) and reported to <paramref name="refused"/>.</summary>
    public CertificateValidationCallback Callback(Action<Verdict, string>? refused = null) => (certificate, _, remotePeer, _, log) =>
    {
        var v = certificate is null ? new Verdict(false, "(no certificate)", null, "presented no certificate") : Check(certificate);
        if (!v.Accepted)
        {
            log?.Warning("TLS peer {0} refused: {1} {2}", remotePeer, v.Identity, v.Reason);
            refused?.Invoke(v, remotePeer);
        }
        return v.Accepted;
    };
}
