using MoCE.Core.Config;
using Serilog;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace MoCE.Core.Checkpoints;

/// <summary>Weights in the formats other tools read and write (TorchSharp.PyBridge): safetensors, which any safetensors
/// reader opens without PyTorch or pickle, and PyTorch's .pt.</summary>
public static class WeightFiles
{
    /// <summary>Writes <paramref name="weights"/> as a .safetensors file.</summary>
    public static void SaveSafetensors(string path, IReadOnlyDictionary<string, Tensor> weights)
    {
        using var scope = NewDisposeScope();
        Safetensors.SaveStateDict(path, weights.ToDictionary(kv => kv.Key, kv => kv.Value.detach().cpu().contiguous()));
    }

    /// <summary>Reads a .safetensors or .pt/.pth file: name → CPU tensor, owned by the caller.</summary>
    public static Dictionary<string, Tensor> Load(string path, string key)
    {
        if (!File.Exists(path)) throw new ConfigException(key, $"no such file: {path}");
        try
        {
            return Path.GetExtension(path).ToLowerInvariant() switch
            {
                ".safetensors" => Safetensors.LoadStateDict(path),
                ".pt" or ".pth" or ".bin" => PyTorchUnpickler(path),
                var ext => throw new ConfigException(key, $"{path}: expected a .safetensors, .pt or .pth file, not '{ext}'"),
            };
        }
        catch (Exception e) when (e is not ConfigException) { throw new ConfigException(key, $"{path}: not a readable weights file ({e.Message})"); }
    }

    /// <summary>A PyTorch state_dict file (torch.save of name → tensor); anything else in it is an error.</summary>
    private static Dictionary<string, Tensor> PyTorchUnpickler(string path)
    {
        var dict = new Dictionary<string, Tensor>();
        foreach (System.Collections.DictionaryEntry e in TorchSharp.PyBridge.PyTorchUnpickler.UnpickleStateDict(path))
            dict[(string)e.Key] = e.Value as Tensor ?? throw new InvalidDataException($"'{e.Key}' is not a tensor");
        return dict;
    }

    /// <summary>Copies every tensor of <paramref name="path"/> into the parameter or buffer of <paramref name="model"/> of
    /// the same name; what the file lacks keeps its value. A name the model lacks, or another shape, is an error naming
    /// <paramref name="key"/>, before anything is copied.</summary>
    public static void Import(nn.Module model, string path, string key)
    {
        var file = Load(path, key);
        try
        {
            var own = model.state_dict();
            var unknown = file.Keys.Where(k => !own.ContainsKey(k)).ToList();
            if (unknown.Count > 0) throw new ConfigException(key, $"{path}: {unknown.Count} tensors the model lacks, e.g. '{unknown[0]}'");
            foreach (var (name, t) in file)
                if (!t.shape.SequenceEqual(own[name].shape))
                    throw new ConfigException(key, $"{path}: '{name}' is [{string.Join(", ", t.shape)}], the model's is [{string.Join(", ", own[name].shape)}]");
            using (no_grad())
                foreach (var (name, t) in file) own[name].copy_(t);
            Log.Information("Initial weights from {Path}: {Loaded} of {Total} tensors (the rest seeded)", path, file.Count, own.Count);
        }
        finally { foreach (var t in file.Values) t.Dispose(); }
    }
}
