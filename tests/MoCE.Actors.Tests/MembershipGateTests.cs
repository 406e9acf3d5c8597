using System.Security.Cryptography.X509Certificates;
using MoCE.Actors.Messages;
using MoCE.Actors.Placement;
using MoCE.Actors.Security;

namespace MoCE.Actors.Tests;

/// <summary>With TLS the handshake admits every certificate of the cluster CA (an operator's tools connect too); the
/// supervisor then admits a member only once it proved, over a fresh nonce, a role that may join with its cluster roles:
/// a coordinator needs the coordinator role, an expert node the node or coordinator role, an operator never joins.</summary>
public class MembershipGateTests
{
    private static readonly X509Certificate2 Ca = ClusterCertificates.CreateCa("test-ca", TimeSpan.FromDays(30));
    private static readonly X509Certificate2 Node = ClusterCertificates.Issue(Ca, "experts-1", PeerRole.Node, TimeSpan.FromDays(10));
    private static readonly X509Certificate2 Coordinator = ClusterCertificates.Issue(Ca, "coordinator-1", PeerRole.Coordinator, TimeSpan.FromDays(10));
    private static readonly X509Certificate2 Operator = ClusterCertificates.Issue(Ca, "alice", PeerRole.Operator, TimeSpan.FromDays(10));
    private const string Address = "akka.ssl.tcp://moce@10.0.0.7:4553";

    private static MembershipGate Gate(params string[] revoked) => new(new ControlAuthorizer(new ClusterTrust(Ca, revoked), TimeSpan.FromMinutes(5)));

    private static MembershipProof Proof(string nonce, X509Certificate2 by, string[] roles, string address = Address) =>
        ControlSigning.Sign(new MembershipProof(-1, nonce, address, roles), by, DateTimeOffset.UtcNow);

    [Fact]
    public void A_member_is_admitted_only_by_a_signed_answer_to_its_own_question_with_a_role_that_may_join_as_it_joined()
    {
        string[] experts = [NodeRoles.Experts], coordinator = [NodeRoles.Coordinator], both = [NodeRoles.Coordinator, NodeRoles.Experts];
        (ClusterTrust.Verdict v, bool answered) Decide(X509Certificate2 by, string[] joined, string[]? proved = null)
        {
            var gate = Gate();
            var nonce = gate.Ask(Address, joined);
            var (v, answered) = gate.Decide(Proof(nonce, by, proved ?? joined), DateTimeOffset.UtcNow);
            Assert.True(answered);
            Assert.Equal(v.Accepted, gate.IsMember(Address));
            return (v, answered);
        }
        Assert.True(Decide(Node, experts).v.Accepted);
        Assert.True(Decide(Coordinator, experts).v.Accepted);
        Assert.True(Decide(Coordinator, both).v.Accepted);
        Assert.Equal(PeerRole.Coordinator, Decide(Coordinator, coordinator).v.Role);
        Assert.Contains("may not join: it needs the moce-node or moce-coordinator role", Decide(Operator, experts).v.Reason);
        Assert.Contains("may not join: it needs the moce-coordinator role", Decide(Node, coordinator).v.Reason);
        Assert.Contains("may not join: it needs the moce-coordinator role", Decide(Node, both).v.Reason);
        Assert.Contains("alice (moce-operator", Decide(Operator, experts).v.Identity);
        Assert.Contains("joined with [coordinator]", Decide(Node, coordinator, proved: experts).v.Reason);   // a proof for other roles
        var unsignedGate = Gate();
        Assert.Contains("unsigned", unsignedGate.Decide(new MembershipProof(-1, unsignedGate.Ask(Address, experts), Address, experts), DateTimeOffset.UtcNow).Verdict.Reason);

        // a proof that answers no question (another nonce, another address, or one already answered) is not the member's
        var gate = Gate();
        var nonce = gate.Ask(Address, experts);
        Assert.False(gate.Decide(Proof("00", Node, experts), DateTimeOffset.UtcNow).Answered);
        Assert.False(gate.Decide(Proof(nonce, Node, experts, "akka.ssl.tcp://moce@10.0.0.8:4553"), DateTimeOffset.UtcNow).Answered);
        Assert.False(gate.IsMember(Address));
        var good = Proof(nonce, Node, experts);
        Assert.True(gate.Decide(good, DateTimeOffset.UtcNow).Verdict.Accepted);
        gate.Removed(Address);                                                        // it leaves and comes back: asked again
        var again = gate.Ask(Address, experts);
        Assert.NotEqual(nonce, again);
        Assert.False(gate.Decide(good, DateTimeOffset.UtcNow).Answered);              // the old proof does not answer the new question
        Assert.False(gate.IsMember(Address));

        // a revoked node's proof is refused; an unanswered question times out once, and not after an answer
        var revokedGate = Gate(ClusterCertificates.NormalizeSerial(Node.SerialNumber));
        Assert.Contains("revoked", revokedGate.Decide(Proof(revokedGate.Ask(Address, experts), Node, experts), DateTimeOffset.UtcNow).Verdict.Reason);
        Assert.True(gate.TimedOut(Address, again));
        Assert.False(gate.TimedOut(Address, again));
        var answeredGate = Gate();
        var n = answeredGate.Ask(Address, experts);
        answeredGate.Decide(Proof(n, Node, experts), DateTimeOffset.UtcNow);
        Assert.False(answeredGate.TimedOut(Address, n));
        Assert.True(answeredGate.IsMember(Address));
    }
}
