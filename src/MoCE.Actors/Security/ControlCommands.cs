using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace MoCE.Actors.Security;

/// <summary>A control command's signature: the signer's certificate (base64 DER), when it signed (Unix ms), and its ECDSA
/// signature (base64) over the command's canonical text and that time. <see cref="None"/>: unsigned.</summary>
public sealed record CommandSignature(string Certificate, long IssuedAtMs, string Signature)
{
    public static readonly CommandSignature None = new("", 0, "");
}

/// <summary>A command that steers a run (drain, add, stop). With TLS, the supervisor obeys it only when it is signed by a
/// certificate of the cluster CA whose role is one of <see cref="Roles"/> (<see cref="ControlAuthorizer"/>).</summary>
public interface IControlCommand
{
    /// <summary>What the signature covers: the command's kind and every field that decides what it does.</summary>
    string Canonical();
    IReadOnlyList<PeerRole> Roles();
    CommandSignature By { get; }
    IControlCommand SignedWith(CommandSignature by);
}

/// <summary>Signs a control command with the sender's certificate (its ECDSA private key).</summary>
public static class ControlSigning
{
    public static T Sign<T>(T command, X509Certificate2 cert, DateTimeOffset now) where T : IControlCommand
    {
        using var key = cert.GetECDsaPrivateKey() ?? throw new ArgumentException($"{cert.Subject} holds no ECDSA private key to sign with (moce cert issue makes one)", nameof(cert));
        long t = now.ToUnixTimeMilliseconds();
        var signature = key.SignData(Payload(command.Canonical(), t), HashAlgorithmName.SHA256);
        return (T)command.SignedWith(new CommandSignature(Convert.ToBase64String(cert.RawData), t, Convert.ToBase64String(signature)));
    }

    internal static byte[] Payload(string canonical, long issuedAtMs) => Encoding.UTF8.GetBytes($"moce-control\n{canonical}\n{issuedAtMs}");
}

/// <summary>The supervisor's check of a control command: signed, by a certificate the cluster's trust accepts, whose role
/// the command allows, within <paramref name="window"/> of now, over exactly this command, and not seen before (a
/// replayed signature is refused while it is inside the window; outside it, it is stale).</summary>
public sealed class ControlAuthorizer(ClusterTrust trust, TimeSpan window)
{
    private readonly Dictionary<string, long> seen = [];                          // accepted signatures → when signed

    public ClusterTrust.Verdict Check(IControlCommand command, DateTimeOffset now)
    {
        var by = command.By;
        string kind = command.Canonical().Split('/')[0];
        if (by.Signature.Length == 0)
            return Refused("(unsigned)", null, $"sent {kind} unsigned: with TLS, control commands are signed with the sender's certificate");
        X509Certificate2 cert;
        byte[] signature;
        try
        {
            cert = X509CertificateLoader.LoadCertificate(Convert.FromBase64String(by.Certificate));
            signature = Convert.FromBase64String(by.Signature);
        }
        catch (Exception e) when (e is FormatException or CryptographicException)
        {
            return Refused("(unreadable certificate)", null, $"sent {kind} with a signature that does not parse: {e.Message}");
        }
        using (cert)
        {
            var v = trust.Check(cert);
            if (!v.Accepted) return v;
            if (v.Role is not { } role || !command.Roles().Contains(role))
                return v with { Accepted = false, Reason = $"may not {kind}: it needs the {string.Join(" or ", command.Roles().Select(ClusterCertificates.RoleUnit))} role" };
            long age = now.ToUnixTimeMilliseconds() - by.IssuedAtMs;
            if (Math.Abs(age) > window.TotalMilliseconds)
                return v with { Accepted = false, Reason = $"signed {kind} {age / 1000.0:F0} s from now, outside the {window.TotalSeconds:F0} s window" };
            using var key = cert.GetECDsaPublicKey();
            if (key is null || !key.VerifyData(ControlSigning.Payload(command.Canonical(), by.IssuedAtMs), signature, HashAlgorithmName.SHA256))
                return v with { Accepted = false, Reason = $"sent {kind} with a signature that does not match the command" };
            foreach (var old in seen.Where(kv => now.ToUnixTimeMilliseconds() - kv.Value > 2 * window.TotalMilliseconds).Select(kv => kv.Key).ToList()) seen.Remove(old);
            if (!seen.TryAdd(by.Signature, by.IssuedAtMs)) return v with { Accepted = false, Reason = $"replayed a {kind} already obeyed" };
            return v;
        }
    }

    private static ClusterTrust.Verdict Refused(string identity, PeerRole? role, string reason) => new(false, identity, role, reason);
}
