using System.Security.Cryptography.X509Certificates;
using Akka.Actor;
using Akka.Cluster;
using MoCE.Actors.Messages;

namespace MoCE.Actors;

/// <summary>A cluster node's answer to the supervisor's <see cref="ProveMembership"/> (with TLS), at /user/membership on
/// every node: a <see cref="MembershipProof"/> over the nonce, this node's address and its cluster roles, signed with the
/// node's certificate. It owns the certificate (its private key) and disposes it when it stops.</summary>
public sealed class MembershipActor : ReceiveActor
{
    public const string Name = "membership";

    public static Props Props(X509Certificate2 certificate) => Akka.Actor.Props.Create(() => new MembershipActor(certificate));

    private readonly X509Certificate2 certificate;

    public MembershipActor(X509Certificate2 certificate)
    {
        this.certificate = certificate;
        var cluster = Cluster.Get(Context.System);
        Receive<ProveMembership>(m => Sender.Tell(Security.ControlSigning.Sign(
            new MembershipProof(m.Step, m.Nonce, cluster.SelfAddress.ToString(), [.. cluster.SelfRoles]), certificate, DateTimeOffset.UtcNow)));
    }

    protected override void PostStop()
    {
        certificate.Dispose();
        base.PostStop();
    }
}
