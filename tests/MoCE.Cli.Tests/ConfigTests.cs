using MoCE.Runs;
using MoCE.Cli;
using MoCE.Runs.Configuration;
using MoCE.Core.Config;
using Serilog;

namespace MoCE.Cli.Tests;

public class ConfigTests
{
    private static MoceConfig Load(params string[] overrides) =>
        ConfigLoader.Load(new ConfigLoader.Sources(Overrides: overrides));

    private static ConfigException Fails(Action a) => Assert.Throws<ConfigException>(a);

    [Fact]
    public void Defaults_load_and_validate()
    {
        var c = Load();
        Assert.Equal(128, c.Model.Dim);
        Assert.Equal(0.75, c.Model.MaskRatio);
        Assert.Equal(0.9, c.Pretrain.Beta1);
        Assert.Equal(0.95, c.Pretrain.Beta2);
        Assert.Equal(0.05, c.Pretrain.WeightDecay);
        Assert.Equal(1.5e-4 * 128 / 256, c.Pretrain.PeakLr, 12);
    }

    [Fact]
    public void Fold_gate_weight_is_routed_by_default_and_keeps_its_old_true_and_false()
    {
        Assert.Equal(MoCE.Core.Customization.GateFold.Routed, Load().FoldGateWeight);
        Assert.Equal(MoCE.Core.Customization.GateFold.Expected, Load("customize.fold-gate-weight=expected").FoldGateWeight);
        Assert.Equal(MoCE.Core.Customization.GateFold.Expected, Load("customize.fold-gate-weight=true").FoldGateWeight);
        Assert.Equal(MoCE.Core.Customization.GateFold.Off, Load("customize.fold-gate-weight=false").FoldGateWeight);
        var e = Fails(() => Load("customize.fold-gate-weight=sometimes"));
        Assert.Contains("moce.customize.fold-gate-weight", e.Message);
        Assert.Contains("expected routed, expected, off, got 'sometimes'", e.Message);
    }

    /// <summary>Each seed of a study draws its own few-shot sets and probe initialisation (the evaluation seed follows
    /// moce.train.seed), and one seed always the same.</summary>
    [Fact]
    public void The_evaluation_seed_follows_the_moe_phase_seed()
    {
        var seeds = new[] { 0, 1, 2 }.Select(k => Load($"train.seed={k}").EvalSeed).ToList();
        Assert.Equal(3, seeds.Distinct().Count());
        Assert.Equal(seeds[1], Load("train.seed=1").EvalSeed);
        Assert.NotEqual(seeds[1], Load("train.seed=1", "seed=5").EvalSeed);     // and moce.seed
        Assert.All(seeds, x => Assert.True(x >= 0));
    }

    /// <summary>An empty list is a list: <c>search = []</c> (the way moce.conf documents a dataset of one's own) was refused
    /// as "&lt;&lt;unknown value&gt;&gt;", through -o and in a file alike.</summary>
    [Fact]
    public void An_empty_list_is_an_empty_list()
    {
        var c = Load("moce.datasets.mnist.search=[]");
        Assert.Empty(c.Data.Datasets["mnist"].Search);
        var file = Path.Combine(Path.GetTempPath(), $"moce-empty-{Guid.NewGuid():N}.conf");
        File.WriteAllText(file, "moce.datasets.mnist { path = \"\", search = [], fetch = \"\" }\n");   // moce.conf's one-line form
        try
        {
            var d = ConfigLoader.Load(new ConfigLoader.Sources(Files: [file])).Data.Datasets["mnist"];
            Assert.Empty(d.Search);
            Assert.Equal("", d.Fetch);
        }
        finally { File.Delete(file); }
        Assert.Equal("[]", HoconTree.Render(Akka.Configuration.ConfigurationFactory.ParseString("a = []").GetValue("a")));
    }

    /// <summary>A dataset of one's own needs only where it is (path): search, fetch and sample default to nothing, the
    /// normalisation to what its training images measure, the class names to their labels. Without any location the
    /// error names the path key; what is given is still checked.</summary>
    [Fact]
    public void A_dataset_of_ones_own_needs_only_its_path()
    {
        var d = Load("moce.datasets.mine.path=/data/mine").Data.Datasets["mine"];
        Assert.Equal(("/data/mine", "", ""), (d.Path, d.Fetch, d.Sample));
        Assert.Empty(d.Search);
        Assert.False(d.Norm.IsSet);
        Assert.Empty(d.Classes);
        Assert.Equal("moce.datasets.mine.path", Fails(() => Load("moce.datasets.mine.mean=0.5")).Key);
        Assert.Equal("moce.datasets.mine.std", Fails(() => Load("moce.datasets.mine.path=/data/mine", "moce.datasets.mine.std=0")).Key);
        Assert.Equal("moce.datasets.mine.classes", Fails(() => Load("moce.datasets.mine.path=/data/mine", "moce.datasets.mine.classes=[a]")).Key);
        var task = Load("moce.datasets.mine.path=/data/mine", "moce.tasks.t.dataset=mine", "moce.tasks.t.classes=[3, 12]").Tasks["t"];   // checked at load:
        var e = Fails(() => task.CheckClasses([.. Enumerable.Range(0, 10).Select(i => i.ToString())]));             // against the labels' names
        Assert.Equal(("moce.tasks.t.classes", true), (e.Key, e.Message.Contains("class 12 is not a class of dataset 'mine' (0..9")));
        task.CheckClasses([.. Enumerable.Range(0, 13).Select(i => i.ToString())]);
    }

    [Fact]
    public void Every_default_is_bound_and_every_bound_key_has_a_default()
    {
        var defaults = ConfigLoader.Defaults();
        var (_, read) = ConfigLoader.Resolve(defaults);
        var keys = HoconTree.Leaves(defaults, "moce").Select(l => l.path).ToHashSet();
        Assert.Empty(keys.Except(read));   // a default nobody reads is dead configuration
        Assert.Empty(read.Except(keys));   // a key read without a default would fail on a user's machine
    }

    [Fact]
    public void Every_default_has_a_comment()
    {
        var lines = File.ReadAllLines(Path.Combine(ConfigLoader.HoconDir, "moce.conf"));
        var bare = lines.Where(l => l.Contains('=') && !l.TrimStart().StartsWith('#') && !l.Contains('#')).ToList();
        Assert.Empty(bare);
    }

    [Theory]
    [InlineData("model.dimm=3", "moce.model.dimm", "unknown key")]
    [InlineData("pretrain.steps=abc", "moce.pretrain.steps", "expected an integer, got 'abc'")]
    [InlineData("model.mask-ratio=lots", "moce.model.mask-ratio", "expected a number")]
    [InlineData("model.norm-pix-loss=maybe", "moce.model.norm-pix-loss", "expected a boolean")]
    [InlineData("model.heads=5", "moce.model.heads", "must divide dim 128")]
    [InlineData("model.mask-ratio=1.0", "moce.model.mask-ratio", "must be in [0, 1)")]
    [InlineData("pretrain.keep-checkpoints=1", "moce.pretrain.keep-checkpoints", "at least 2")]
    [InlineData("device=tpu", "moce.device", "expected \"cpu\"")]
    [InlineData("model=5", "moce.model", "is a section, not a value")]
    [InlineData("model.dim={ x = 1 }", "moce.model.dim.x", "unknown key")]
    public void Config_errors_name_the_key(string overrideText, string key, string problem)
    {
        var e = Fails(() => Load(overrideText));
        Assert.Equal(key, e.Key);
        Assert.Contains(key, e.Message);
        Assert.Contains(problem, e.Message);
    }

    [Theory]
    [InlineData("tasks.odd.classes=[1]", "moce.tasks.odd.classes", "at least two classes")]
    [InlineData("tasks.odd.classes=[1, 12]", "moce.tasks.odd.classes", "class 12 is not a class of dataset 'fashion-mnist' (0..9: T-shirt/top")]
    [InlineData("tasks.tops.dataset=svhn", "moce.tasks.tops.dataset", "no dataset 'svhn' under moce.datasets (defined: fashion-mnist, mnist)")]
    [InlineData("tasks.digits.shots=-1", "moce.tasks.digits.shots", "must be ≥ 0")]
    [InlineData("data.mix.fashion-mnist=0", "moce.data.mix", "at least one source with a positive weight")]
    [InlineData("datasets.mnist.fetch=http://x", "moce.datasets.mnist.fetch", "unknown source")]
    [InlineData("moe.gate-init=centroids", "moce.moe.gate-dim", "needs gate-dim = model.dim (128)")]
    [InlineData("eval.models=[moce, resnet]", "moce.eval.models", "unknown model 'resnet'")]
    [InlineData("eval.tasks=[tops, nope]", "moce.eval.tasks", "task 'nope' is not defined")]
    [InlineData("moe.method=sparse", "moce.moe.method", "expected moce, token-moe or dense")]
    [InlineData("moe.layers=[1, 9]", "moce.moe.layers", "depth = 4")]
    [InlineData("moe.top-k=5", "moce.moe.top-k", "[1, experts = 4]")]
    [InlineData("moe.layers=2", "moce.moe.layers", "expected a list of integers")]
    [InlineData("actors.policy=pray", "moce.actors.policy", "expected global-rollback, expert-local, expert-exact")]
    [InlineData("actors.engine=gpu", "moce.actors.engine", "expected actors or local")]
    [InlineData("actors.ask-timeout=0", "moce.actors.ask-timeout", "must be positive")]
    [InlineData("actors.max-failures=0", "moce.actors.max-failures", "must be ≥ 1")]
    [InlineData("actors.backoff-max=0.1", "moce.actors.backoff-max", "must be ≥ moce.actors.backoff-min")]
    [InlineData("train.collect-every=-1", "moce.train.collect-every", "must be non-negative")]
    public void Method_config_errors_name_the_key(string overrideText, string key, string problem)
    {
        var e = Fails(() => Load(overrideText));
        Assert.Equal(key, e.Key);
        Assert.Contains(problem, e.Message);
    }

    [Fact]
    public void Actor_runtime_settings_bind()
    {
        var c = Load("actors.policy=expert-local", "actors.ask-timeout=2.5", "actors.engine=local", "actors.backoff-min=0.5", "actors.max-failures=3");
        Assert.Equal((MoCE.Actors.RecoveryPolicy.ExpertLocal, TimeSpan.FromSeconds(2.5), "local"), (c.RecoveryPolicy, c.AskTimeout, c.Engine));
        Assert.Equal(new MoCE.Actors.RestartBackoff(TimeSpan.FromSeconds(0.5), TimeSpan.FromSeconds(30), 3), c.Backoff);
        Assert.Equal("actors", Load().Engine);
        Assert.Equal((true, false), (Load().PeerCopies, Load("actors.peer-copies=off").PeerCopies));
    }

    /// <summary>hocon/fast-failover.conf takes effect: Akka reads each of its keys (a misspelt key would be ignored without a
    /// word, and detection would stay at the defaults' 10 s).</summary>
    [Fact]
    public void The_fast_failover_preset_sets_the_cluster_s_failure_detector_and_downing()
    {
        var fast = Akka.Configuration.ConfigurationFactory.ParseString(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "hocon", "fast-failover.conf")))
            .WithFallback(Akka.Configuration.ConfigurationFactory.ParseString(File.ReadAllText(Path.Combine(AppContext.BaseDirectory, "hocon", "akka.conf"))))
            .WithFallback(Akka.Configuration.ConfigurationFactory.FromResource<Akka.Cluster.ClusterSettings>("Akka.Cluster.Configuration.Cluster.conf"));
        var cluster = new Akka.Cluster.ClusterSettings(fast, "moce");
        Assert.Equal((TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100), TimeSpan.FromMilliseconds(100)),
            (cluster.HeartbeatInterval, cluster.HeartbeatExpectedResponseAfter, cluster.UnreachableNodesReaperInterval, cluster.GossipInterval, cluster.LeaderActionsInterval));
        Assert.Equal((TimeSpan.FromMilliseconds(400), TimeSpan.FromMilliseconds(50)),
            (cluster.FailureDetectorConfig.GetTimeSpan("acceptable-heartbeat-pause"), cluster.FailureDetectorConfig.GetTimeSpan("min-std-deviation")));
        Assert.Equal(TimeSpan.FromMilliseconds(300), fast.GetTimeSpan("akka.cluster.split-brain-resolver.stable-after"));
        string[] keys = ["failure-detector.heartbeat-interval", "failure-detector.acceptable-heartbeat-pause", "failure-detector.min-std-deviation",
                         "failure-detector.expected-response-after", "unreachable-nodes-reaper-interval", "gossip-interval", "leader-actions-interval", "split-brain-resolver.stable-after"];
        Assert.Equal(keys.Length, File.ReadLines(Path.Combine(AppContext.BaseDirectory, "hocon", "fast-failover.conf")).Count(l => !l.TrimStart().StartsWith('#') && l.Contains(" = ")));
        Assert.All(keys, k => Assert.True(Akka.Configuration.ConfigurationFactory.FromResource<Akka.Cluster.ClusterSettings>("Akka.Cluster.Configuration.Cluster.conf").HasPath("akka.cluster." + k), $"akka.cluster.{k} is not a key Akka.Cluster knows"));
    }

    [Fact]
    public void Tasks_are_open_for_new_names()
    {
        var c = Load("tasks.bags-and-shoes.classes=[8, 5, 7, 9]", "eval.tasks=[bags-and-shoes]");
        Assert.Equal(new[] { 8, 5, 7, 9 }, c.Tasks["bags-and-shoes"].Classes);
        Assert.Equal(new[] { 0, 2, 4, 6 }, c.Tasks["tops"].Classes);
    }

    [Fact]
    public void A_section_may_be_given_as_an_object()
    {
        Assert.Equal(64, Load("model={ dim = 64 }").Model.Dim);
    }

    [Fact]
    public void Unknown_key_in_a_config_file_names_the_key_and_the_file()
    {
        var f = Path.Combine(Path.GetTempPath(), $"moce-{Guid.NewGuid():N}.conf");
        File.WriteAllText(f, "moce.pretrain { stepz = 5 }");
        var e = Fails(() => ConfigLoader.Load(new ConfigLoader.Sources(Files: [f])));
        Assert.Equal("moce.pretrain.stepz", e.Key);
        Assert.Contains(f, e.Message);
    }

    [Fact]
    public void Unknown_preset_lists_the_known_ones()
    {
        var e = Fails(() => ConfigLoader.Load(new ConfigLoader.Sources(Preset: "quikstart")));
        Assert.Contains("quickstart", e.Message);
    }

    [Fact]
    public void Layers_apply_in_order_preset_then_files_then_overrides()
    {
        var f = Path.Combine(Path.GetTempPath(), $"moce-{Guid.NewGuid():N}.conf");
        File.WriteAllText(f, "moce.pretrain.steps = 77\nmoce.pretrain.log-every = 7");
        var c = ConfigLoader.Load(new ConfigLoader.Sources("quickstart", [f], ["pretrain.log-every=3"]));
        Assert.Equal(77, c.Pretrain.Steps);
        Assert.Equal(3, c.Pretrain.LogEvery);
        Assert.Equal(2e-3, c.Pretrain.BaseLr); // from the preset
        Assert.Equal(128, c.Model.Dim);        // from the defaults
    }

    [Fact]
    public void A_preset_may_include_another_and_override_it()
    {
        var q = ConfigLoader.Load(new ConfigLoader.Sources("quickstart"));
        var t = ConfigLoader.Load(new ConfigLoader.Sources("transfer"));
        Assert.Equal(new Dictionary<string, double> { ["fashion-mnist"] = 1.0, ["mnist"] = 1.0 }, q.Data.Mix);   // from transfer.conf
        Assert.Equal(t.Eval.Tasks, q.Eval.Tasks);
        Assert.Equal(100, q.Tasks["digits"].Shots);
        Assert.Equal("mnist", q.Tasks["digits"].Dataset);
        Assert.True(q.Moe.GateFromCentroids);
        Assert.Equal(500, q.Pretrain.Steps);                                          // its own
        Assert.Equal(300, t.Pretrain.Steps);
        Assert.Equal(800, t.Train.Steps);                                              // one protocol: 300 dense, then 800 for every arm
        Assert.Equal(0.0, t.Moe.LambdaDistill);
        Assert.Equal([0, 1, 2, 3], t.Moe.Layers);
        Assert.Equal(0.0, q.Moe.LambdaDistill);                                        // inherited
        Assert.True(t.PipelineFineTune);
        Assert.False(q.PipelineFineTune);
        Assert.Equal([0L, 1L, 2L], t.PipelineSeeds);
        Assert.Equal([0L], q.PipelineSeeds);
        Assert.True(t.TransferBaselines);
        Assert.False(q.TransferBaselines);
        var f = ConfigLoader.Load(new ConfigLoader.Sources("fashion"));                 // the previous quickstart: Fashion-MNIST alone
        Assert.Equal(new Dictionary<string, double> { ["fashion-mnist"] = 1.0 }, f.Data.Mix);
        Assert.Equal(1500, f.Pretrain.Steps);
        Assert.Equal(4, f.Moe.Experts);
    }

    [Fact]
    public void Override_values_survive_hocon_syntax()
    {
        var c = Load("datasets.fashion-mnist.path=/data//fashion # not a comment");
        Assert.Equal("/data//fashion # not a comment", c.Data.Datasets["fashion-mnist"].Path);
    }

    [Fact]
    public void Rendered_config_parses_back_to_the_same_values()
    {
        var merged = ConfigLoader.Merge(new ConfigLoader.Sources("quickstart", null, ["datasets.fashion-mnist.path=/x/y"]));
        var reparsed = Akka.Configuration.ConfigurationFactory.ParseString(ConfigLoader.Render(merged));
        Assert.Empty(ConfigLoader.Diff(merged, reparsed));
    }

    [Fact]
    public void Resuming_with_a_different_architecture_names_the_key()
    {
        var dir = Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N"));
        var log = new LoggerConfiguration().CreateLogger();
        var run = new RunDirectory(dir);
        Assert.False(run.AdoptConfig(ConfigLoader.Merge(new ConfigLoader.Sources("quickstart")), log));
        // mutable keys may change on resume
        Assert.True(run.AdoptConfig(ConfigLoader.Merge(new ConfigLoader.Sources("quickstart", null, ["threads=1"])), log));
        File.WriteAllText(Path.Combine(run.Phase("pretrain"), "metrics.csv"), "step,loss\n");      // pre-training has begun
        var e = Fails(() => run.AdoptConfig(ConfigLoader.Merge(new ConfigLoader.Sources("quickstart", null, ["model.dim=64"])), log));
        Assert.Equal("moce.model.dim", e.Key);
        Assert.Contains("was started with 128, now 64, and its pretrain phase", e.Message);
    }

    /// <summary>A key is frozen once a phase it shapes has begun, not at the run's first command: after pretrain and
    /// cluster the MoE phase's keys may change; once it has begun they may not; a dataset that pre-training does not
    /// read, and a task on it, may be added to a trained run.</summary>
    [Fact]
    public void A_key_is_frozen_only_once_a_phase_it_shapes_has_begun()
    {
        var dir = Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N"));
        var log = new LoggerConfiguration().CreateLogger();
        var run = new RunDirectory(dir);
        bool Adopt(params string[] o) => run.AdoptConfig(ConfigLoader.Merge(new ConfigLoader.Sources("quickstart", null, o)), log);
        Assert.False(Adopt());
        Assert.True(Adopt("model.dim=64"));                                              // nothing has begun: the model may change
        _ = run.Phase("pretrain");                                                       // an empty folder is not a phase that began
        Assert.True(Adopt("model.dim=128"));
        foreach (var phase in new[] { "pretrain", "cluster" }) File.WriteAllText(Path.Combine(run.Phase(phase), "summary.json"), "{}");
        Assert.Equal("moce.model.dim", Fails(() => Adopt("model.dim=64")).Key);
        Assert.Equal("moce.cluster.k", Fails(() => Adopt("cluster.k=8")).Key);
        Assert.True(Adopt("train.steps=200", "moe.experts=8"));                          // the MoE phase has not begun
        string[] mine = ["datasets.mine.path=/data/mine", "datasets.mine.classes=[a, b]", "datasets.mine.mean=0.5", "datasets.mine.std=0.25",
                         "tasks.mine-ab.dataset=mine", "tasks.mine-ab.classes=[0, 1]", "train.steps=200", "moe.experts=8"];
        Assert.True(Adopt(mine));                                                        // pre-training does not read it
        File.WriteAllText(Path.Combine(run.Phase(MoceConfig.TrainPhases[0]), "metrics.csv"), "step,loss\n");
        var e = Fails(() => Adopt([.. mine[..^1], "moe.experts=6"]));
        Assert.Equal("moce.moe.experts", e.Key);
        Assert.Contains($"its {MoceConfig.TrainPhases[0]} phase", e.Message);
        Assert.True(Adopt([.. mine, "datasets.mine.std=0.3"]));                          // still no phase reads it
        Assert.Equal("moce.datasets.fashion-mnist.mean", Fails(() => Adopt([.. mine, "datasets.fashion-mnist.mean=0.5"])).Key);   // pre-trained on

        // a run made by a version without a key resumes with that key at its default, and not at another value
        var lines = File.ReadAllLines(run.ConfigPath);
        File.WriteAllLines(run.ConfigPath, lines.Where(l => !l.StartsWith("moce.pretrain.accum-steps", StringComparison.Ordinal)));
        Assert.NotEqual(lines.Length, File.ReadAllLines(run.ConfigPath).Length);
        Assert.True(Adopt(mine));
        File.WriteAllLines(run.ConfigPath, lines.Where(l => !l.StartsWith("moce.pretrain.accum-steps", StringComparison.Ordinal)));
        Assert.Equal("moce.pretrain.accum-steps", Fails(() => Adopt([.. mine, "pretrain.accum-steps=2", "pretrain.batch-size=128"])).Key);
    }

    [Fact]
    public void Secrets_are_refused_on_the_command_line_where_the_process_list_shows_them()
    {
        foreach (var o in new[] { "akka.persistence.journal.sql.connection-string=Host=db;Password=hunter2", "akka.remote.dot-netty.tcp.ssl.certificate.password=hunter2" })
        {
            var e = Fails(() => ConfigLoader.Merge(new ConfigLoader.Sources(Overrides: [o])));
            Assert.Equal(o[..o.IndexOf('=')], e.Key);
            Assert.Contains("$MOCE_POSTGRES", e.Message);
            Assert.DoesNotContain("hunter2", e.Message);                              // the refusal does not repeat it
        }
        var file = Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N") + ".conf");   // a file is fine
        Directory.CreateDirectory(Path.GetDirectoryName(file)!);
        File.WriteAllText(file, "akka.persistence.journal.sql.connection-string = \"Host=db;Password=hunter2\"");
        Assert.Equal("Host=db;Password=hunter2", ConfigLoader.Merge(new ConfigLoader.Sources(Files: [file])).GetString("akka.persistence.journal.sql.connection-string"));
    }

    [Fact]
    public void Command_line_errors_name_the_argument()
    {
        Assert.Equal("--run", Fails(() => CliArgs.Parse(["pretrain", "--run"])).Key);
        Assert.Equal("extra", Fails(() => CliArgs.Parse(["pretrain", "extra"])).Key);
        var args = CliArgs.Parse(["pretrain", "--preset", "quickstart", "-o", "seed=3", "--run", "r"]);
        Assert.Equal(("pretrain", "quickstart", "r"), (args.Command, args.Preset, args.RunDir));
        Assert.Equal("--bogus", Fails(() => CliArgs.Parse(["pretrain", "--bogus", "1"])).Key);
        // each command takes its own options only; an option never swallows the next option as its value
        Assert.Equal("--task", Fails(() => CliArgs.Parse(["pretrain", "--task", "shoes"])).Key);
        Assert.Equal("--count", Fails(() => CliArgs.Parse(["experts", "list", "--count", "2", "--seeds", "h:1"])).Key);
        Assert.Equal("--chaos", Fails(() => CliArgs.Parse(["train", "--chaos", "--method", "moce"])).Key);
        Assert.Contains("Required command", Fails(() => CliArgs.Parse(["experts"])).Message);   // list or add
        var add = CliArgs.Parse(["experts", "add", "--count", "2", "--node", "127.0.0.1:4555", "--seeds", "127.0.0.1:4551"]);
        Assert.Equal(("experts", "add", "2", "127.0.0.1:4555"), (add.Command, add.Positionals[0], add.Flags["count"], add.Flags["node"]));
        var drain = CliArgs.Parse(["node", "drain", "127.0.0.1:4553", "--seeds", "127.0.0.1:4551"]);
        Assert.Equal(["drain", "127.0.0.1:4553"], drain.Positionals);
        var status = CliArgs.Parse(["status", "runs/x"]);
        Assert.Equal(Path.Combine("runs", "x"), status.RunDir);
        var repeated = CliArgs.Parse(["train", "-o", "seed=3", "-o", "train.steps=5", "--config", "a.conf", "--config", "b.conf"]);
        Assert.Equal(["seed=3", "train.steps=5"], repeated.Overrides);
        Assert.Equal(["a.conf", "b.conf"], repeated.Files);
        Assert.Equal("help", CliArgs.Parse(["chaos", "compare", "--help"]).Command);
    }
}
