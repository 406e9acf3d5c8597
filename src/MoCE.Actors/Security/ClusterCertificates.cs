using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using MoCE.Core.Config;

namespace MoCE.Actors.Security;

/// <summary>What a certificate of the cluster CA lets its holder do: <see cref="Node"/> joins the cluster as an expert
/// node and runs its work; <see cref="Coordinator"/> joins as a coordinator or an expert node, and may stop the run (its
/// Ctrl-C or SIGTERM); <see cref="Operator"/> steers a run from outside (drain, add, stop) but may not join. The role is
/// the subject's OU, which the CA signs, so a holder cannot change it.</summary>
public enum PeerRole { Node, Operator, Coordinator }

/// <summary>The cluster's certificates: a CA (<c>moce cert init</c>) and the node and operator certificates it issues
/// (<c>moce cert issue</c>). Keys are ECDSA P-256; a certificate names its holder (CN) and its role (OU), and carries
/// the TLS server and client usages, since every node is both ends of some connection.</summary>
public static class ClusterCertificates
{
    public const string Organization = "moce";
    private const string OrganizationalUnitOid = "2.5.4.11";

    public static string RoleUnit(PeerRole role) => "moce-" + RoleName(role);

    /// <summary>The role as <c>moce cert issue --role</c> writes it.</summary>
    public static string RoleName(PeerRole role) => role switch
    {
        PeerRole.Node => "node",
        PeerRole.Operator => "operator",
        PeerRole.Coordinator => "coordinator",
        _ => throw new ArgumentOutOfRangeException(nameof(role), role, null),
    };

    public static PeerRole ParseRole(string key, string value) =>
        Enum.GetValues<PeerRole>().Where(r => RoleName(r) == value).Select(r => (PeerRole?)r).FirstOrDefault()
        ?? throw new ConfigException(key, $"expected {string.Join(", ", Enum.GetValues<PeerRole>().Select(RoleName))}; got '{value}'");

    /// <summary>A new CA certificate with its private key (self-signed, may sign end-entity certificates only).</summary>
    public static X509Certificate2 CreateCa(string name, TimeSpan validity)
    {
        CheckName(name);
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest(new X500DistinguishedName($"CN={name}, O={Organization}"), key, HashAlgorithmName.SHA256);
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(certificateAuthority: true, hasPathLengthConstraint: true, pathLengthConstraint: 0, critical: true));
        req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, critical: true));
        req.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(req.PublicKey, critical: false));
        var now = DateTimeOffset.UtcNow;
        return req.CreateSelfSigned(now.AddMinutes(-5), now + validity);
    }

    /// <summary>A certificate for <paramref name="name"/> in <paramref name="role"/>, signed by <paramref name="ca"/>
    /// (which must hold its private key), with its own new private key and a random serial number.</summary>
    public static X509Certificate2 Issue(X509Certificate2 ca, string name, PeerRole role, TimeSpan validity)
    {
        CheckName(name);
        if (!ca.HasPrivateKey) throw new ArgumentException("the CA certificate holds no private key: it cannot sign", nameof(ca));
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var req = new CertificateRequest(new X500DistinguishedName($"CN={name}, OU={RoleUnit(role)}, O={Organization}"), key, HashAlgorithmName.SHA256);
        req.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, critical: true));
        req.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, critical: true));
        req.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1"), new Oid("1.3.6.1.5.5.7.3.2")], critical: false));
        req.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(ca, includeKeyIdentifier: true, includeIssuerAndSerial: false));
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7f;                                                          // a positive integer
        var now = DateTimeOffset.UtcNow;
        var notAfter = now + validity < ca.NotAfter ? now + validity : new DateTimeOffset(ca.NotAfter.ToUniversalTime());
        using var cert = req.Create(ca, now.AddMinutes(-5), notAfter, serial);
        return cert.CopyWithPrivateKey(key);
    }

    /// <summary>The role a certificate's subject names (its OU), or null when it names none of ours.</summary>
    public static PeerRole? RoleOf(X509Certificate2 cert)
    {
        foreach (var rdn in cert.SubjectName.EnumerateRelativeDistinguishedNames())
            if (rdn.GetSingleElementType().Value == OrganizationalUnitOid)
                foreach (var role in Enum.GetValues<PeerRole>())
                    if (rdn.GetSingleElementValue() == RoleUnit(role)) return role;
        return null;
    }

    /// <summary>The holder's name (CN).</summary>
    public static string NameOf(X509Certificate2 cert) => cert.GetNameInfo(X509NameType.SimpleName, forIssuer: false);

    /// <summary>A serial number as configuration and logs write it: upper-case hex without separators.</summary>
    public static string NormalizeSerial(string serial) => new string(serial.Where(char.IsAsciiHexDigit).Select(char.ToUpperInvariant).ToArray()).TrimStart('0');

    /// <summary>The public certificate as PEM (what every node and tool needs of the CA).</summary>
    public static string Pem(X509Certificate2 cert) => cert.ExportCertificatePem();

    /// <summary>Reads a PEM or DER certificate file (the CA's public part), or a clear error naming the key.</summary>
    public static X509Certificate2 LoadPublic(string key, string path)
    {
        if (!File.Exists(path)) throw new ConfigException(key, $"'{path}' does not exist");
        try { return X509CertificateLoader.LoadCertificateFromFile(path); }
        catch (CryptographicException e) { throw new ConfigException(key, $"'{path}' is not a certificate (PEM or DER): {e.Message}"); }
    }

    /// <summary>The CA's files in a directory: its key and certificate (PKCS#12, for <c>moce cert issue</c> only) and
    /// its public certificate (PEM, for every node and tool: moce.node.tls-ca).</summary>
    public const string CaKeyFile = "ca.pfx", CaCertFile = "ca.crt";

    /// <summary><c>moce cert init</c>: a new CA in <paramref name="dir"/> (ca.pfx protected by <paramref name="password"/>,
    /// ca.crt). Existing files are never overwritten: a new CA would orphan every certificate of the old one.</summary>
    public static X509Certificate2 InitFiles(string dir, string name, TimeSpan validity, string password)
    {
        RequirePassword(password);
        Directory.CreateDirectory(dir);
        string key = Path.Combine(dir, CaKeyFile), crt = Path.Combine(dir, CaCertFile);
        foreach (var f in new[] { key, crt })
            if (File.Exists(f)) throw new ConfigException("--out", $"'{f}' exists: a cluster has one CA (remove it first to start over, and issue every certificate again)");
        var ca = CreateCa(name, validity);
        WritePrivate(key, ca.Export(X509ContentType.Pkcs12, password));
        File.WriteAllText(crt, Pem(ca));
        return ca;
    }

    /// <summary><c>moce cert issue</c>: a certificate for <paramref name="name"/> in <paramref name="role"/>, signed by the CA
    /// in <paramref name="caDir"/>, written to <paramref name="outPath"/> (PKCS#12 with its key, protected by
    /// <paramref name="password"/>, which also opens ca.pfx). Returns it (its serial number is what revokes it).</summary>
    public static X509Certificate2 IssueFile(string caDir, string name, PeerRole role, TimeSpan validity, string password, string outPath)
    {
        RequirePassword(password);
        var key = Path.Combine(caDir, CaKeyFile);
        if (!File.Exists(key)) throw new ConfigException("--ca", $"'{key}' does not exist: moce cert init --out {caDir} makes the CA");
        if (File.Exists(outPath)) throw new ConfigException("--out", $"'{outPath}' exists");
        X509Certificate2 ca;
        try { ca = X509CertificateLoader.LoadPkcs12FromFile(key, password, X509KeyStorageFlags.Exportable); }
        catch (CryptographicException e) { throw new ConfigException("--ca", $"'{key}' cannot be opened with the password in $MOCE_TLS_PASSWORD: {e.Message}"); }
        using (ca)
        {
            var cert = Issue(ca, name, role, validity);
            var dir = Path.GetDirectoryName(Path.GetFullPath(outPath));
            if (dir is not null) Directory.CreateDirectory(dir);
            WritePrivate(outPath, cert.Export(X509ContentType.Pkcs12, password));
            return cert;
        }
    }

    private static void RequirePassword(string password)
    {
        if (string.IsNullOrEmpty(password))
            throw new ConfigException("$MOCE_TLS_PASSWORD", "is empty: a private key is written only under a password (export MOCE_TLS_PASSWORD=... first)");
    }

    /// <summary>A file only its owner can read (a private key), written before any other can open it.</summary>
    private static void WritePrivate(string path, byte[] bytes)
    {
        var options = new FileStreamOptions { Mode = FileMode.CreateNew, Access = FileAccess.Write };
        if (!OperatingSystem.IsWindows()) options.UnixCreateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;
        using var f = new FileStream(path, options);
        f.Write(bytes);
        f.Flush(flushToDisk: true);
    }

    private static void CheckName(string name)
    {
        if (name.Length is 0 or > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '.' or '_'))
            throw new ConfigException("--name", $"'{name}' must be 1 to 64 letters, digits, '-', '.' or '_'");
    }
}
