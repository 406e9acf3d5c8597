using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Runtime;
using Serilog;

namespace MoCE.Runs;

/// <summary>The pipeline (<c>moce pipeline</c>): the whole method on one run: pretrain → cluster → for each seed of the MoE phase,
/// train (moce.pipeline.methods) → customize and eval; with moce.pipeline.transfer-baselines, a dense MAE is also
/// pre-trained on each source of the mix alone, at the mix's steps (RUN/alone-NAME) and at its epochs
/// (RUN/alone-NAME-epochs), and evaluated, for the negative-transfer table.
/// Seeds other than the run's train in RUN/seed-N from this run's pre-training. With moce.train.from-run the
/// pre-training, clustering and baselines are that run's, and only the MoE phase runs here. With several seeds or the
/// baselines it ends with the study report (RUN/study/report.md). Every phase resumes or skips what is already done, so
/// running it again after an interruption continues where it stopped.</summary>
public static class Pipeline
{
    public static void Execute(Session s, CancellationToken ct)
    {
        var timings = new Dictionary<string, double>();
        var total = Stopwatch.StartNew();
        void Phase(string name, Action a) => timings[name] = Math.Round(RunPhase(s, name, a, ct), 1);
        var tasks = s.Config.Eval.Tasks;
        bool upstream = s.Config.FromRun.Length > 0;                                // pre-training, clustering and baselines are that run's
        if (upstream) Log.Information("Pre-training, clustering and the negative-transfer baselines come from run {Run}", s.Upstream.Root);
        else Phase("pretrain", () => PretrainPhase.Execute(s, ct));

        var sources = s.Config.Data.Mix.Where(kv => kv.Value > 0).Select(kv => kv.Key).Order(StringComparer.Ordinal).ToList();
        if (s.Config.TransferBaselines && !upstream)
        {
            var baselines = new Dictionary<string, Session>();
            if (sources.Count < 2) Log.Warning("moce.pipeline.transfer-baselines: the mix has one source, so there is no baseline to compare with");
            else
            {
                var counts = s.Data.MixCounts();
                int mixImages = counts.Values.Sum();
                var p = s.Config.Pretrain;
                foreach (var src in sources)
                {
                    // one source alone: at the mix's steps (exposure and interference), and at the mix's epochs, which
                    // is the source's exposure in the mix without the others (interference alone)
                    string[] alone = [.. sources.Select(o => $"data.mix.{o}={(o == src ? 1 : 0)}")];
                    var b = Sub(s, $"alone-{src}", alone);
                    baselines[src] = b;
                    Phase($"pretrain-alone-{src}", () => PretrainPhase.Execute(b, ct));
                    long steps = DataSources.EqualEpochSteps(p.Steps, counts[src], mixImages);
                    long warmup = (long)Math.Round((double)p.WarmupSteps * steps / p.Steps, MidpointRounding.AwayFromZero);
                    var e = Sub(s, $"alone-{src}-epochs", [.. alone, $"pretrain.steps={steps}", $"pretrain.warmup-steps={warmup}"]);
                    baselines[$"{src}-epochs"] = e;
                    Log.Information("{Source} alone at the mix's epochs: {Steps} steps ({Images} of the mix's {Mix} images), warmup {Warmup}", src, steps, counts[src], mixImages, warmup);
                    Phase($"pretrain-alone-{src}-epochs", () => PretrainPhase.Execute(e, ct));
                }
            }
            foreach (var (src, b) in baselines)
                Phase($"eval-alone-{src}", () => EvalPhase.Execute(b, ["pretrained"], tasks));
            Phase("eval-pretrained", () => EvalPhase.Execute(s, ["pretrained"], tasks));
        }

        if (!upstream) Phase("cluster", () => ClusterPhase.Execute(s));
        var seedRuns = new List<Session>();
        foreach (var seed in s.Config.PipelineSeeds)
        {
            var r = SeedRun(s, seed);
            seedRuns.Add(r);
            string tag = seedRuns.Count == 1 && s.Config.PipelineSeeds.Count == 1 ? "" : string.Create(CultureInfo.InvariantCulture, $" seed {seed}");
            foreach (var m in s.Config.PipelineMethods)
                Phase(Artifacts.TrainPhase(m) + tag, () => TrainingPhase.Execute(r, m, r.Config.Engine, ct));
            var models = s.Config.Eval.Models.Where(x => Available(x, s.Config.PipelineMethods)).ToList();
            Phase("eval" + tag, () => EvalPhase.Execute(r, models, tasks));
            if (s.Config.PipelineFineTune)
                Phase("finetune" + tag, () => FineTunePhase.Execute(r, FineTunePhase.Encoders.Where(models.Contains).ToList(), tasks, ct));
        }
        bool study = seedRuns.Count > 1 || s.Config.TransferBaselines;
        if (study) Phase("study", () => StudyReport.Write(s, seedRuns, s.Config.TransferBaselines ? sources : []));
        timings["total"] = Math.Round(total.Elapsed.TotalSeconds, 1);
        File.WriteAllText(Path.Combine(s.Run.Root, "pipeline.json"), JsonSerializer.Serialize(timings, new JsonSerializerOptions { WriteIndented = true }));
        Log.Information("Pipeline done in {Seconds:F0} s; results in {Path}", total.Elapsed.TotalSeconds,
            study ? Path.Combine(s.Run.Root, "study", "report.md") : Path.Combine(s.Run.Root, "eval", "results.md"));
        if (!study)
            Log.Information("One seed, no baselines: for mean ± std over seeds and the negative-transfer table run the study, `moce pipeline --preset transfer` (bash build/study.sh; docs/RESULTS.md has its result)");
    }

    private static bool Available(string model, IReadOnlyList<MoeMethod> methods) => model switch
    {
        "pretrained" => true,
        "moce" or "moce-customized" => methods.Contains(MoeMethod.Moce),
        "token-moe" => methods.Contains(MoeMethod.TokenMoe),
        _ => methods.Contains(MoeMethod.Dense),
    };

    /// <summary>One phase on its own compute thread (its OpenMP pool ends with it), logged with its time in seconds,
    /// which it returns; Ctrl-C before it starts stops the pipeline.</summary>
    public static double RunPhase(Session s, string name, Action a, CancellationToken ct)
    {
        ct.ThrowIfCancellationRequested();
        Log.Information("== {Phase} ==", name);
        var sw = Stopwatch.StartNew();
        ComputeThread.Run(name, s.Config.Threads, a);
        Log.Information("{Phase} took {Seconds:F0} s", name, sw.Elapsed.TotalSeconds);
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>The run of one MoE-phase seed: this run for its own seed, else RUN/seed-N from this run's pre-training.</summary>
    public static Session SeedRun(Session s, long seed) =>
        seed == s.Config.Train.Seed ? s : Sub(s, $"seed-{seed}", [$"train.seed={seed}", $"train.from-run={s.Upstream.Root}"]);

    /// <summary>A run inside this one (RUN/NAME) with the same configuration plus <paramref name="overrides"/>; its log
    /// goes to its own file and to the console.</summary>
    public static Session Sub(Session parent, string name, IReadOnlyList<string> overrides)
    {
        var sub = Session.Open(parent.Request with { RunDir = Path.Combine(parent.Run.Root, name), Overrides = [.. parent.Request.Overrides, .. overrides] });
        Log.Logger = Logging.ConsoleAndFile(parent.Run.LogPath);                    // the pipeline's own log goes on
        return sub;
    }
}
