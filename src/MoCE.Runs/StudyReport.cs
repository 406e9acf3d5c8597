using System.Globalization;
using System.Text;
using System.Text.Json;
using MoCE.Core.Clustering;
using MoCE.Core.Config;
using MoCE.Core.Customization;
using MoCE.Core.Data;
using MoCE.Core.Model;
using MoCE.Core.Training;
using Serilog;
using static TorchSharp.torch;

namespace MoCE.Runs;

/// <summary>The transfer study's report (RUN/study/report.md and study.json), from the pipeline's runs: negative
/// transfer (the mix's dense MAE against each source's alone), every model × task as mean ± std over the MoE-phase
/// seeds with the paired difference to the dense MAE, MoCE's gate mass per task and layer, expert specialisation
/// (NMI of the chosen expert with the source and with the label, MoCE and TokenMoE), and MoCE's cluster → expert
/// table. Evaluation rows come from each run's eval cache, so writing it again costs little.</summary>
public static class StudyReport
{
    /// <summary>Images of the pre-training mix (seeded) on which the specialisation is measured.</summary>
    public const int SpecialisationImages = 4000;

    public sealed record Stat(double Mean, double Std, int N)
    {
        public static Stat Of(IReadOnlyList<double> xs)
        {
            double m = xs.Average();
            double sd = xs.Count > 1 ? Math.Sqrt(xs.Sum(x => (x - m) * (x - m)) / (xs.Count - 1)) : 0;
            return new Stat(m, sd, xs.Count);
        }
        public string Pct() => N > 1 ? string.Create(CultureInfo.InvariantCulture, $"{100 * Mean:F2} ± {100 * Std:F2}") : string.Create(CultureInfo.InvariantCulture, $"{100 * Mean:F2}");
        public string Signed() => string.Create(CultureInfo.InvariantCulture, $"{(Mean >= 0 ? "+" : "−")}{Math.Abs(100 * Mean):F2}{(N > 1 ? $" ± {100 * Std:F2}" : "")}");
        public string Plain() => string.Create(CultureInfo.InvariantCulture, $"{Mean:F3}{(N > 1 ? $" ± {Std:F3}" : "")}");
    }

    public sealed record Specialisation(string Method, int Block, double NmiSource, double NmiLabel);

    public static void Write(Session s, IReadOnlyList<Session> seedRuns, IReadOnlyList<string> baselineSources)
    {
        var dir = s.Run.Phase("study");
        var inv = CultureInfo.InvariantCulture;
        var tasks = s.Config.Eval.Tasks;
        var md = new StringBuilder();
        var json = new Dictionary<string, object>();
        md.AppendLine("# Transfer study");
        md.AppendLine();
        var mix = s.Config.Data.Mix.Where(kv => kv.Value > 0).ToList();
        md.AppendLine($"Pre-training: {s.Config.Pretrain.Steps} steps of {s.Config.Pretrain.BatchSize} on {s.Config.Data.Describe()}" +
                      $" (seed {s.Config.Seed}). MoE phase: {s.Config.Train.Steps} steps per model from the same dense weights, seeds {string.Join(", ", seedRuns.Select(r => r.Config.Train.Seed))}; " +
                      $"{s.Config.Moe.Experts} experts in blocks [{string.Join(", ", s.Config.Moe.Layers)}], top-{s.Config.Moe.TopK}, {s.Config.Cluster.K} clusters, τ = {s.Config.Moe.Temperature.ToString(inv)}, gate noise {s.Config.Moe.GateNoise.ToString(inv)}, gate-init {(s.Config.Moe.GateFromCentroids ? "centroids" : "random")}.");
        md.AppendLine();
        md.AppendLine("Tasks: " + string.Join("; ", tasks.Select(t => { var c = s.Config.Tasks[t]; return $"**{t}** ({c.Dataset}, classes [{string.Join(", ", c.Classes)}]{(c.Shots > 0 ? $", {c.Shots} labels per class" : "")})"; })) + ".");
        md.AppendLine();

        // 1. negative transfer
        var pretrained = baselineSources.Count == 0 ? null : PretrainedRows(s, s.Upstream.Root, tasks);
        if (pretrained is not null)
        {
            var rows = new List<(string name, IReadOnlyList<EvalPhase.Row> rows)> { ($"mix ({string.Join(" + ", mix.Select(kv => kv.Key))})", pretrained) };
            foreach (var src in baselineSources)
                rows.Add(($"{src} alone", PretrainedRows(s, Path.Combine(s.Upstream.Root, $"alone-{src}"), tasks)
                    ?? throw new RunMismatchException($"no evaluation of the dense MAE pre-trained on {src} alone in {s.Upstream.Root}/alone-{src}: run the pipeline with moce.pipeline.transfer-baselines = true there")));
            var missing = new List<string>();
            foreach (var src in baselineSources)                                   // a run made before them has none
                if (PretrainedRows(s, Path.Combine(s.Upstream.Root, $"alone-{src}-epochs"), tasks) is { } r) rows.Add(($"{src} alone, the mix's epochs", r));
                else missing.Add(src);
            md.AppendLine("## Negative transfer: the dense MAE pre-trained on the mix against each source alone");
            md.AppendLine();
            md.AppendLine("One pre-training seed; batch and schedule shape as the mix's. *Alone* trains as many steps as the mix, so it sees its " +
                          "own data more often (exposure) and no other data (interference). *Alone, the mix's epochs* trains as many passes over " +
                          "its data as the mix makes over the mix (steps × its share of the mix's images): exactly the images of its source " +
                          "the mix showed, without the others. The gap to it is interference alone, the part experts can repair; the rest of " +
                          "the equal-step gap is exposure, which no router recovers at equal compute. Linear probe / 20-NN accuracy in %.");
            if (missing.Count > 0) md.AppendLine($"(This run has no equal-epoch baseline for {string.Join(", ", missing)}: it was made before they existed.)");
            md.AppendLine();
            md.AppendLine("| pre-trained on | " + string.Join(" | ", tasks.Select(t => $"{t} linear | {t} k-NN")) + " |");
            md.AppendLine("|---|" + string.Concat(tasks.Select(_ => "---:|---:|")));
            foreach (var (name, rs) in rows)
                md.AppendLine($"| {name} | " + string.Join(" | ", tasks.Select(t => rs.Single(r => r.Task == t)).Select(r => string.Create(inv, $"{100 * r.LinearProbe:F2} | {100 * r.Knn:F2}"))) + " |");
            var gaps = new List<object>();
            void Gap(string label, string suffix, bool repairable)
            {
                md.Append($"| {label} | ");
                md.AppendLine(string.Join(" | ", tasks.Select(t =>
                {
                    var own = rows.FirstOrDefault(x => x.name == $"{s.Config.Tasks[t].Dataset} alone{suffix}").rows?.Single(r => r.Task == t);
                    var m = rows[0].rows.Single(r => r.Task == t);
                    if (own is null) return "– | –";
                    double lin = m.LinearProbe - own.LinearProbe, knn = m.Knn - own.Knn;
                    if (repairable) { lin = Math.Max(0, -lin); knn = Math.Max(0, -knn); }
                    gaps.Add(new { task = t, gap = label, linear = lin, knn });
                    return repairable ? string.Create(inv, $"{100 * lin:F2} | {100 * knn:F2}") : string.Create(inv, $"{100 * lin:+0.00;−0.00} | {100 * knn:+0.00;−0.00}");
                })) + " |");
            }
            Gap("Δ at equal steps (mix − own domain alone): exposure + interference", "", false);
            if (missing.Count < baselineSources.Count)
            {
                Gap("Δ at equal epochs (mix − own domain alone, the mix's epochs): interference", ", the mix's epochs", false);
                Gap("at most repairable by experts: max(0, −Δ at equal epochs)", ", the mix's epochs", true);
            }
            md.AppendLine();
            json["negative_transfer_gaps"] = gaps;
            json["negative_transfer"] = rows.Select(x => new { pretrained_on = x.name, rows = x.rows });
        }

        // 2. main tables: fine-tuning (the paper's), then frozen features
        var models = s.Config.Eval.Models.Where(m => m != "pretrained").ToList();
        if (s.Config.PipelineFineTune)
        {
            var encoders = FineTunePhase.Encoders.Where(models.Contains).ToList();
            var tuned = seedRuns.Select(r => FineTunePhase.Execute(r, encoders, tasks)).ToList();   // done before: read from each seed's cache
            var ft = s.Config.FineTune;
            md.AppendLine($"## Fine-tuning ({seedRuns.Count} seed{(seedRuns.Count > 1 ? "s" : "")}: mean ± std)");
            md.AppendLine();
            md.AppendLine(string.Create(inv, $"Every weight trained, {ft.Epochs} epochs of {ft.BatchSize}, base lr {ft.BaseLr}, layer decay {ft.LayerDecay}, label smoothing {ft.LabelSmoothing}; test accuracy in %. The differences are paired: per seed, the model minus the dense MAE trained with that seed, on the same images from the same head initialisation."));
            md.AppendLine();
            var acc = PairedTable(md, tasks, [""], [.. tuned.Select(rs => (IReadOnlyList<(string, string, double[])>)[.. rs.Select(r => (r.Model, r.Task, new[] { r.Accuracy }))])]);
            md.AppendLine();
            json["finetune"] = acc.Select(x => new { model = x.Key.model, task = x.Key.task, accuracy = x.Value[0] }).ToList();
        }
        var perSeed = seedRuns.Select(r => EvalPhase.Execute(r, models, tasks)).ToList();
        md.AppendLine($"## Every model on every task, frozen features ({seedRuns.Count} seed{(seedRuns.Count > 1 ? "s" : "")} of the MoE phase: mean ± std)");
        md.AppendLine();
        var frozen = PairedTable(md, tasks, ["linear", "k-NN"], [.. perSeed.Select(rs => (IReadOnlyList<(string, string, double[])>)[.. rs.Select(r => (r.Model, r.Task, new[] { r.LinearProbe, r.Knn }))])]);
        md.AppendLine();
        md.AppendLine("Accuracy in %, frozen features. The differences are paired: per seed, the model minus the dense MAE trained with that seed.");
        md.AppendLine();
        json["main"] = frozen.Select(x => new { model = x.Key.model, task = x.Key.task, linear = x.Value[0], knn = x.Value[1] }).ToList();

        // 3. gate mass
        if (models.Contains("moce-customized"))
        {
            md.AppendLine("## MoCE: the chosen expert's mean gate mass per task and MoE layer");
            md.AppendLine();
            md.AppendLine("Σ_c h(c)·g(c)_e* over the task's clusters h (mean ± std over seeds), and the experts chosen in each seed.");
            md.AppendLine();
            var layers = s.Config.Moe.Layers.Order().ToList();
            md.AppendLine("| task | " + string.Join(" | ", layers.Select(b => $"block {b} gate mass | block {b} experts")) + " |");
            md.AppendLine("|---|" + string.Concat(layers.Select(_ => "---:|---|")));
            var gate = new List<object>();
            foreach (var t in tasks)
            {
                var reports = seedRuns.Select(r => JsonSerializer.Deserialize<CustomizePhase.Report>(File.ReadAllText(Path.Combine(CustomizePhase.Dir(r, t), "report.json")))!).ToList();
                var cells = layers.Select(b =>
                {
                    var ch = reports.Select(rep => rep.Experts.Single(e => e.Block == b)).ToList();
                    var mass = Stat.Of(ch.Select(c => c.Scores[c.Expert]).ToList());
                    gate.Add(new { task = t, block = b, mass, experts = ch.Select(c => c.Expert) });
                    return $"{mass.Plain()} | {string.Join(", ", ch.Select(c => c.Expert))}";
                });
                md.AppendLine($"| {t} | {string.Join(" | ", cells)} |");
            }
            md.AppendLine();
            json["gate_mass"] = gate;
        }

        // 4. specialisation and 5. cluster → expert
        var methods = s.Config.PipelineMethods.Where(m => m != MoeMethod.Dense).ToList();
        if (methods.Count > 0)
        {
            var spec = seedRuns.SelectMany(r => Specialise(r, methods)).ToList();
            md.AppendLine($"## Expert specialisation (normalised mutual information, on {SpecialisationImages} images of the pre-training mix)");
            md.AppendLine();
            md.AppendLine("The chosen (top-1) expert per image for MoCE, per token for TokenMoE, against the image's source (domain) and its label (the mix numbers its classes source after source). 1 = the expert determines it, 0 = independent.");
            md.AppendLine();
            md.AppendLine("| model | block | NMI(expert, source) | NMI(expert, label) |");
            md.AppendLine("|---|---:|---:|---:|");
            foreach (var g in spec.GroupBy(x => (x.Method, x.Block)).OrderBy(g => g.Key.Method).ThenBy(g => g.Key.Block))
                md.AppendLine($"| {g.Key.Method} | {g.Key.Block} | {Stat.Of(g.Select(x => x.NmiSource).ToList()).Plain()} | {Stat.Of(g.Select(x => x.NmiLabel).ToList()).Plain()} |");
            md.AppendLine();
            json["specialisation"] = spec;
            if (methods.Contains(MoeMethod.Moce)) md.Append(ClusterTable(seedRuns[0]));
        }
        File.WriteAllText(Path.Combine(dir, "report.md"), md.ToString());
        File.WriteAllText(Path.Combine(dir, "study.json"), JsonSerializer.Serialize(json, new JsonSerializerOptions { WriteIndented = true }));
        Log.Information("Study report → {Path}\n{Report}", Path.Combine(dir, "report.md"), md.ToString());
    }

    /// <summary>A table of measures over seeds: a row per model (mean ± std over the seeds, per task and measure), then a
    /// row per model − dense MAE, paired per seed. <paramref name="perSeed"/>[seed] holds (model, task, values), one value
    /// per measure. Returns each (model, task)'s statistics, one per measure.</summary>
    private static Dictionary<(string model, string task), Stat[]> PairedTable(StringBuilder md, IReadOnlyList<string> tasks, IReadOnlyList<string> measures,
                                                                               IReadOnlyList<IReadOnlyList<(string model, string task, double[] values)>> perSeed)
    {
        double[] At(int seed, string model, string task) => perSeed[seed].Single(r => r.model == model && r.task == task).values;
        IEnumerable<string> Cells(Func<string, int, Stat> stat, Func<Stat, string> show) =>
            tasks.SelectMany(t => measures.Select((_, m) => show(stat(t, m))));
        md.AppendLine("| model | " + string.Join(" | ", tasks.SelectMany(t => measures.Select(m => m.Length == 0 ? t : $"{t} {m}"))) + " |");
        md.AppendLine("|---|" + string.Concat(tasks.SelectMany(_ => measures.Select(_ => "---:|"))));
        var models = perSeed[0].Select(r => r.model).Distinct().ToList();
        var stats = new Dictionary<(string model, string task), Stat[]>();
        foreach (var model in models)
        {
            foreach (var t in tasks)
                stats[(model, t)] = [.. measures.Select((_, m) => Stat.Of([.. Enumerable.Range(0, perSeed.Count).Select(seed => At(seed, model, t)[m])]))];
            md.AppendLine($"| {model} | {string.Join(" | ", Cells((t, m) => stats[(model, t)][m], x => x.Pct()))} |");
        }
        if (models.Contains("dense MAE"))
            foreach (var model in models.Where(n => n != "dense MAE"))
                md.AppendLine($"| *{model} − dense MAE* | {string.Join(" | ", Cells((t, m) => Stat.Of([.. Enumerable.Range(0, perSeed.Count)
                    .Select(seed => At(seed, model, t)[m] - At(seed, "dense MAE", t)[m])]), x => x.Signed()))} |");
        return stats;
    }

    /// <summary>The pretrained dense MAE's evaluation rows of a run (its eval cache), for these tasks as defined now and
    /// the current evaluation settings; null if any is missing.</summary>
    private static IReadOnlyList<EvalPhase.Row>? PretrainedRows(Session s, string runRoot, IReadOnlyList<string> tasks)
    {
        var path = Path.Combine(runRoot, "eval", "rows.json");
        if (!File.Exists(path)) return null;
        var cache = JsonSerializer.Deserialize<Dictionary<string, EvalPhase.Row>>(File.ReadAllText(path)) ?? [];
        var settings = EvalPhase.Settings(s.Config.Eval, s.Config.EvalSeed);
        var rows = new List<EvalPhase.Row>();
        foreach (var t in tasks)
        {
            var prefix = JsonSerializer.Serialize(s.Config.Tasks[t]) + "|pretrained-";
            var row = cache.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal) && kv.Key.EndsWith("|" + settings, StringComparison.Ordinal)).Select(kv => kv.Value).LastOrDefault();
            if (row is null) return null;
            rows.Add(row);
        }
        return rows;
    }

    /// <summary>Per MoE layer: NMI of the chosen expert with the source and with the label, per image (MoCE) or per token (TokenMoE).</summary>
    public static IEnumerable<Specialisation> Specialise(Session s, IReadOnlyList<MoeMethod> methods)
    {
        using var data = s.Data.PretrainSet();
        var (dense, sha) = Artifacts.Dense(s);
        using var _ = dense;
        using var clustering = Artifacts.Clustering(s, sha, data.Count);
        var idx = Seeds.Permutation(data.Count, Seeds.Derive(s.Config.Seed, Seeds.Stream.Probe, -1)).Take(Math.Min(SpecialisationImages, data.Count)).ToArray();
        var res = new List<Specialisation>();
        foreach (var method in methods)
        {
            var (model, _) = Artifacts.Trained(s, method, clustering.K);
            using var __ = model;
            var choice = new Dictionary<int, List<long>>();
            var source = new List<long>();
            var label = new List<long>();
            using (no_grad())
                for (int start = 0; start < idx.Length; start += 500)
                {
                    using var scope = NewDisposeScope();
                    var b = idx.Skip(start).Take(500).ToArray();
                    var routes = new List<RouteStats>();
                    var gate = new GateInput(tensor(b.Select(i => clustering.TrainIds[i]).ToArray()).to(s.Device));
                    model.ForwardFeatures(data.Batch(b).to(s.Device), gate, routes);
                    long perImage = routes[0].Choice.shape[0] / b.Length;
                    foreach (var r in routes)
                        (choice.TryGetValue(r.Block, out var l) ? l : choice[r.Block] = []).AddRange(r.Choice[.., 0].cpu().data<long>().ToArray());
                    foreach (var i in b)
                        for (long k = 0; k < perImage; k++) { source.Add(data.DomainOf(i)); label.Add(data.Labels[i]); }
                }
            foreach (var (block, ch) in choice.OrderBy(kv => kv.Key))
                res.Add(new Specialisation(MoCE.Runs.Configuration.MoceConfig.MethodName(method), block, ClusterMetrics.Nmi(ch, source), ClusterMetrics.Nmi(ch, label)));
        }
        return res;
    }

    /// <summary>MoCE's cluster → expert table: each cluster's size, source, majority class, and per layer its expert
    /// and gate mass (no noise).</summary>
    private static string ClusterTable(Session s)
    {
        var inv = CultureInfo.InvariantCulture;
        using var data = s.Data.PretrainSet();
        var (dense, sha) = Artifacts.Dense(s);
        using var _ = dense;
        using var clustering = Artifacts.Clustering(s, sha, data.Count);
        var (model, __) = Artifacts.Trained(s, MoeMethod.Moce, clustering.K);
        using var ___ = model;
        var ids = clustering.TrainIds;
        var sources = ClusterMetrics.Purity(ids, Enumerable.Range(0, data.Count).Select(i => (long)data.DomainOf(i)).ToList()).ToDictionary(p => p.cluster);
        var classes = ClusterMetrics.Purity(ids, data.Labels.Select(l => (long)l).ToList()).ToDictionary(p => p.cluster);
        var gates = model.MoeLayers.OrderBy(kv => kv.Key).Select(kv => (kv.Key, g: kv.Value.ClusterGate().detach().cpu())).ToList();
        var md = new StringBuilder();
        md.AppendLine($"## MoCE (seed {s.Config.Train.Seed}): cluster → expert");
        md.AppendLine();
        md.AppendLine("| cluster | images | source (share) | majority class (share) | " + string.Join(" | ", gates.Select(g => $"block {g.Key}: expert (gate)")) + " |");
        md.AppendLine("|---:|---:|---|---|" + string.Concat(gates.Select(_ => "---:|")));
        for (int c = 0; c < clustering.K; c++)
        {
            if (!sources.TryGetValue(c, out var src)) continue;
            var cls = classes[c];
            var cells = gates.Select(g => { var row = g.g[c]; int e = (int)row.argmax().item<long>(); return string.Create(inv, $"{e} ({row[e].item<float>():F2})"); });
            md.AppendLine(string.Create(inv, $"| {c} | {src.size} | {data.DomainNames[(int)src.majorityLabel]} ({src.purity:F2}) | {data.ClassNames[(int)cls.majorityLabel]} ({cls.purity:F2}) | {string.Join(" | ", cells)} |"));
        }
        foreach (var (_, g) in gates) g.Dispose();
        md.AppendLine();
        return md.ToString();
    }
}
