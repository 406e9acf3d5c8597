namespace MoCE.Actors;

/// <summary>How the supervisor interrupts the trainer's step when an owner is lost with its node. The trainer blocks its
/// own thread on replies (by design: the step is sequential), so it cannot receive a message meanwhile, and a lost
/// owner never replies: without this, the step would wait out the ask timeout. The trainer registers each step's
/// attempt (its generation); the supervisor cancels attempts up to a generation, naming the owners that are gone, so
/// the trainer's abort does not wait on them either. One instance per run, shared by the coordinator's supervisor and
/// trainer (always in the same process); thread-safe.</summary>
public sealed class StepCancellation
{
    private readonly Lock gate = new();
    private (int generation, CancellationTokenSource cts)? current;
    private IReadOnlySet<int> lost = new HashSet<int>();

    /// <summary>The trainer starts an attempt of a step; the token fires if the supervisor cancels it.</summary>
    public CancellationToken Begin(int generation)
    {
        lock (gate)
        {
            current?.cts.Dispose();
            current = (generation, new CancellationTokenSource());
            lost = new HashSet<int>();
            return current.Value.cts.Token;
        }
    }

    /// <summary>The supervisor cancels the running attempt if it is of <paramref name="generation"/> or older.</summary>
    public void Cancel(int generation, IEnumerable<int> lostExperts)
    {
        lock (gate)
        {
            if (current is not { } c || c.generation > generation) return;
            lost = lostExperts.ToHashSet();
            c.cts.Cancel();
        }
    }

    /// <summary>The experts the cancelled attempt lost: the trainer's abort skips them.</summary>
    public IReadOnlySet<int> Lost { get { lock (gate) return lost; } }
}
