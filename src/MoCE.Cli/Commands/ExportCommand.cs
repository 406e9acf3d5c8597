using System.Text.Json;
using MoCE.Core.Config;
using MoCE.Core.Data;
using MoCE.Core.Model;
using Serilog;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace MoCE.Cli.Commands;

/// <summary><c>moce export [--model pretrained|dense|moce-customized] [--task NAME] [--out DIR]</c>: a dense encoder in
/// PyTorch's format (torch.load, by TorchSharp.PyBridge) under the reference MAE's and timm's ViT names
/// (<c>patch_embed.proj.weight</c>, <c>blocks.N.attn.qkv.weight</c>, …; the decoder is left out), with config.json:
/// the timm VisionTransformer that loads it, the input normalisation, and where it came from. With
/// <c>--check-images N</c> it also writes N normalised test images and this encoder's features of them, so a PyTorch
/// user can check the load (features = the mean of the patch tokens after the final norm, timm's global_pool="avg").</summary>
public static class ExportCommand
{
    public sealed record ExportConfig(string Architecture, int ImgSize, int PatchSize, int InChans, int EmbedDim, int Depth, int NumHeads, double MlpRatio,
        bool QkvBias, bool ClassToken, string GlobalPool, double NormEps, string Timm, string Dataset, IReadOnlyList<double> Mean, IReadOnlyList<double> Std,
        string Model, string? Task, string Run, string Sha256, int CheckImages, string SafetensorsSha256 = "");

    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept("model", "task", "out", "check-images");
        var s = Session.Open(cli.Request);
        var model = cli.Flags.GetValueOrDefault("model", "moce-customized");
        if (model is not ("pretrained" or "dense" or "moce-customized"))
            throw new ConfigException("--model", $"expected pretrained, dense or moce-customized (a dense encoder), got '{model}'");
        var task = cli.Flags.GetValueOrDefault("task");
        if (model == "moce-customized" && task is null)
            throw new ConfigException("--task", $"a moce-customized model is made for a task: --task NAME (defined: {string.Join(", ", s.Config.Tasks.Keys)})");
        int check = cli.Flags.TryGetValue("check-images", out var c) ? (int.TryParse(c, out var n) && n >= 0 ? n : throw new ConfigException("--check-images", $"expected a count ≥ 0, got '{c}'")) : 0;
        var outDir = cli.Flags.GetValueOrDefault("out") ?? Path.Combine(s.Run.Root, "export", model + (task is null ? "" : "-" + task));
        Execute(s, model, task, outDir, check);
        return 0;
    }

    public static void Execute(Session s, string modelName, string? taskName, string outDir, int checkImages)
    {
        using var data = new TaskData(s, taskName is null ? [] : [taskName]);
        using var models = new EvalPhase.ModelSet(s, data);
        var ti = taskName is null ? null : data.Tasks[taskName];
        string key;
        MaskedAutoencoder model;
        switch (modelName)
        {
            case "pretrained": key = models.DenseKey; model = models.DenseModel(); break;
            case "dense":
                (key, var load, _) = models.Get("dense", ti ?? new TaskImages(new TaskConfig("-", [0, 1]), [], [], [], []));
                model = load();
                break;
            default:
                (key, var loadCustomized, _) = models.Get("moce-customized", ti!);
                model = loadCustomized();
                break;
        }
        Directory.CreateDirectory(outDir);
        var path = Path.Combine(outDir, "encoder.pt");
        var decoder = model.state_dict().Keys.Where(k => k.StartsWith("decoder_", StringComparison.Ordinal) || k == "mask_token").ToList();
        model.save_py(path, skip: decoder);
        var safetensors = Path.Combine(outDir, "encoder.safetensors");                 // the same tensors, for any safetensors reader
        MoCE.Core.Checkpoints.WeightFiles.SaveSafetensors(safetensors, model.state_dict().Where(kv => !decoder.Contains(kv.Key)).ToDictionary());

        var m = s.Config.Model;
        var dataset = ti?.Task.Dataset ?? s.Config.Data.Mix.Where(kv => kv.Value > 0).Select(kv => kv.Key).Order(StringComparer.Ordinal).First();
        var spec = s.Data.Resolved(dataset);
        var timm = FormattableString.Invariant($"timm.models.vision_transformer.VisionTransformer(img_size={m.ImageSize}, patch_size={m.PatchSize}, in_chans={m.InChans}, embed_dim={m.Dim}, depth={m.Depth}, num_heads={m.Heads}, mlp_ratio={m.MlpRatio}, qkv_bias=True, class_token=True, global_pool='avg', fc_norm=False, num_classes=0, norm_layer=functools.partial(torch.nn.LayerNorm, eps=1e-6))");
        var cfg = new ExportConfig("vit", m.ImageSize, m.PatchSize, m.InChans, m.Dim, m.Depth, m.Heads, m.MlpRatio, true, true, "avg", 1e-6, timm,
            dataset, spec.Norm.For(m.InChans, spec.Key).Mean, spec.Norm.For(m.InChans, spec.Key).Std, modelName, taskName, s.Run.Root, Core.Data.Datasets.Sha256(path), checkImages, Core.Data.Datasets.Sha256(safetensors));

        if (checkImages > 0)
        {
            using var test = s.Data.Load(dataset, Split.Test);
            var idx = Enumerable.Range(0, Math.Min(checkImages, test.Count)).ToArray();
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var imgs = test.Batch(idx);
            var feats = model.ForwardFeatures(imgs.to(s.Device)).cpu();
            WriteF32(Path.Combine(outDir, "check-images.f32"), imgs);
            WriteF32(Path.Combine(outDir, "check-features.f32"), feats);
            cfg = cfg with { CheckImages = idx.Length };
        }
        File.WriteAllText(Path.Combine(outDir, "config.json"), JsonSerializer.Serialize(cfg, new JsonSerializerOptions
            { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower }));
        Log.Information("Exported {Model}{Task} ({Key}) to {Path}: {Tensors} tensors with timm ViT names, config.json{Check}",
            modelName, taskName is null ? "" : $" for task {taskName}", key, path, model.state_dict().Count - decoder.Count,
            checkImages > 0 ? $", {cfg.CheckImages} check images and their features" : "");
    }

    /// <summary>Raw little-endian float32, row-major (numpy.fromfile(f, '&lt;f4')).</summary>
    private static void WriteF32(string path, Tensor t)
    {
        var v = t.contiguous().to_type(ScalarType.Float32).data<float>().ToArray();
        var bytes = new byte[v.Length * 4];
        Buffer.BlockCopy(v, 0, bytes, 0, bytes.Length);
        File.WriteAllBytes(path, bytes);
    }
}
