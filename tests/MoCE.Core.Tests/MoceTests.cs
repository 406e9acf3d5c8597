using MoCE.Core.Checkpoints;
using MoCE.Core.Clustering;
using MoCE.Core.Config;
using MoCE.Core.Customization;
using MoCE.Core.Evaluation;
using MoCE.Core.Model;
using MoCE.Core.Training;
using Serilog;
using static TorchSharp.torch;

namespace MoCE.Core.Tests;

public class MoceTests(MoceFixture fx) : IClassFixture<MoceFixture>
{
    private static MoeLayer Layer(MoeConfig cfg, int dim = 8, int clusters = 5, long seed = 0)
    {
        var layer = new MoeLayer(cfg, 0, dim, 2 * dim, clusters);
        using var dense = new Mlp(dim, 2 * dim);
        using var gen = Seeds.Generator(seed, Seeds.Stream.Upcycle, 0);
        layer.Upcycle(dense.state_dict(), cfg.UpcycleNoise, gen);
        // make experts clearly different from each other
        using (no_grad()) foreach (var p in layer.Experts.parameters()) p.add_(randn(p.shape, generator: gen) * 0.5);
        return layer;
    }

    [Fact]
    public void Every_token_of_an_image_follows_the_image_route_and_the_cluster_alone_changes_it()
    {
        var cfg = new MoeConfig { Experts = 4, TopK = 1, Temperature = 0.5 };
        using var layer = Layer(cfg);
        using var scope = NewDisposeScope();
        var x = randn(6, 5, 8);                                              // [N, T, D]
        var clusters = tensor(new long[] { 0, 1, 2, 3, 4, 0 });
        var (y, stats) = layer.forward(x, new GateInput(clusters));
        Assert.Equal(new long[] { 6, 1 }, stats.Choice.shape);               // one route per image
        for (int n = 0; n < 6; n++)
        {
            int e = (int)stats.Choice[n, 0].item<long>();
            var expected = layer.Experts[e].forward(x[n]) * stats.Weights[n, 0];  // all T tokens, same expert and weight
            Assert.True(y[n].allclose(expected, rtol: 1e-5, atol: 1e-6), $"image {n}");
        }
        // only the cluster id changes: the route follows the cluster gate's argmax
        var best = layer.ClusterGate().argmax(1).data<long>().ToArray();
        int a = 0, b = Enumerable.Range(1, 4).First(c => best[c] != best[0]);
        var (ya, sa) = layer.forward(x[..1], new GateInput(tensor(new long[] { a })));
        var (yb, sb) = layer.forward(x[..1], new GateInput(tensor(new long[] { b })));
        Assert.Equal(best[a], sa.Choice[0, 0].item<long>());
        Assert.Equal(best[b], sb.Choice[0, 0].item<long>());
        Assert.False(ya.allclose(yb));
    }

    [Fact]
    public void Token_moe_routes_each_token_by_its_own_embedding()
    {
        var cfg = new MoeConfig { Method = MoeMethod.TokenMoe, Experts = 4, TopK = 1, Temperature = 0.1 };
        using var layer = Layer(cfg);
        using var scope = NewDisposeScope();
        var x = randn(3, 20, 8);
        var (y, stats) = layer.forward(x, new GateInput(tensor(new long[] { 0, 0, 0 })));
        Assert.Equal(new long[] { 60, 1 }, stats.Choice.shape);              // one route per token
        var perImage = stats.Choice.reshape(3, 20);
        Assert.True(perImage.unique().output.numel() > 1, "tokens of the same images should use several experts");
        // balance loss E·Σ f_e·P_e is ≥ 1 when routing follows the gate, with equality only if balanced
        Assert.True(stats.Aux.item<float>() >= 0.99f);
    }

    [Fact]
    public void Top_k_weights_sum_to_the_gate_mass_of_the_chosen_experts()
    {
        var cfg = new MoeConfig { Experts = 5, TopK = 2 };
        using var layer = Layer(cfg);
        using var scope = NewDisposeScope();
        var x = randn(7, 3, 8);
        var clusters = tensor(new long[] { 0, 1, 2, 3, 4, 1, 2 });
        var (y, s) = layer.forward(x, new GateInput(clusters, new GateNoise(0, 0)));
        var mass = s.Probs.gather(1, s.Choice).sum(1);
        Assert.True(s.Weights.sum(1).allclose(mass, rtol: 0, atol: 1e-7));
        Assert.True(mass.lt(1).all().item<bool>());                          // not renormalized
        Assert.True(s.Probs.sum(1).allclose(ones(7), atol: 1e-6));
        // and the output is Σ_j w_j · expert_{e_j}(x)
        var expected = zeros_like(x);
        for (int n = 0; n < 7; n++)
            for (int j = 0; j < 2; j++)
                expected[n] += layer.Experts[(int)s.Choice[n, j].item<long>()].forward(x[n]) * s.Weights[n, j];
        Assert.True(y.allclose(expected, rtol: 1e-5, atol: 1e-6));
    }

    [Fact]
    public void Routing_regularizer_rewards_confident_and_balanced_routing()
    {
        using var scope = NewDisposeScope();
        float R(float[,] p) => MoeLayer.RoutingRegularizer(tensor(p)).item<float>();
        Assert.Equal(0f, R(new float[,] { { .25f, .25f, .25f, .25f }, { .25f, .25f, .25f, .25f } }), 6);   // uniform
        Assert.Equal(0f, R(new float[,] { { 1, 0, 0, 0 }, { 1, 0, 0, 0 } }), 6);                          // collapsed
        Assert.Equal(-(float)Math.Log(4), R(new float[,] { { 1, 0, 0, 0 }, { 0, 1, 0, 0 }, { 0, 0, 1, 0 }, { 0, 0, 0, 1 } }), 5);
    }

    /// <summary>With a universal expert, upcycling splits the dense MLP's hidden units and fc2's bias between it and the
    /// routed expert, so the layer starts as the dense MLP too (the biases are made non-zero: a bias counted twice shows).</summary>
    [Theory]
    [InlineData(0.0)]
    [InlineData(0.5)]
    public void One_expert_without_regularizer_or_distillation_equals_the_dense_mae(double shared)
    {
        using var dense = new MaskedAutoencoder(Tiny.Model);
        using (var g = Seeds.Generator(3, Seeds.Stream.Init, 0)) dense.InitializeWeights(g);
        using (no_grad()) foreach (var (name, p) in dense.named_parameters().Where(kv => kv.name.EndsWith(".bias", StringComparison.Ordinal)))
            p.add_(randn(p.shape) * 0.1);
        var cfg = new MoeConfig { Experts = 1, TopK = 1, Layers = [0, 1], UpcycleNoise = 0, LambdaRoute = 0, LambdaDistill = 0, SharedFraction = shared };
        using var moce = new MaskedAutoencoder(Tiny.Model, cfg, clusters: 4);
        using (var g = Seeds.Generator(3, Seeds.Stream.Upcycle, 0)) moce.UpcycleFrom(dense.state_dict(), g);
        Assert.Equal(2, moce.MoeLayers.Count);
        Assert.Equal(shared > 0, moce.MoeLayers.Values.All(l => l.Shared is not null));

        using var scope = NewDisposeScope();
        using var data = Tiny.TrainSample();
        var imgs = data.Batch([0, 1, 2, 3, 4, 5, 6, 7]);
        using var mg = Seeds.Generator(1, Seeds.Stream.Mask, 0);
        var noise = dense.MaskNoise(8, mg);
        using var a = dense.forward(imgs, noise);
        using var b = moce.Forward(imgs, noise, new GateInput(tensor(new long[] { 0, 1, 2, 3, 0, 1, 2, 3 }), new GateNoise(1, 0)));
        Assert.Equal(a.Loss.item<float>(), b.Loss.item<float>(), 1e-6);
        Assert.True(a.Latent.allclose(b.Latent, rtol: 0, atol: 1e-6));
    }

    [Theory]
    [InlineData(GateFold.Routed, 0.0)]
    [InlineData(GateFold.Expected, 0.0)]
    [InlineData(GateFold.Off, 0.0)]
    [InlineData(GateFold.Routed, 0.25)]
    public void Extracted_encoder_equals_the_full_model_routed_to_the_chosen_experts(GateFold fold, double shared)
    {
        using var t = fx.Trainer(MoceFixture.Moe with { Layers = [0, 1], SharedFraction = shared }, Tiny.Train(steps: 3));
        for (int i = 0; i < 3; i++) t.TrainStep();
        var h = Customizer.Histogram([0, 0, 1, 3, 3, 3], MoceFixture.Clusters);
        Assert.Equal(new[] { 2 / 6.0, 1 / 6.0, 0, 3 / 6.0 }, h);
        var choices = Customizer.Choose(t.Model, h, fold);
        foreach (var c in choices)
        {
            Assert.Equal(Array.IndexOf(c.Scores, c.Scores.Max()), c.Expert);
            if (fold == GateFold.Expected) Assert.Equal(c.Scores[c.Expert], c.Weight);
            if (fold == GateFold.Off) Assert.Equal(1.0, c.Weight);
        }
        var route = Customizer.AsRoute(choices);
        using var extracted = t.Model.ExtractDense(route);
        Assert.Empty(extracted.MoeLayers);
        using var dense = fx.Dense();
        using var reference = new MaskedAutoencoder(Tiny.Model);
        Assert.Equal(Customizer.ParameterCount(reference), Customizer.ParameterCount(extracted)); // the dense MAE's size

        var idx = Enumerable.Range(0, 64).ToList();
        using var full = Features.Extract(t.Model, fx.Data, idx,
            gate: b => new GateInput(tensor(t.ClusterIdsOf(b)), Forced: new ForcedRoute(route)));
        using var ext = Features.Extract(extracted, fx.Data, idx);
        Assert.True(ext.allclose(full, rtol: 0, atol: 1e-5), $"max |Δ| = {(ext - full).abs().max().item<float>()}");
    }

    /// <summary>A checkpoint written before a setting existed records no value for it: it resumes when the setting is at its
    /// default (the old behaviour), and not when it is set otherwise.</summary>
    [Fact]
    public void A_checkpoint_from_before_a_setting_existed_resumes_at_its_default_only()
    {
        var moe = MoceFixture.Moe;
        var old = System.Text.Json.Nodes.JsonNode.Parse(System.Text.Json.JsonSerializer.Serialize(moe))!.AsObject();
        Assert.True(old.Remove(nameof(MoeConfig.DistillDense)));                  // as written before moe.distill-dense
        Assert.True(MoceTrainer.SameConfig(old.ToJsonString(), moe));
        Assert.False(MoceTrainer.SameConfig(old.ToJsonString(), moe with { DistillDense = true }));
        Assert.False(MoceTrainer.SameConfig(old.ToJsonString(), moe with { Layers = [0, 1] }));
    }

    /// <summary>moe.distill-dense: the dense arm gets the same pull to the frozen teacher as the MoE arms, or none.</summary>
    [Fact]
    public void The_dense_arm_is_distilled_only_when_asked_and_then_trains_differently()
    {
        var dense = MoceFixture.Moe with { Method = MoeMethod.Dense };
        using var plain = fx.Trainer(dense, Tiny.Train(steps: 3));
        using var distilled = fx.Trainer(dense with { DistillDense = true }, Tiny.Train(steps: 3));
        Assert.Null(plain.Teacher);
        Assert.NotNull(distilled.Teacher);
        for (int i = 0; i < 3; i++) { plain.TrainStep(); distilled.TrainStep(); }   // step 0: student = teacher, no pull yet
        var a = plain.Model.state_dict();
        var b = distilled.Model.state_dict();
        Assert.Contains(a.Keys, k => !a[k].equal(b[k]).all().item<bool>());
    }

    /// <summary>fold-gate-weight = routed: the weight of the task's images that the gate sends to e*, the mean of g(c)_e* over
    /// their clusters weighted by h, not the gate mass over every cluster of the task (expected), which counts the clusters
    /// that go elsewhere at their (small) weight for e*.</summary>
    [Fact]
    public void The_routed_fold_is_the_gate_weight_of_the_clusters_routed_to_the_chosen_expert()
    {
        using var t = fx.Trainer(MoceFixture.Moe with { Layers = [0, 1] }, Tiny.Train(steps: 3));
        for (int i = 0; i < 3; i++) t.TrainStep();
        var h = Customizer.Histogram([0, 0, 1, 2, 3, 3, 3], MoceFixture.Clusters);        // every cluster: some go elsewhere
        var routed = Customizer.Choose(t.Model, h, GateFold.Routed);
        var expected = Customizer.Choose(t.Model, h, GateFold.Expected);
        bool spans = false;
        foreach (var c in routed)
        {
            using var g = t.Model.MoeLayers[c.Block].ClusterGate();
            var rows = Enumerable.Range(0, MoceFixture.Clusters).Select(k => g[k].to_type(ScalarType.Float64).data<double>().ToArray()).ToList();
            var to = Enumerable.Range(0, rows.Count).Where(k => h[k] > 0 && Array.IndexOf(rows[k], rows[k].Max()) == c.Expert).ToList();
            Assert.NotEmpty(to);                                                  // e* is the top expert of one of the task's clusters here
            double want = to.Sum(k => h[k] * rows[k][c.Expert]) / to.Sum(k => h[k]);
            Assert.Equal(want, c.Weight, 12);
            var e = expected.Single(x => x.Block == c.Block);
            Assert.Equal(c.Expert, e.Expert);                                    // the same choice; only the weight differs
            spans |= to.Count < h.Count(x => x > 0);
            if (to.Count < h.Count(x => x > 0)) Assert.NotEqual(e.Weight, c.Weight);
        }
        Assert.True(spans, "no layer's task clusters span experts: the test would not tell routed from expected");
    }

    [Fact]
    public void Moce_resume_after_k_steps_is_bit_exact()
    {
        const int k = 4;
        var cfg = Tiny.Train(steps: 2 * k) with { CheckpointEvery = k };
        using var straight = fx.Trainer(MoceFixture.Moe, cfg);
        var losses = Enumerable.Range(0, 2 * k).Select(_ => straight.TrainStep().Loss).ToList();
        Assert.NotEmpty(straight.LastRouting);

        var runDir = Tiny.TempDir();
        var quiet = new LoggerConfiguration().CreateLogger();
        using (var first = fx.Trainer(MoceFixture.Moe, cfg))
            new TrainingLoop(first, cfg, runDir, quiet).Run(stopAt: k);
        using var resumed = fx.Trainer(MoceFixture.Moe, cfg);
        Assert.Equal(k, new TrainingLoop(resumed, cfg, runDir, quiet).Resume());
        var rest = Enumerable.Range(0, k).Select(_ => resumed.TrainStep().Loss).ToList();

        Assert.Equal(losses.Skip(k), rest);
        var a = straight.Model.state_dict();
        foreach (var (name, w) in resumed.Model.state_dict())
            Assert.True(w.bytes.SequenceEqual(a[name].bytes), name);
        var sa = straight.Optimizer.StateTensors().ToDictionary(s => s.name, s => s.tensor);
        foreach (var (name, w) in resumed.Optimizer.StateTensors())
            Assert.True(w.bytes.SequenceEqual(sa[name].bytes), name);
        // experts.csv has one row per (step, block, expert)
        var rows = File.ReadAllLines(Path.Combine(runDir, "experts.csv"));
        Assert.Equal(1 + k * MoceFixture.Moe.Experts, rows.Length);
    }

    /// <summary>The reference engine's half of the restore property (the actor engine's is SparseRestoreTests): six
    /// experts over four clusters, top-1, so experts regularly get no rows. Each of 20 schedules (seeded; more with
    /// MOCE_RESTORE_SCHEDULES) stops the run one to three times, each time in a fresh trainer resumed from the commit,
    /// and must end with every step's loss, the weights and the optimizer state bit-equal to the run that never
    /// stopped; after each resume some expert had no rows before the next commit.</summary>
    [Fact]
    public void Moce_resumed_at_seeded_stops_under_sparse_routing_equals_the_run_that_never_stopped()
    {
        const int steps = 24;
        var moe = MoceFixture.Moe with { Experts = 6, Layers = [0, 1] };
        var cfg = Tiny.Train(steps: steps) with { CheckpointEvery = 6 };
        var quiet = new LoggerConfiguration().CreateLogger();
        using var straight = fx.Trainer(moe, cfg);
        var losses = new List<double>();
        var idle = new List<bool>();                                    // some (block, expert) without rows in step s
        for (int s = 0; s < steps; s++)
        {
            losses.Add(straight.TrainStep().Loss);
            idle.Add(straight.LastRouting.Any(r => r.Tokens == 0));
        }
        var weights = straight.Model.state_dict();
        var moments = straight.Optimizer.StateTensors().ToDictionary(s => s.name, s => s.tensor);

        int schedules = int.TryParse(Environment.GetEnvironmentVariable("MOCE_RESTORE_SCHEDULES"), out var n) && n > 0 ? n : 20;
        for (int seed = 1; seed <= schedules; seed++)
        {
            var rng = new Random(seed);
            var stops = Enumerable.Range(0, 1 + rng.Next(3)).Select(_ => 1L + rng.Next(steps - 1)).Distinct().Order().ToList();
            var runDir = Tiny.TempDir();
            foreach (var stop in stops.Append(steps))
            {
                using var t = fx.Trainer(moe, cfg);
                var loop = new TrainingLoop(t, cfg, runDir, quiet);
                long from = loop.Resume();
                Assert.True(Enumerable.Range((int)from, (int)Math.Min(cfg.CheckpointEvery, steps - from)).Any(s => idle[s]),
                    $"seed {seed}: after the resume at {from} every expert had rows until the next commit");
                new TrainingLoop(t, cfg, runDir, quiet).Run(stopAt: stop);
                if (stop < steps) continue;
                var got = File.ReadLines(Path.Combine(runDir, "metrics.csv")).Skip(1).Select(l => double.Parse(l.Split(',')[1], System.Globalization.CultureInfo.InvariantCulture)).ToList();
                Assert.Equal(losses, got);
                foreach (var (name, w) in t.Model.state_dict()) Assert.True(w.bytes.SequenceEqual(weights[name].bytes), $"seed {seed} (stops {string.Join(",", stops)}): {name}");
                foreach (var (name, m) in t.Optimizer.StateTensors()) Assert.True(m.bytes.SequenceEqual(moments[name].bytes), $"seed {seed}: {name}");
            }
        }
    }

    [Fact]
    public void Training_moce_lowers_the_loss_and_uses_the_experts()
    {
        var cfg = Tiny.Train(steps: 30) with { BaseLr = 0.08 };
        using var t = fx.Trainer(MoceFixture.Moe, cfg);
        var losses = Enumerable.Range(0, 30).Select(_ => t.TrainStep().Loss).ToList();
        Assert.True(losses.TakeLast(5).Average() < losses.Take(5).Average());
        Assert.Equal(1.0, t.LastRouting.Sum(r => r.LossShare), 6);
        Assert.Equal(16L * 5, t.LastRouting.Sum(r => r.Tokens)); // batch 16 × (1 cls + 4 visible) tokens
    }

    [Fact]
    public void Missing_or_mismatched_clustering_is_a_clear_error()
    {
        var missing = Assert.Throws<RunMismatchException>(() => ClusteringResult.Load(Tiny.TempDir()));
        Assert.Contains("run `moce cluster`", missing.Message);

        var dir = Tiny.TempDir();
        fx.Clustering.Save(dir);
        using var loaded = ClusteringResult.Load(dir);
        Assert.Equal(fx.Clustering.TrainIds, loaded.TrainIds);

        using var dense = fx.Dense();
        var wrongRun = Assert.Throws<RunMismatchException>(() =>
            new MoceTrainer(Tiny.Model, MoceFixture.Moe, Tiny.Train(), fx.Data, loaded, dense, new string('a', 64)));
        Assert.Contains("re-run `moce cluster`", wrongRun.Message);

        using var wide = new ClusteringResult { Centroids = zeros(4, 48), TrainIds = loaded.TrainIds, DenseSha256 = fx.DenseRef.Sha256, DataSource = "x" };
        Assert.Contains("48-dimensional", Assert.Throws<RunMismatchException>(() => wide.Check(fx.DenseRef.Sha256, 32, 1000)).Message);
        using var few = new ClusteringResult { Centroids = zeros(4, 32), TrainIds = new long[10], DenseSha256 = fx.DenseRef.Sha256, DataSource = "x" };
        Assert.Contains("assigns 10 training images", Assert.Throws<RunMismatchException>(() => few.Check(fx.DenseRef.Sha256, 32, 1000)).Message);

        File.AppendAllText(Directory.GetFiles(dir, "*.ckpt")[0], "x");
        Assert.Throws<CheckpointCorruptException>(() => ClusteringResult.Load(dir));
    }
}
