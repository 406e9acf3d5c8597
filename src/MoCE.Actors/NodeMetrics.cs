using MoCE.Actors.Wire;
using MoCE.Core.Training;
using Prometheus;

namespace MoCE.Actors;

/// <summary>What a node exposes to Prometheus (prometheus-net's default registry), served on moce.metrics.port: the
/// run's progress where the supervisor runs, each expert's tokens where the expert runs, and every node's bytes on
/// the wire. Counters never go back: a replayed step after a rollback is not counted twice.</summary>
public static class NodeMetrics
{
    /// <summary>The run's progress metrics, told by the recorder of the actor engine and by the reference engines' loop
    /// (moce pretrain, moce train --engine local): the same series whichever engine trains.</summary>
    public static readonly IStepObserver Progress = new ProgressObserver();

    private sealed class ProgressObserver : IStepObserver
    {
        private long lastDone;

        public void Stepped(StepStats s, IReadOnlyList<ExpertStat> routing, double seconds)
        {
            Steps.Inc();
            Step.Set(lastDone = s.Step + 1);
            StepSeconds.Observe(seconds);
            ImagesPerSecond.Set(s.Images / Math.Max(1e-9, seconds));
            Loss.Set(s.Loss);
            CommitLag.Set(s.Step + 1 - CommittedStep.Value);
            foreach (var e in routing)
            {
                RoutedTokens.WithLabels(e.Block.ToString(System.Globalization.CultureInfo.InvariantCulture), $"expert-{e.Expert}").Inc(e.Tokens);
                GateEntropy.WithLabels(e.Block.ToString(System.Globalization.CultureInfo.InvariantCulture)).Set(e.GateEntropy);
            }
        }

        public void Committed(long step)
        {
            CommittedStep.Set(step);
            CommitLag.Set(Math.Max(0, lastDone - step));
        }
    }

    public static readonly Counter Steps = Metrics.CreateCounter("moce_steps_total", "Training steps completed on this coordinator (a replay after a rollback is not counted again).");
    public static readonly Gauge Step = Metrics.CreateGauge("moce_step", "Steps done: the last completed step + 1.");
    public static readonly Histogram StepSeconds = Metrics.CreateHistogram("moce_step_seconds", "Wall time per completed step.",
        new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.01, 2, 14) });
    public static readonly Gauge ImagesPerSecond = Metrics.CreateGauge("moce_images_per_second", "Images per second over the last step.");
    public static readonly Gauge Loss = Metrics.CreateGauge("moce_loss", "The last step's reconstruction loss.");
    public static readonly Gauge GateEntropy = Metrics.CreateGauge("moce_gate_entropy", "Mean gate entropy of an MoE block at the last step.", "block");
    public static readonly Counter RoutedTokens = Metrics.CreateCounter("moce_routed_tokens_total", "Tokens the router sent to each expert (top-1) in each MoE block, on the coordinator.", "block", "expert");
    public static readonly Counter ExpertTokens = Metrics.CreateCounter("moce_expert_tokens_total", "Token rows through an expert's forward on this node (replays included: that is work done).", "expert");
    public static readonly Counter ExpertCopySeconds = Metrics.CreateCounter("moce_expert_copy_seconds_total", "Time experts on this node spent keeping their in-memory copies (expert-exact), on their own threads before they answer an update.", "expert");
    public static readonly Counter CutBackgroundCpuSeconds = Metrics.CreateCounter("moce_cut_background_cpu_seconds_total", "CPU time (user and system) this process spent off the steps' path writing its parts of cuts and verifying them before a commit: what asynchronous commits still take from the cores.");
    /// <summary>Adds background cut work's CPU time (<see cref="CutBackgroundCpuSeconds"/>).</summary>
    public static void CutBackgroundCpu(TimeSpan t) => CutBackgroundCpuSeconds.Inc(t.TotalSeconds);
    public static readonly Counter Recoveries = Metrics.CreateCounter("moce_recoveries_total", "Recoveries from failures, by policy.", "policy");
    public static readonly Gauge CommittedStep = Metrics.CreateGauge("moce_committed_step", "The last committed checkpoint's step.");
    public static readonly Gauge CommitLag = Metrics.CreateGauge("moce_commit_lag_steps", "Steps done since the last commit: what a crash now would replay.");
    private static readonly Counter WireBytes = Metrics.CreateCounter("moce_wire_bytes_total", "Message body bytes this process serialized (sent) or deserialized (received), by message.", "direction", "message");

    static NodeMetrics()
    {
        Metrics.DefaultRegistry.AddBeforeCollectCallback(() =>
        {
            foreach (var (message, t) in WireTraffic.Snapshot())
            {
                WireBytes.WithLabels("sent", message).IncTo(t.Sent);
                WireBytes.WithLabels("received", message).IncTo(t.Received);
            }
        });
    }

    /// <summary>Serves /metrics on host:port until disposed; null when <paramref name="port"/> is 0 (off).</summary>
    public static IDisposable? Serve(string host, int port)
    {
        if (port == 0) return null;
        Metrics.SuppressDefaultMetrics(new SuppressDefaultMetricOptions { SuppressEventCounters = true, SuppressMeters = true, SuppressDebugMetrics = true });
        _ = Steps;                                                              // the static constructor registers the callbacks
        return new MetricServer(host, port).Start();
    }
}
