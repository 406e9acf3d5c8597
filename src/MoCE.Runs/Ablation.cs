using System.Text;
using System.Text.Json;
using MoCE.Runs.Configuration;
using MoCE.Core.Config;
using Serilog;

namespace MoCE.Runs;

/// <summary>Ablations (<c>moce ablate [--arms a,b]</c>): each arm of moce.ablate.arms (a list of overrides, like -o) against the run's
/// own settings, over the seeds of moce.ablate.seeds. Per arm and seed, MoCE and the dense MAE train with the arm's
/// settings (the dense MAE too: an arm that changes the MoE phase's length or schedule changes its reference), MoCE is
/// customized, and both are evaluated on moce.eval.tasks (fine-tuned as well with moce.pipeline.finetune). An arm whose
/// overrides shape pre-training or clustering (pretrain.steps: MoCE from an earlier start) pre-trains and clusters in its
/// own folder; every other arm trains from this run's. An arm that changes only the experts or the customization
/// (<see cref="DenseUnchanged"/>) leaves the dense MAE as the reference trained it: its dense rows are the reference's,
/// not trained again. Writes RUN/ablate/report.md and ablate.json: per arm and task, MoCE-customized − dense MAE, paired
/// per seed, mean ± std. Everything done before is skipped.</summary>
public static class Ablation
{
    /// <summary>The arm that changes nothing: the run's own settings.</summary>
    public const string Reference = "reference";

    public sealed record ArmResult(string Arm, IReadOnlyList<string> Overrides, string Task, string Measure, StudyReport.Stat Delta, IReadOnlyList<double> PerSeed);

    /// <summary><paramref name="only"/>: the arms to run besides the reference (null: every arm).</summary>
    public static void Execute(Session s, IReadOnlyCollection<string>? only, CancellationToken ct)
    {
        if (s.Config.AblationArms.ContainsKey(Reference))
            throw new ConfigException($"moce.ablate.arms.{Reference}", "is the run's own settings, always an arm; name yours otherwise");
        var arms = new Dictionary<string, IReadOnlyList<string>> { [Reference] = [] };
        foreach (var (name, o) in s.Config.AblationArms) arms[name] = o;
        if (only is not null)
        {
            foreach (var a in only.Where(a => !arms.ContainsKey(a)))
                throw new ConfigException("--arms", $"no arm '{a}' under moce.ablate.arms (defined: {string.Join(", ", arms.Keys)})");
            arms = arms.Where(kv => kv.Key == Reference || only.Contains(kv.Key)).ToDictionary();
        }
        if (!s.Run.Started("cluster") && arms.Values.Any(o => !ShapesUpstream(s, o)))
            throw new ConfigException("ablate", $"run {s.Run.Root} is not clustered yet: run moce pipeline (or pretrain and cluster) there first");
        var tasks = s.Config.Eval.Tasks;
        var results = new List<ArmResult>();
        void Phase(string name, Action a) => Pipeline.RunPhase(s, name, a, ct);
        foreach (var (arm, overrides) in arms)
        {
            bool own = ShapesUpstream(s, overrides);
            Session? upstream = null;
            if (own)
            {
                upstream = Pipeline.Sub(s, Path.Combine("ablate", arm), [.. overrides]);
                Phase($"{arm}: pretrain", () => PretrainPhase.Execute(upstream, ct));
                Phase($"{arm}: cluster", () => ClusterPhase.Execute(upstream));
            }
            var perSeed = new List<(IReadOnlyList<EvalPhase.Row> eval, IReadOnlyList<FineTunePhase.Row>? tuned)>();
            bool ownDense = arm != Reference && !DenseUnchanged(overrides);
            foreach (var seed in s.Config.AblationSeeds)
            {
                var from = upstream?.Run.Root ?? s.Run.Root;
                // the reference arm is the pipeline's own seed runs (this run for its seed, RUN/seed-N): what they trained is reused
                var reference = Pipeline.SeedRun(s, seed);
                var r = arm != Reference ? Pipeline.Sub(s, Path.Combine("ablate", arm, $"seed-{seed}"), [.. overrides, $"train.seed={seed}", $"train.from-run={from}"])
                    : reference;
                string tag = $"{arm} seed {seed}";
                // the runs that train and evaluate each model: the dense MAE is the reference's unless the arm changes it
                var runs = new[] { (MoeMethod.Moce, r, "moce-customized"), (MoeMethod.Dense, ownDense ? r : reference, "dense") };
                foreach (var (m, run, _) in runs)
                    Phase($"{tag}: {Artifacts.TrainPhase(m)}{(run == r ? "" : " (the reference's)")}", () => TrainingPhase.Execute(run, m, run.Config.Engine, ct));
                var eval = new List<EvalPhase.Row>();
                var tuned = s.Config.PipelineFineTune ? new List<FineTunePhase.Row>() : null;
                foreach (var group in runs.GroupBy(x => x.Item2))
                {
                    // the reference's rows are asked for as the reference arm asks (done before: read back, and its reports stay whole)
                    var (run, wanted) = (group.Key, group.Select(x => x.Item3).ToHashSet());
                    string[] models = run == reference ? ["dense", "moce-customized"] : [.. wanted];
                    string where = run == r ? "" : " (the reference's dense MAE)";
                    Phase($"{tag}: eval{where}", () => eval.AddRange(EvalPhase.Execute(run, models, tasks).Where(x => wanted.Contains(Key(x.Model)))));
                    if (tuned is not null)
                        Phase($"{tag}: finetune{where}", () => tuned.AddRange(FineTunePhase.Execute(run, models, tasks, ct).Where(x => wanted.Contains(Key(x.Model)))));
                }
                perSeed.Add((eval, tuned));
            }
            foreach (var t in tasks)
            {
                void Add(string measure, Func<int, string, double> value)
                {
                    var d = Enumerable.Range(0, perSeed.Count).Select(i => value(i, "MoCE-customized") - value(i, "dense MAE")).ToList();
                    results.Add(new ArmResult(arm, overrides, t, measure, StudyReport.Stat.Of(d), d));
                }
                if (s.Config.PipelineFineTune) Add("finetune", (i, m) => perSeed[i].tuned!.Single(r => r.Task == t && r.Model == m).Accuracy);
                Add("linear", (i, m) => perSeed[i].eval.Single(r => r.Task == t && r.Model == m).LinearProbe);
                Add("knn", (i, m) => perSeed[i].eval.Single(r => r.Task == t && r.Model == m).Knn);
            }
        }
        Write(s, results, arms);
    }

    private static string Key(string display) => EvalPhase.Display.Single(kv => kv.Value == display).Key;

    /// <summary>The dense MAE of an arm is the reference's when every override is the experts' (moe.*, except the
    /// distillation the dense arm may share) or the customization's (customize.*): neither reaches its training or its
    /// evaluation.</summary>
    internal static bool DenseUnchanged(IReadOnlyList<string> overrides) => overrides.All(o =>
    {
        var k = o[..o.IndexOf('=')].Trim();
        return k.StartsWith("customize.", StringComparison.Ordinal)
               || k.StartsWith("moe.", StringComparison.Ordinal) && k is not ("moe.lambda-distill" or "moe.distill-dense" or "moe.method");
    });

    /// <summary>An arm shapes the upstream when one of its keys shapes pre-training or clustering: pretrain.steps too,
    /// which a resumed run may raise (it extends the same run) but which here means a different dense start.</summary>
    private static bool ShapesUpstream(Session s, IReadOnlyList<string> overrides)
    {
        var recorded = ConfigLoader.ParseFile(s.Run.ConfigPath);
        static bool Bookkeeping(string k) => k is "moce.pretrain.log-every" or "moce.pretrain.collect-every" or "moce.pretrain.checkpoint-every" or "moce.pretrain.keep-checkpoints";
        return overrides.Select(o => "moce." + o[..o.IndexOf('=')].Trim()).Any(k => !Bookkeeping(k)
            && (k.StartsWith("moce.pretrain.", StringComparison.Ordinal) || MoceConfig.PhasesShapedBy(k, recorded) is { } p && (p.Contains("pretrain") || p.Contains("cluster"))));
    }

    private static void Write(Session s, IReadOnlyList<ArmResult> results, IReadOnlyDictionary<string, IReadOnlyList<string>> arms)
    {
        var dir = Path.Combine(s.Run.Root, "ablate");
        Directory.CreateDirectory(dir);
        var tasks = s.Config.Eval.Tasks;
        var measures = results.Select(r => r.Measure).Distinct().ToList();
        var md = new StringBuilder();
        md.AppendLine("# Ablations");
        md.AppendLine();
        md.AppendLine($"MoCE-customized − dense MAE in points, paired per seed (both trained with the arm's settings), mean ± std over seeds {string.Join(", ", s.Config.AblationSeeds)}. " +
                      $"*{Reference}*: this run's settings; every other arm changes only what it lists.");
        md.AppendLine();
        md.AppendLine("| arm | changes | " + string.Join(" | ", tasks.SelectMany(t => measures.Select(m => $"{t} {m}"))) + " |");
        md.AppendLine("|---|---|" + string.Concat(tasks.SelectMany(_ => measures.Select(_ => "---:|"))));
        foreach (var (arm, overrides) in arms)
            md.AppendLine($"| {arm} | {(overrides.Count == 0 ? "–" : string.Join(", ", overrides.Select(o => $"`{o}`")))} | " +
                          string.Join(" | ", tasks.SelectMany(t => measures.Select(m => results.Single(r => r.Arm == arm && r.Task == t && r.Measure == m).Delta.Signed()))) + " |");
        File.WriteAllText(Path.Combine(dir, "report.md"), md.ToString());
        File.WriteAllText(Path.Combine(dir, "ablate.json"), JsonSerializer.Serialize(results, new JsonSerializerOptions { WriteIndented = true }));
        Log.Information("Ablations → {Path}\n{Report}", Path.Combine(dir, "report.md"), md.ToString());
    }
}
