using Akka.Configuration;
using MoCE.Core.Config;

namespace MoCE.Runs.Configuration;

/// <summary>The resolved configuration of a run: the typed records plus the merged HOCON it came from.</summary>
public sealed record MoceConfig(string Device, int Threads, DataConfig Data, MaeConfig Model, TrainConfig Pretrain, Config Hocon)
{
    public required ClusterConfig Cluster { get; init; }
    public required MoeConfig Moe { get; init; }
    public required TrainConfig Train { get; init; }
    public required MoCE.Core.Customization.GateFold FoldGateWeight { get; init; }
    /// <summary>Default engine of `moce train`: "actors" or "local".</summary>
    public required string Engine { get; init; }
    public required MoCE.Actors.RecoveryPolicy RecoveryPolicy { get; init; }
    /// <summary>moce.actors.peer-copies: under expert-exact in a cluster, each expert also keeps its state on a peer node.</summary>
    public required bool PeerCopies { get; init; }
    /// <summary>moce.actors.placement: "spread" (a node that joins gets experts moved to it) or "fill".</summary>
    public required string Placement { get; init; }
    /// <summary>moce.actors.split-margin: how decisively an added expert and the one it splits divide its clusters.</summary>
    public required double SplitMargin { get; init; }
    /// <summary>moce.actors.straggler-timeout (ms, 0: off) and straggler-sit-out (steps).</summary>
    public required TimeSpan StragglerTimeout { get; init; }
    public required int StragglerSitOut { get; init; }
    public required TimeSpan AskTimeout { get; init; }
    public required MoCE.Actors.RestartBackoff Backoff { get; init; }
    public required int OwnerThreads { get; init; }
    /// <summary>How tensors cross a node: "fp32" (exact) or "bf16" (half the bytes). The wire serializer reads it from
    /// the actor system's configuration, which is this run's merged HOCON.</summary>
    public required string WireEncoding { get; init; }
    /// <summary>Prometheus metrics: served on this port while training (0: off), on this host.</summary>
    public required int MetricsPort { get; init; }
    public required string MetricsHost { get; init; }
    /// <summary>moce node: this process's roles, address, seeds and devices (one node of a cluster run).</summary>
    public required MoCE.Actors.NodeOptions Node { get; init; }
    public required EvalConfig Eval { get; init; }
    public required MoCE.Core.Evaluation.FineTuneConfig FineTune { get; init; }
    public required IReadOnlyDictionary<string, TaskConfig> Tasks { get; init; }
    /// <summary>moce.train.from-run: the run whose pretrain and cluster phases this run trains from ("": this run).</summary>
    public required string FromRun { get; init; }
    /// <summary>moce.pipeline: the MoE-phase seeds (-1: moce.seed), the negative-transfer baselines, the methods trained.</summary>
    public required IReadOnlyList<long> PipelineSeeds { get; init; }
    public required bool TransferBaselines { get; init; }
    /// <summary>moce.pipeline.finetune: each seed also fine-tunes the dense encoders on each task.</summary>
    public required bool PipelineFineTune { get; init; }
    /// <summary>moce.ablate: the seeds of each arm, and the arms (name → overrides like -o, relative to the run's settings).</summary>
    public required IReadOnlyList<long> AblationSeeds { get; init; }
    public required IReadOnlyDictionary<string, IReadOnlyList<string>> AblationArms { get; init; }
    public required IReadOnlyList<MoeMethod> PipelineMethods { get; init; }
    /// <summary>moce.seed: the run's master seed (pre-training, clustering; evaluation with moce.train.seed); moce.train.seed may differ.</summary>
    public long Seed => Pretrain.Seed;
    /// <summary>The seed of the evaluation's draws (few-shot sets, the test subset, probe and fine-tuning initialisation):
    /// moce.seed and moce.train.seed together. Each seed of a study draws its own sets, so its spread includes theirs,
    /// and every model evaluated under one seed sees the same sets, so differences within a seed are paired.</summary>
    public long EvalSeed => (long)(MoCE.Core.Training.Seeds.Derive(Seed, MoCE.Core.Training.Seeds.Stream.Probe, Train.Seed) >> 1);

    /// <summary>Keys a resumed run may change; all others must equal the run's recorded config.</summary>
    public static readonly IReadOnlySet<string> ResumeMutable = new HashSet<string>
    {
        "moce.device", "moce.threads", "moce.data.fallback-to-sample", "moce.data.workers",
        "moce.pretrain.log-every", "moce.pretrain.collect-every", "moce.pretrain.steps", "moce.pretrain.checkpoint-every", "moce.pretrain.keep-checkpoints",
        "moce.moe.method", "moce.train.log-every", "moce.train.collect-every", "moce.train.checkpoint-every", "moce.train.keep-checkpoints",
        "moce.cluster.feature-batch", "moce.actors.engine", "moce.actors.policy", "moce.actors.peer-copies", "moce.actors.ask-timeout", "moce.actors.owner-threads",
        "moce.actors.backoff-min", "moce.actors.backoff-max", "moce.actors.max-failures", "moce.actors.placement", "moce.actors.split-margin", "moce.actors.straggler-timeout", "moce.actors.straggler-sit-out",
    };

    /// <summary>Evaluation and task settings never change what was trained, so a resumed run may change them.</summary>
    public static bool MayChangeOnResume(string key) =>
        ResumeMutable.Contains(key) || key.StartsWith("moce.eval.", StringComparison.Ordinal) || key.StartsWith("moce.finetune.", StringComparison.Ordinal) || key.StartsWith("moce.tasks.", StringComparison.Ordinal)
        || key.StartsWith("moce.customize.", StringComparison.Ordinal) || key.StartsWith("moce.pipeline.", StringComparison.Ordinal) || key.StartsWith("moce.ablate.", StringComparison.Ordinal)
        || (key.StartsWith("moce.datasets.", StringComparison.Ordinal) && (key.EndsWith(".path", StringComparison.Ordinal) || key.EndsWith(".search", StringComparison.Ordinal)))
        || key.StartsWith("moce.node.", StringComparison.Ordinal) || key.StartsWith("moce.metrics.", StringComparison.Ordinal);   // where the owners run, not what they compute

    /// <summary>The folders of a run's training phases, one per method.</summary>
    public static readonly IReadOnlyList<string> TrainPhases = [.. Enum.GetValues<MoeMethod>().Select(m => "train-" + MethodName(m))];

    /// <summary>The phases of a run (its folders) whose result a changed key would alter: the key is frozen once one of
    /// them has started, and may change before (train.steps after pretrain and cluster, say). Null: it alters no phase's
    /// result (<see cref="MayChangeOnResume"/>, or a dataset that pre-training does not read, which only tasks use) and
    /// may always change. <paramref name="recorded"/>: the run's configuration, whose mix says what was pre-trained on.</summary>
    public static IReadOnlyList<string>? PhasesShapedBy(string key, Config recorded)
    {
        if (MayChangeOnResume(key)) return null;
        bool In(params string[] sections) => sections.Any(x => key.StartsWith($"moce.{x}.", StringComparison.Ordinal));
        if (In("moe", "train", "actors", "wire")) return TrainPhases;
        if (In("cluster")) return ["cluster", .. TrainPhases];
        if (In("datasets") && key.Split('.') is [_, _, var name, ..]
            && !HoconTree.Leaves(recorded, "moce.data.mix").Any(l => l.path == $"moce.data.mix.{name}" && recorded.GetDouble(l.path) > 0))
            return null;
        return ["pretrain", "cluster", .. TrainPhases];          // the model, the data, the seed: what every phase reads
    }

    /// <summary>Tasks, datasets and the mix are open: moce.tasks.NAME.{dataset,classes,shots},
    /// moce.datasets.NAME.{path,search,fetch,sample,mean,std,classes,format,bad-images}, moce.data.mix.NAME and
    /// moce.ablate.arms.NAME are known keys.</summary>
    public static bool IsOpenKey(string key)
    {
        var p = key.Split('.');
        return p.Length == 4 && p[0] == "moce" && (p[1], p[3]) switch
        {
            ("tasks", "dataset" or "classes" or "shots") => true,
            ("datasets", "path" or "search" or "fetch" or "sample" or "mean" or "std" or "classes" or "format" or "bad-images") => true,
            _ => false,
        } || (p.Length == 4 && p[0] == "moce" && ((p[1] == "data" && p[2] == "mix") || (p[1] == "ablate" && p[2] == "arms")));
    }

    private static IEnumerable<string> Names(Config merged, string prefix) =>
        HoconTree.Leaves(merged, prefix).Select(l => l.path[(prefix.Length + 1)..].Split('.')[0]).Distinct();

    public static MoeMethod ParseMethod(string key, string value) => value switch
    {
        "moce" => MoeMethod.Moce,
        "token-moe" => MoeMethod.TokenMoe,
        "dense" => MoeMethod.Dense,
        _ => throw new ConfigException(key, $"expected moce, token-moe or dense, got '{value}'"),
    };

    public static string MethodName(MoeMethod m) => m switch { MoeMethod.Moce => "moce", MoeMethod.TokenMoe => "token-moe", _ => "dense" };

    /// <summary>Binds the merged tree to records. Reads every key it knows; the loader rejects keys it does not.</summary>
    public static (MoceConfig config, IReadOnlySet<string> keysRead) Bind(Config merged)
    {
        var t = new HoconTree(merged);
        var model = new MaeConfig
        {
            ImageSize = t.Int("moce.model.image-size"),
            InChans = t.Int("moce.model.in-chans"),
            PatchSize = t.Int("moce.model.patch-size"),
            Dim = t.Int("moce.model.dim"),
            Depth = t.Int("moce.model.depth"),
            Heads = t.Int("moce.model.heads"),
            DecoderDim = t.Int("moce.model.decoder-dim"),
            DecoderDepth = t.Int("moce.model.decoder-depth"),
            DecoderHeads = t.Int("moce.model.decoder-heads"),
            MlpRatio = t.Double("moce.model.mlp-ratio"),
            MaskRatio = t.Double("moce.model.mask-ratio"),
            NormPixLoss = t.Bool("moce.model.norm-pix-loss"),
        }.Validate();
        // a dataset needs only where it is (path, or search, fetch, sample); each key it leaves out is empty, and then
        // its normalisation is measured from its training images and its classes are named by label
        T Or<T>(string n, string k, Func<string, T> read, T empty) => merged.HasPath($"moce.datasets.{n}.{k}") ? read($"moce.datasets.{n}.{k}") : empty;
        var datasets = Names(merged, "moce.datasets").Select(n => new MoCE.Core.Data.DatasetSpec(n, Or(n, "path", t.String, ""),
            Or(n, "search", t.StringList, []), Or(n, "fetch", t.String, ""), Or(n, "sample", t.String, ""),
            new MoCE.Core.Data.Normalization(Or(n, "mean", t.Doubles, [double.NaN]), Or(n, "std", t.Doubles, [double.NaN])),
            Or(n, "classes", t.StringList, []), Or(n, "format", t.Enum<MoCE.Core.Data.DatasetFormat>, MoCE.Core.Data.DatasetFormat.Idx),
            Or(n, "bad-images", t.Enum<MoCE.Core.Data.BadImages>, MoCE.Core.Data.BadImages.Skip))).ToDictionary(d => d.Name);
        var augment = t.Doubles("moce.data.augment-scale") is [var lo, var hi] ? new MoCE.Core.Data.Augmentation(lo, hi, t.Bool("moce.data.augment-flip"))
            : throw new ConfigException("moce.data.augment-scale", "expected [min, max]");
        var data = new DataConfig
        {
            Datasets = datasets,
            Mix = Names(merged, "moce.data.mix").ToDictionary(n => n, n => t.Double($"moce.data.mix.{n}")),
            FallbackToSample = t.Bool("moce.data.fallback-to-sample"),
            Augment = augment.Validate() is var a && t.Bool("moce.data.augment") ? a : null,
            Workers = t.Int("moce.data.workers") is var w && w >= 0 ? w : throw new ConfigException("moce.data.workers", "must be ≥ 0 (0: one per core)"),
        }.Validate();
        long seed = t.Long("moce.seed");
        long trainSeed = t.Long("moce.train.seed") is var ts && ts >= -1 ? (ts == -1 ? seed : ts) : throw new ConfigException("moce.train.seed", "must be ≥ 0, or -1 for moce.seed");
        var tasks = Names(merged, "moce.tasks").Select(n => new TaskConfig(n, t.IntList($"moce.tasks.{n}.classes"),
                merged.HasPath($"moce.tasks.{n}.dataset") ? t.String($"moce.tasks.{n}.dataset") : "fashion-mnist",
                merged.HasPath($"moce.tasks.{n}.shots") ? t.Int($"moce.tasks.{n}.shots") : 0).Validate(data))
            .ToDictionary(x => x.Name);
        var cfg = new MoceConfig(t.String("moce.device"), t.Int("moce.threads"), data, model, TrainSection(t, "moce.pretrain", seed), merged)
        {
            Cluster = new ClusterConfig
            {
                K = t.Int("moce.cluster.k"),
                MaxIter = t.Int("moce.cluster.max-iter"),
                Tol = t.Double("moce.cluster.tol"),
                FeatureBatch = t.Int("moce.cluster.feature-batch"),
            }.Validate(),
            Moe = new MoeConfig
            {
                Method = ParseMethod("moce.moe.method", t.String("moce.moe.method")),
                Experts = t.Int("moce.moe.experts"),
                TopK = t.Int("moce.moe.top-k"),
                Layers = t.IntList("moce.moe.layers"),
                GateDim = t.Int("moce.moe.gate-dim"),
                Temperature = t.Double("moce.moe.temperature"),
                GateNoise = t.Double("moce.moe.gate-noise"),
                UpcycleNoise = t.Double("moce.moe.upcycle-noise"),
                LambdaRoute = t.Double("moce.moe.lambda-route"),
                LambdaDistill = t.Double("moce.moe.lambda-distill"),
                DistillDense = t.Bool("moce.moe.distill-dense"),
                LambdaBalance = t.Double("moce.moe.lambda-balance"),
                SharedFraction = t.Double("moce.moe.shared-fraction"),
                GateFromCentroids = t.String("moce.moe.gate-init") switch
                {
                    "random" => false,
                    "centroids" => true,
                    var g => throw new ConfigException("moce.moe.gate-init", $"expected random or centroids, got '{g}'"),
                },
            }.Validate(model.Depth),
            Train = TrainSection(t, "moce.train", trainSeed),
            FromRun = t.String("moce.train.from-run"),
            PipelineSeeds = t.StringList("moce.pipeline.seeds").Select(x => long.TryParse(x, out var v) && v >= -1 ? (v == -1 ? seed : v)
                : throw new ConfigException("moce.pipeline.seeds", $"'{x}' is not a seed (≥ 0, or -1 for moce.seed)")).Distinct().ToList(),
            TransferBaselines = t.Bool("moce.pipeline.transfer-baselines"),
            PipelineFineTune = t.Bool("moce.pipeline.finetune"),
            AblationSeeds = t.StringList("moce.ablate.seeds").Select(x => long.TryParse(x, out var v) && v >= 0 ? v
                : throw new ConfigException("moce.ablate.seeds", $"'{x}' is not a seed (≥ 0)")).Distinct().ToList() is { Count: > 0 } aseeds ? aseeds
                : throw new ConfigException("moce.ablate.seeds", "needs at least one seed"),
            AblationArms = Names(merged, "moce.ablate.arms").ToDictionary(n => n, n => (IReadOnlyList<string>)t.StringList($"moce.ablate.arms.{n}").Select(o =>
                o.Contains('=') && o.IndexOf('=') > 0 ? o : throw new ConfigException($"moce.ablate.arms.{n}", $"'{o}' is not an override KEY=VALUE (as -o takes)")).ToList()),
            PipelineMethods = t.StringList("moce.pipeline.methods").Select(x => ParseMethod("moce.pipeline.methods", x)).Distinct().ToList(),
            FoldGateWeight = t.String("moce.customize.fold-gate-weight") switch            // true and false: the values it had before
            {
                "true" => MoCE.Core.Customization.GateFold.Expected,
                "false" => MoCE.Core.Customization.GateFold.Off,
                _ => t.Enum<MoCE.Core.Customization.GateFold>("moce.customize.fold-gate-weight"),
            },
            Engine = t.String("moce.actors.engine") is "actors" or "local" ? t.String("moce.actors.engine")
                : throw new ConfigException("moce.actors.engine", $"expected actors or local, got '{t.String("moce.actors.engine")}'"),
            RecoveryPolicy = t.Enum<MoCE.Actors.RecoveryPolicy>("moce.actors.policy"),
            PeerCopies = t.Bool("moce.actors.peer-copies"),
            Placement = t.String("moce.actors.placement") is "spread" or "fill" ? t.String("moce.actors.placement")
                : throw new ConfigException("moce.actors.placement", $"expected spread or fill, got '{t.String("moce.actors.placement")}'"),
            StragglerTimeout = TimeSpan.FromMilliseconds(t.Double("moce.actors.straggler-timeout") >= 0 ? t.Double("moce.actors.straggler-timeout")
                : throw new ConfigException("moce.actors.straggler-timeout", "must be ≥ 0 (milliseconds; 0 turns it off)")),
            StragglerSitOut = t.Int("moce.actors.straggler-sit-out") >= 1 ? t.Int("moce.actors.straggler-sit-out")
                : throw new ConfigException("moce.actors.straggler-sit-out", "must be at least 1 step"),
            SplitMargin = t.Double("moce.actors.split-margin") >= 0 ? t.Double("moce.actors.split-margin")
                : throw new ConfigException("moce.actors.split-margin", "must be ≥ 0"),
            OwnerThreads = t.Int("moce.actors.owner-threads") >= 0 ? t.Int("moce.actors.owner-threads")
                : throw new ConfigException("moce.actors.owner-threads", "must be ≥ 0"),
            AskTimeout = TimeSpan.FromSeconds(t.Double("moce.actors.ask-timeout") > 0 ? t.Double("moce.actors.ask-timeout")
                : throw new ConfigException("moce.actors.ask-timeout", "must be positive")),
            Backoff = BackoffSection(t),
            WireEncoding = t.String("moce.wire.tensor-encoding") is "fp32" or "bf16" ? t.String("moce.wire.tensor-encoding")
                : throw new ConfigException("moce.wire.tensor-encoding", $"expected fp32 or bf16, got '{t.String("moce.wire.tensor-encoding")}'"),
            Tasks = tasks,
            MetricsPort = t.Int("moce.metrics.port") is >= 0 and <= 65535 ? t.Int("moce.metrics.port") : throw new ConfigException("moce.metrics.port", "expected 0..65535"),
            MetricsHost = t.String("moce.metrics.host"),
            Node = new MoCE.Actors.NodeOptions(t.StringList("moce.node.roles"), t.String("moce.node.host"), t.Int("moce.node.port"),
                t.StringList("moce.node.seed-nodes"), t.StringList("moce.node.devices"), t.Int("moce.node.min-expert-nodes"), t.Int("moce.actors.owner-threads"),
                t.String("moce.node.tls-certificate"), t.String("moce.node.tls-ca"), t.StringList("moce.node.tls-revoked"),
                t.Bool("moce.node.chaos-kill"), t.Bool("moce.node.insecure")),
            FineTune = new MoCE.Core.Evaluation.FineTuneConfig
            {
                Epochs = t.Int("moce.finetune.epochs"),
                BatchSize = t.Int("moce.finetune.batch-size"),
                BaseLr = t.Double("moce.finetune.base-lr"),
                LayerDecay = t.Double("moce.finetune.layer-decay"),
                WeightDecay = t.Double("moce.finetune.weight-decay"),
                WarmupEpochs = t.Int("moce.finetune.warmup-epochs"),
                LabelSmoothing = t.Double("moce.finetune.label-smoothing"),
            }.Validate(),
            Eval = new EvalConfig
            {
                Tasks = t.StringList("moce.eval.tasks"),
                Models = t.StringList("moce.eval.models"),
                TrainImages = t.Int("moce.eval.train-images"),
                TestImages = t.Int("moce.eval.test-images"),
                KnnK = t.Int("moce.eval.knn-k"),
                KnnTemperature = t.Double("moce.eval.knn-temperature"),
                ProbeEpochs = t.Int("moce.eval.probe-epochs"),
                ProbeLr = t.Double("moce.eval.probe-lr"),
                ProbeWeightDecay = t.Double("moce.eval.probe-weight-decay"),
                ProbeBatch = t.Int("moce.eval.probe-batch"),
                ProbeTol = t.Double("moce.eval.probe-tol"),
                KnnCentre = t.Bool("moce.eval.knn-centre"),
            }.Validate(tasks),
        };
        if (cfg.Moe.GateFromCentroids && cfg.Moe.GateDim != model.Dim)
            throw new ConfigException("moce.moe.gate-dim", $"gate-init = centroids needs gate-dim = model.dim ({model.Dim}), got {cfg.Moe.GateDim}");
        if (cfg.PipelineSeeds.Count == 0) throw new ConfigException("moce.pipeline.seeds", "needs at least one seed");
        if (cfg.Threads < 0) throw new ConfigException("moce.threads", "must be ≥ 0 (0 = torch's default)");
        if (cfg.Device != "cpu" && !cfg.Device.StartsWith("cuda", StringComparison.Ordinal))
            throw new ConfigException("moce.device", $"expected \"cpu\", \"cuda\" or \"cuda:N\", got \"{cfg.Device}\"");
        return (cfg, t.KeysRead);
    }

    private static MoCE.Actors.RestartBackoff BackoffSection(HoconTree t)
    {
        double min = t.Double("moce.actors.backoff-min"), max = t.Double("moce.actors.backoff-max");
        int failures = t.Int("moce.actors.max-failures");
        if (min < 0) throw new ConfigException("moce.actors.backoff-min", "must be ≥ 0");
        if (max < min) throw new ConfigException("moce.actors.backoff-max", "must be ≥ moce.actors.backoff-min");
        if (failures < 1) throw new ConfigException("moce.actors.max-failures", "must be ≥ 1");
        return new MoCE.Actors.RestartBackoff(TimeSpan.FromSeconds(min), TimeSpan.FromSeconds(max), failures);
    }

    private static TrainConfig TrainSection(HoconTree t, string s, long seed) => new TrainConfig
    {
        Seed = seed,
        Steps = t.Long($"{s}.steps"),
        BatchSize = t.Int($"{s}.batch-size"),
        AccumSteps = s == "moce.pretrain" ? t.Int($"{s}.accum-steps") : 1,       // MoE phases do not accumulate (yet)
        Precision = s == "moce.pretrain" ? t.Enum<Precision>($"{s}.precision") : Precision.Fp32,   // nor compute in bf16
        InitFrom = s == "moce.pretrain" ? t.String($"{s}.init-from") : "",           // MoE phases start from pre-training
        BaseLr = t.Double($"{s}.base-lr"),
        MinLr = t.Double($"{s}.min-lr"),
        WarmupSteps = t.Long($"{s}.warmup-steps"),
        WeightDecay = t.Double($"{s}.weight-decay"),
        Beta1 = t.Double($"{s}.beta1"),
        Beta2 = t.Double($"{s}.beta2"),
        Eps = t.Double($"{s}.eps"),
        ClipGrad = t.Double($"{s}.clip-grad"),
        CheckpointEvery = t.Long($"{s}.checkpoint-every"),
        KeepCheckpoints = t.Int($"{s}.keep-checkpoints"),
        LogEvery = t.Long($"{s}.log-every"),
        CollectEvery = t.Long($"{s}.collect-every"),
    }.Validate(s);
}
