using System.Diagnostics;

namespace MoCE.Tests;

/// <summary>PostgreSQL for the tests that need one (the shared journal of a cluster): $MOCE_POSTGRES, which
/// build/test.sh sets; else the server that build/postgres.sh installs if missing (root or sudo), starts and prints,
/// exported to this process and so to every node it starts; else an error that says what is missing and how to get
/// it, at once rather than as a node's timeout.</summary>
public static class TestPostgres
{
    private const string Variable = MoCE.Actors.ActorEngine.PostgresVariable;
    private static readonly Lazy<string> connectionString = new(Find, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>The connection string; $MOCE_POSTGRES is set once this returns.</summary>
    public static string ConnectionString => connectionString.Value;

    private static string Find()
    {
        var set = Environment.GetEnvironmentVariable(Variable);
        if (!string.IsNullOrWhiteSpace(set)) return set;
        var script = Path.Combine(RepositoryRoot(), "build", "postgres.sh");
        var psi = new ProcessStartInfo("bash", [script]) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.Environment["MOCE_PG_DB"] = "moce_test";
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("could not start bash");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(10))) { p.Kill(entireProcessTree: true); }
        p.WaitForExit();
        var cs = stdout.Result.Trim();
        if (p.ExitCode != 0 || cs.Length == 0)
            throw new InvalidOperationException(
                $"This test needs PostgreSQL and ${Variable} is not set. Starting one with build/postgres.sh failed (exit {p.ExitCode}):\n" +
                $"{stderr.Result.Trim()}\n" +
                $"Run the tests with `bash build/test.sh`, which starts PostgreSQL, or first run (as root or with sudo) " +
                $"`export {Variable}=$(MOCE_PG_DB=moce_test bash build/postgres.sh)`.");
        Environment.SetEnvironmentVariable(Variable, cs);
        return cs;
    }

    private static string RepositoryRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "MoCE.Actors.sln"))) return d.FullName;
        throw new InvalidOperationException($"This test needs PostgreSQL and ${Variable} is not set; build/postgres.sh, which " +
                                            $"starts one, was not found above {AppContext.BaseDirectory}. Set ${Variable} to a connection string.");
    }
}
