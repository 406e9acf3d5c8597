using System.Security.Cryptography;
using MoCE.Actors.Messages;
using MoCE.Actors.Placement;

namespace MoCE.Actors.Security;

/// <summary>The supervisor's decisions on who is a member (with TLS). The handshake lets in every certificate of the
/// cluster CA, an operator's too (tools connect as cluster clients), so it cannot tell a node from a tool. When a member
/// comes up, the supervisor asks it for a <see cref="MembershipProof"/> over a fresh nonce (<see cref="Ask"/>); the member
/// is trusted, and may host experts, only once its certificate proved a role that may join with the member's cluster
/// roles (<see cref="RolesFor"/>). A refused proof or none in time downs the member. A plain state type: no actor, no
/// clock of its own.</summary>
public sealed class MembershipGate(ControlAuthorizer authorizer)
{
    private readonly Dictionary<string, (string nonce, IReadOnlyList<string> roles)> asked = [];
    private readonly HashSet<string> members = [];

    /// <summary>Who may join with these cluster roles: a coordinator (it may run the supervisor and stop the run) needs
    /// the coordinator role; any other member (an expert node) the node or the coordinator role. Operators never.</summary>
    public static IReadOnlyList<PeerRole> RolesFor(IEnumerable<string> clusterRoles) =>
        clusterRoles.Contains(NodeRoles.Coordinator) ? [PeerRole.Coordinator] : [PeerRole.Node, PeerRole.Coordinator];

    /// <summary>A question for the member at <paramref name="address"/>: the nonce its proof must sign.</summary>
    public string Ask(string address, IReadOnlyList<string> clusterRoles)
    {
        var nonce = Convert.ToHexString(RandomNumberGenerator.GetBytes(16));
        asked[address] = (nonce, clusterRoles);
        members.Remove(address);
        return nonce;
    }

    /// <summary>This node itself: its certificate passed its own start (<see cref="NodeOptions.Trust"/>).</summary>
    public void TrustSelf(string address) => members.Add(address);

    public bool IsMember(string address) => members.Contains(address);

    /// <summary>The decision on a proof. <c>Answered</c>: it answers the question asked of that address (the nonce), so a
    /// refusal is the member's own; a proof nobody asked for is refused without consequence for the address it names.</summary>
    public (ClusterTrust.Verdict Verdict, bool Answered) Decide(MembershipProof proof, DateTimeOffset now)
    {
        if (!asked.TryGetValue(proof.Address, out var q) || q.nonce != proof.Nonce)
            return (new ClusterTrust.Verdict(false, "(unknown)", null, $"sent a membership proof for {proof.Address} that answers no question asked of it"), false);
        asked.Remove(proof.Address);
        if (!q.roles.Order(StringComparer.Ordinal).SequenceEqual(proof.ClusterRoles.Order(StringComparer.Ordinal)))
            return (new ClusterTrust.Verdict(false, "(unverified)", null,
                $"proved cluster roles [{string.Join(", ", proof.ClusterRoles)}] but joined with [{string.Join(", ", q.roles)}]"), true);
        var v = authorizer.Check(proof, now);
        if (v.Accepted) members.Add(proof.Address);
        return (v, true);
    }

    /// <summary>The question to <paramref name="address"/> with this nonce went unanswered: true when it is still open
    /// (the member is refused), false when it was answered or asked again meanwhile.</summary>
    public bool TimedOut(string address, string nonce)
    {
        if (!asked.TryGetValue(address, out var q) || q.nonce != nonce) return false;
        asked.Remove(address);
        return true;
    }

    public void Removed(string address)
    {
        asked.Remove(address);
        members.Remove(address);
    }
}
