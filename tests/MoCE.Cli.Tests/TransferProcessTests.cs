using System.Text.RegularExpressions;
using System.Diagnostics;
using System.Text.Json;
using static MoCE.Cli.Tests.PretrainProcessTests;

namespace MoCE.Cli.Tests;

/// <summary>The transfer study's parts through the real `moce` binary on the committed Fashion-MNIST and MNIST
/// samples: a mixed pre-training, tasks on both datasets, the study with two seeds and the negative-transfer
/// baselines, eval's cache, the export to PyTorch, and bad input.</summary>
public class TransferProcessTests
{
    private static readonly string[] Study =
    [
        .. Baby.Model,
        "-o", "data.mix.mnist=1.0", "-o", "pretrain.steps=20", "-o", "train.steps=8", "-o", "pretrain.batch-size=32", "-o", "train.batch-size=32",
        "-o", "pretrain.log-every=10", "-o", "train.log-every=4", "-o", "eval.test-images=200", "-o", "eval.probe-epochs=3",
        "-o", "tasks.digits.dataset=mnist", "-o", "tasks.digits.classes=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]", "-o", "tasks.digits.shots=10",
        "-o", "tasks.shoes.classes=[5, 7, 9]", "-o", "tasks.shoes.shots=20",
        "-o", "eval.tasks=[digits, shoes]", "-o", "moe.gate-init=centroids", "-o", "moe.gate-dim=32", "-o", "moe.temperature=0.05",
    ];

    private static string NewRun() => Path.Combine(Path.GetTempPath(), "moce-tests", Guid.NewGuid().ToString("N"));

    [Fact]
    public void The_study_measures_every_part_and_a_rerun_does_no_work_twice()
    {
        var run = NewRun();
        string[] finetune = ["-o", "pipeline.finetune=true", "-o", "finetune.epochs=2", "-o", "finetune.warmup-epochs=1"];
        var (code, output) = Moce(["pipeline", "--run", run, .. Study, "-o", "pipeline.seeds=[0, 1]", "-o", "pipeline.transfer-baselines=true", .. finetune]);
        Assert.True(code == 0, output);

        // the mix: 3000 Fashion-MNIST + 2000 MNIST sample images, clustered together
        Assert.Contains("fashion-mnist×3000 + mnist×2000 = 5000 images", output);
        var cluster = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, "cluster", "report.json"))).RootElement;
        Assert.Equal(5000, cluster.GetProperty("images").GetInt32());
        // each source alone, pre-trained for the same steps
        foreach (var src in new[] { "fashion-mnist", "mnist" })
            Assert.Equal(21, File.ReadAllLines(Path.Combine(run, $"alone-{src}", "pretrain", "metrics.csv")).Length);
        // seed 1 trains from this run's pre-training, in its own directory
        Assert.Equal(9, File.ReadAllLines(Path.Combine(run, "seed-1", "train-moce", "metrics.csv")).Length);
        Assert.False(Directory.Exists(Path.Combine(run, "seed-1", "pretrain")));
        Assert.NotEqual(File.ReadAllText(Path.Combine(run, "train-moce", "metrics.csv")), File.ReadAllText(Path.Combine(run, "seed-1", "train-moce", "metrics.csv")));

        // few-shot: 10 digits per class, 20 shoes per class
        var rows = File.ReadAllLines(Path.Combine(run, "eval", "results.csv")).Skip(1).Select(l => l.Split(',')).ToList();
        Assert.Equal(8, rows.Count);                                                // 2 tasks × 4 models
        Assert.All(rows.Where(r => r[0] == "digits"), r => Assert.Equal("100", r[2]));
        Assert.All(rows.Where(r => r[0] == "shoes"), r => Assert.Equal("60", r[2]));

        var report = File.ReadAllText(Path.Combine(run, "study", "report.md"));
        Assert.Contains("| mix (fashion-mnist + mnist) |", report);
        Assert.Contains("| mnist alone |", report);
        // the equal-epoch baselines: 20 steps × 3000/5000 of the mix for the clothes, × 2000/5000 for the digits
        Assert.Equal(13, File.ReadAllLines(Path.Combine(run, "alone-fashion-mnist-epochs", "pretrain", "metrics.csv")).Length);
        Assert.Equal(9, File.ReadAllLines(Path.Combine(run, "alone-mnist-epochs", "pretrain", "metrics.csv")).Length);
        Assert.Contains("| mnist alone, the mix's epochs |", report);
        Assert.Contains("| Δ at equal epochs (mix − own domain alone, the mix's epochs): interference |", report);
        Assert.Contains("| at most repairable by experts: max(0, −Δ at equal epochs) |", report);
        // each seed drew its own task images: the pretrained dense features (for the cluster ids) were extracted for two sets
        var sets = Directory.GetFiles(Path.Combine(run, "eval", "features"), "*.bin").Select(Path.GetFileNameWithoutExtension)
            .GroupBy(f => f![..f!.LastIndexOf('-')]).ToList();
        Assert.Contains(sets, g => g.Count() == 2);
        Assert.Contains("| *MoCE-customized − dense MAE* |", report);
        Assert.Contains(" ± ", report);
        // fine-tuning, each seed: the dense MAE and MoCE-customized on both tasks, and their paired difference
        Assert.Contains("## Fine-tuning (2 seeds: mean ± std)", report);
        Assert.Equal(2, Regex.Matches(report, @"\| \*MoCE-customized − dense MAE\* \|").Count);     // fine-tuning and frozen features
        foreach (var r in new[] { run, Path.Combine(run, "seed-1") })
            Assert.Equal(4, File.ReadAllLines(Path.Combine(r, "eval", "finetune.csv")).Length - 1);
        Assert.Contains("block 1 gate mass", report);
        Assert.Contains("| token-moe | 1 |", report);
        Assert.Contains("cluster → expert", report);
        var study = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, "study", "study.json"))).RootElement;
        foreach (var g in study.GetProperty("gate_mass").EnumerateArray())
            Assert.InRange(g.GetProperty("mass").GetProperty("Mean").GetDouble(), 0.0, 1.0);
        foreach (var sp in study.GetProperty("specialisation").EnumerateArray())
            Assert.InRange(sp.GetProperty("NmiSource").GetDouble(), 0.0, 1.0);

        // a rerun trains nothing, customizes nothing and extracts no features: everything is found done
        (code, output) = Moce(["pipeline", "--run", run, .. Study, "-o", "pipeline.seeds=[0, 1]", "-o", "pipeline.transfer-baselines=true", .. finetune]);
        Assert.True(code == 0, output);
        Assert.DoesNotContain("Customized ", output);
        Assert.DoesNotContain(" steps (last epoch's loss", output);                      // no fine-tuning redone
        Assert.DoesNotContain(" images in ", output);                                   // "features KEY on D/S: N images in T s"
        Assert.Contains("(done before; same weights and settings)", output);

        // moce eval on one model and task after a change of the probe: features come from the cache, the row is redone
        (code, output) = Moce(["eval", "--run", run, "--models", "moce", "--tasks", "shoes", .. Study, "-o", "pipeline.seeds=[0, 1]", "-o", "pipeline.transfer-baselines=true", "-o", "eval.probe-epochs=4"]);
        Assert.True(code == 0, output);
        Assert.Contains("from the cache", output);
        Assert.DoesNotContain(" images in ", output);
        Assert.Single(File.ReadAllLines(Path.Combine(run, "eval", "results.csv")).Skip(1));

        // ablations in one command: the reference arm is the pipeline's own seeds (nothing retrained), an arm of the MoE
        // phase trains from this run's pre-training, an arm that starts MoCE earlier pre-trains and clusters its own, and an
        // arm that changes only the experts (a universal expert) keeps the reference's dense MAE
        string[] arms = ["-o", "ablate.seeds=[0, 1]", "-o", "ablate.arms.distill=[\"moe.lambda-distill=0.5\"]", "-o", "ablate.arms.early=[\"pretrain.steps=10\"]",
                         "-o", "ablate.arms.shared=[\"moe.shared-fraction=0.5\"]"];
        (code, output) = Moce(["ablate", "--run", run, .. Study, "-o", "pipeline.seeds=[0, 1]", "-o", "pipeline.transfer-baselines=true", .. finetune, .. arms]);
        Assert.True(code == 0, output);
        // the reference arm: 2 seeds × 2 methods found done; the shared arm: the reference's dense MAE of 2 seeds again
        Assert.Equal(6, Regex.Matches(output, @"Resumed from committed checkpoint 8\b").Count);
        Assert.Equal(2, Regex.Matches(output, @"== shared seed \d: train-dense \(the reference's\) ==").Count);
        Assert.False(Directory.Exists(Path.Combine(run, "ablate", "shared", "seed-0", "train-dense")));
        Assert.Equal(9, File.ReadAllLines(Path.Combine(run, "ablate", "shared", "seed-0", "train-moce", "metrics.csv")).Length);
        Assert.True(Directory.Exists(Path.Combine(run, "ablate", "distill", "seed-0", "train-dense")));   // distillation reaches the dense arm's settings
        Assert.False(Directory.Exists(Path.Combine(run, "ablate", "reference")));
        Assert.False(Directory.Exists(Path.Combine(run, "ablate", "distill", "pretrain")));
        Assert.Equal(11, File.ReadAllLines(Path.Combine(run, "ablate", "early", "pretrain", "metrics.csv")).Length);
        Assert.Equal(9, File.ReadAllLines(Path.Combine(run, "ablate", "distill", "seed-1", "train-moce", "metrics.csv")).Length);
        var ablations = File.ReadAllText(Path.Combine(run, "ablate", "report.md"));
        Assert.Matches(@"\| reference \| – \| [+−]\d", ablations);
        Assert.Contains("| distill | `moe.lambda-distill=0.5` |", ablations);
        Assert.Contains("| early | `pretrain.steps=10` |", ablations);
        Assert.Matches(@"\| shared \| `moe.shared-fraction=0.5` \| [+−]\d", ablations);
        Assert.Contains("digits finetune | digits linear | digits knn", ablations);
        var distilled = JsonDocument.Parse(File.ReadAllText(Path.Combine(run, "ablate", "ablate.json"))).RootElement.EnumerateArray()
            .First(a => a.GetProperty("Arm").GetString() == "distill" && a.GetProperty("Measure").GetString() == "linear");
        Assert.Equal(2, distilled.GetProperty("PerSeed").GetArrayLength());       // paired per seed
    }

    [Fact]
    public async Task An_exported_customized_encoder_loads_in_pytorch_and_gives_the_same_features()
    {
        const string python = "/usr/bin/python3";
        Assert.True(File.Exists(python), "Debian's python3 is missing: run build/python-torch.sh (build/test.sh does)");
        var run = NewRun();
        foreach (var step in new[] { new[] { "pretrain" }, ["cluster"], ["train", "--method", "moce"] })
        {
            var (c, o) = Moce([.. step, "--run", run, .. Study]);
            Assert.True(c == 0, o);
        }
        var outDir = Path.Combine(run, "export");
        var (code, output) = Moce(["export", "--run", run, "--model", "moce-customized", "--task", "digits", "--out", outDir, "--check-images", "64", .. Study]);
        Assert.True(code == 0, output);
        var cfg = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, "config.json"))).RootElement;
        Assert.Equal("mnist", cfg.GetProperty("dataset").GetString());
        Assert.Equal(64, cfg.GetProperty("check_images").GetInt32());

        var psi = new ProcessStartInfo(python, [Path.Combine(AppContext.BaseDirectory, "python", "vit_reference.py"), outDir, "1e-5"])
            { RedirectStandardOutput = true, RedirectStandardError = true };
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(ProcessTimeout);
        await p.WaitForExitAsync(timeout.Token);                                     // a hang fails the test with a timeout
        var said = await stdout + await stderr;
        Assert.True(p.ExitCode == 0, $"PyTorch's features differ from moce's, or the load failed:\n{said}");
        Assert.Contains("tensors loaded strictly", said);
        Assert.Contains("tensors, equal to encoder.pt", said);
        var diff = double.Parse(System.Text.RegularExpressions.Regex.Match(said, @"max \|feature diff\| = (\S+)").Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(diff, 0, 1e-5);
    }

    [Fact]
    public void Bad_datasets_and_tasks_are_clear_errors_that_name_the_key_or_file()
    {
        var run = NewRun();
        var (code, output) = Moce(["pretrain", "--run", run, .. Baby.Model, "-o", "tasks.x.dataset=cifar", "-o", "tasks.x.classes=[0, 1]"]);
        Assert.Equal(2, code);
        Assert.Contains("config key 'moce.tasks.x.dataset': no dataset 'cifar' under moce.datasets", output);

        (code, output) = Moce(["pretrain", "--run", NewRun(), .. Baby.Model, "-o", "tasks.x.dataset=mnist", "-o", "tasks.x.classes=[3, 10]"]);
        Assert.Equal(2, code);
        Assert.Contains("config key 'moce.tasks.x.classes': class 10 is not a class of dataset 'mnist'", output);

        (code, output) = Moce(["pretrain", "--run", NewRun(), .. Baby.Model, "-o", "data.mix.svhn=1"]);
        Assert.Equal(2, code);
        Assert.Contains("config key 'moce.data.mix.svhn': no dataset 'svhn'", output);

        // a dataset whose images are not the model's size
        (code, output) = Moce(["pretrain", "--run", NewRun(), .. Baby.Model, "-o", "model.image-size=21"]);
        Assert.Equal(2, code);
        Assert.Contains("dataset 'fashion-mnist' has 28×28 images but moce.model.image-size is 21", output);

        // a converted dataset with a flipped byte, and one cut short: SHA256SUMS finds both before any training
        var dir = Path.Combine(NewRun(), "mnist");
        Directory.CreateDirectory(dir);
        foreach (var f in Directory.GetFiles(MoCE.Core.Data.Datasets.SampleDir("mnist-sample")))
            File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var sums = Directory.GetFiles(dir, "*.gz").Select(f => $"{MoCE.Core.Data.Datasets.Sha256(f)}  {Path.GetFileName(f)}").ToList();
        File.WriteAllLines(Path.Combine(dir, "SHA256SUMS"), sums);
        var images = Path.Combine(dir, "train-images-idx3-ubyte.gz");
        var bytes = File.ReadAllBytes(images);
        bytes[bytes.Length / 2] ^= 0x10;
        File.WriteAllBytes(images, bytes);
        string[] mnistOnly = [.. Baby.Model, "-o", $"datasets.mnist.path={dir}", "-o", "data.mix.fashion-mnist=0", "-o", "data.mix.mnist=1"];
        (code, output) = Moce(["pretrain", "--run", NewRun(), .. mnistOnly]);
        Assert.Equal(2, code);
        Assert.Contains($"{images}: corrupt or truncated", output);
        File.WriteAllBytes(images, bytes[..(bytes.Length / 3)]);
        (code, output) = Moce(["pretrain", "--run", NewRun(), .. mnistOnly]);
        Assert.Equal(2, code);
        Assert.Contains($"{images}: corrupt or truncated", output);
    }
}
