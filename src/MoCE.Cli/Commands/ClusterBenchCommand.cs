using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using MoCE.Actors.Wire;
using MoCE.Runs.Configuration;
using MoCE.Core.Config;
using Serilog;

namespace MoCE.Cli.Commands;

/// <summary><c>moce bench-cluster</c>: the actor engine in one process against the same run on three local processes
/// (a coordinator and two expert nodes, over TCP on 127.0.0.1, journal in PostgreSQL), on the bench configuration, in
/// alternating rounds. Every run is a real `moce` child process; step times come from each run's metrics.csv (wall
/// clock per step, the first --warmup steps and the processes' start not counted). Also the data plane's bytes per
/// step on the coordinator's wire against the minimum the protocol needs: each MoE block's activations to and from
/// the experts and their gradients back, N·(1 + L_vis)·D fp32 values each way, twice.</summary>
public static class ClusterBenchCommand
{
    public static int Run(CliArgs cli)
    {
        cli.RejectFlagsExcept("warmup", "steps", "rounds");
        int warmup = cli.FlagInt("warmup", 20), steps = cli.FlagInt("steps", 80), rounds = cli.FlagInt("rounds", 2);
        if (string.IsNullOrEmpty(Environment.GetEnvironmentVariable(MoCE.Actors.ActorEngine.PostgresVariable)))
            throw new ConfigException("$" + MoCE.Actors.ActorEngine.PostgresVariable, "is not set: the expert nodes share the journal in PostgreSQL (bash build/postgres.sh prints a connection string)");
        var preset = cli.Preset ?? "bench";
        var merged = ConfigLoader.Merge(new ConfigLoader.Sources(preset, cli.Files, cli.Overrides));
        var (cfg, _) = ConfigLoader.Resolve(merged);
        string[] common = ChildArgs(cli, preset, "-o", $"train.steps={warmup + steps}", "-o", $"train.checkpoint-every={warmup + steps}", "-o", $"train.log-every={warmup + steps}");
        var root = Path.Combine(Path.GetTempPath(), $"moce-bench-cluster-{Guid.NewGuid():N}");
        var pg = Path.Combine(AppContext.BaseDirectory, "hocon", "persistence-postgres.conf");
        Directory.CreateDirectory(root);
        try
        {
            var baseRun = BaseRun(root, common, "bench-cluster");
            var one = new List<double>();
            var three = new List<double>();
            double bytesPerStep = 0;
            for (int r = 0; r < rounds; r++)
            {
                var single = NewRun(baseRun, Path.Combine(root, $"one-{r}"));
                Moce(root, $"one-{r}", ["train", "--engine", "actors", "--run", single, .. common]);
                one.Add(StepMs(single, warmup));

                var cluster = NewRun(baseRun, Path.Combine(root, $"three-{r}"));
                int seed = MoCE.Actors.ClusterNode.FreeLoopbackPort();
                string[] node = ["node", "--seeds", $"127.0.0.1:{seed}", "--min-expert-nodes", "2", "--config", pg, "--insecure", .. common];   // loopback only
                using (var x1 = new Child(root, $"x1-{r}", [.. node, "--roles", "experts", "--port", MoCE.Actors.ClusterNode.FreeLoopbackPort().ToString()]))
                using (var x2 = new Child(root, $"x2-{r}", [.. node, "--roles", "experts", "--port", MoCE.Actors.ClusterNode.FreeLoopbackPort().ToString()]))
                {
                    Moce(root, $"coordinator-{r}", [.. node, "--roles", "coordinator", "--port", seed.ToString(), "--run", cluster]);
                    x1.Terminate();
                    x2.Terminate();
                }
                three.Add(StepMs(cluster, warmup));
                var traffic = JsonSerializer.Deserialize<Dictionary<string, WireTraffic.Totals>>(File.ReadAllText(Path.Combine(cluster, "train-moce", "wire.json")))!;
                bytesPerStep = traffic.Where(kv => WireTraffic.DataPlane.Contains(kv.Key)).Sum(kv => kv.Value.Sent + kv.Value.Received) / (double)(warmup + steps);
                Log.Information("round {Round}: one process {One:F1} ms/step, three processes {Three:F1} ms/step", r + 1, one[^1], three[^1]);
            }
            var m = cfg.Model;
            long tokens = 1 + (long)(m.ImageSize / m.PatchSize * (m.ImageSize / m.PatchSize) * (1 - m.MaskRatio));
            double minimum = 4.0 * cfg.Moe.Layers.Count * cfg.Train.BatchSize * tokens * m.Dim * sizeof(float);
            Console.WriteLine($"bench configuration ({preset}): batch {cfg.Train.BatchSize}, dim {m.Dim}, {tokens} tokens per image in the encoder, E={cfg.Moe.Experts} top-{cfg.Moe.TopK}, MoE blocks [{string.Join(", ", cfg.Moe.Layers)}], wire {cfg.WireEncoding}");
            Console.WriteLine($"one process (moce train --engine actors): {string.Join(", ", one.Select(x => x.ToString("F1", CultureInfo.InvariantCulture)))} ms/step");
            Console.WriteLine($"three processes (coordinator + 2 expert nodes): {string.Join(", ", three.Select(x => x.ToString("F1", CultureInfo.InvariantCulture)))} ms/step");
            Console.WriteLine($"ratio three-processes / one-process step: {three.Average() / one.Average():F3} (per round: {string.Join(", ", three.Zip(one, (t, o) => (t / o).ToString("F3", CultureInfo.InvariantCulture)))})");
            Console.WriteLine($"data plane on the coordinator's wire: {bytesPerStep / 1e6:F3} MB/step; minimum (activations and gradients of the MoE blocks, fp32): {minimum / 1e6:F3} MB/step; ratio {bytesPerStep / minimum:F4}");
            Console.WriteLine($"({steps} timed steps after {warmup} warm-up steps per run, {rounds} rounds; logs in {root})");
            Directory.Delete(root, recursive: true);
            return 0;
        }
        catch
        {
            Log.Error("bench-cluster failed; the runs' logs stay in {Dir}", root);
            throw;
        }
    }

    /// <summary>Mean wall time per step after the warm-up steps, from a run's metrics.csv.</summary>
    private static double StepMs(string run, int warmup)
    {
        var wall = Wall(run);
        long last = wall.Keys.Max();
        return 1000 * (wall[last] - wall[warmup - 1]) / (last - (warmup - 1));
    }

    /// <summary>The wall clock (s) at the end of each step of a run's MoCE phase, from its metrics.csv.</summary>
    internal static Dictionary<long, double> Wall(string run) =>
        File.ReadAllLines(Path.Combine(run, "train-moce", "metrics.csv")).Skip(1).Select(l => l.Split(','))
            .ToDictionary(c => long.Parse(c[0], CultureInfo.InvariantCulture), c => double.Parse(c[6], CultureInfo.InvariantCulture));

    /// <summary>The arguments every child `moce` gets: the command's preset, --config files and -o overrides, a 20-step
    /// pre-training, then these.</summary>
    internal static string[] ChildArgs(CliArgs cli, string preset, params string[] more) =>
        ["--preset", preset, .. cli.Files.SelectMany(f => new[] { "--config", f }), .. cli.Overrides.SelectMany(o => new[] { "-o", o }), "-o", "pretrain.steps=20", .. more];

    /// <summary>A dense model of 20 steps and its clustering in ROOT/base, which each timed run copies (<see cref="NewRun"/>).</summary>
    internal static string BaseRun(string root, string[] common, string bench)
    {
        var baseRun = Path.Combine(root, "base");
        Log.Information("{Bench}: a dense model of 20 steps and its clustering in {Dir}", bench, baseRun);
        Moce(root, "pretrain", ["pretrain", "--run", baseRun, .. common]);
        Moce(root, "cluster", ["cluster", "--run", baseRun, .. common]);
        return baseRun;
    }

    internal static string NewRun(string baseRun, string to)
    {
        foreach (var d in Directory.GetDirectories(baseRun, "*", SearchOption.AllDirectories)) Directory.CreateDirectory(d.Replace(baseRun, to));
        foreach (var f in Directory.GetFiles(baseRun, "*", SearchOption.AllDirectories)) File.Copy(f, f.Replace(baseRun, to));
        File.WriteAllText(Path.Combine(to, "run.id"), Guid.NewGuid().ToString("N")[..12]);   // its own persistence ids
        return to;
    }

    /// <summary>A child `moce` process whose output goes to root/NAME.log.</summary>
    internal sealed class Child : IDisposable
    {
        private readonly StreamWriter log;
        public Process Process { get; }

        public Child(string root, string name, string[] args)
        {
            var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
            psi.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "moce.dll"));
            foreach (var a in args) psi.ArgumentList.Add(a);
            log = new StreamWriter(Path.Combine(root, name + ".log")) { AutoFlush = true };
            Process = Process.Start(psi)!;
            Process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
            Process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (log) log.WriteLine(e.Data); };
            Process.BeginOutputReadLine();
            Process.BeginErrorReadLine();
        }

        public void Terminate()
        {
            Process.Start("kill", ["-TERM", Process.Id.ToString()])!.WaitForExit();
            if (!Process.WaitForExit(TimeSpan.FromSeconds(60))) Process.Kill(true);
        }

        public void Dispose()
        {
            if (!Process.HasExited) Process.Kill(true);
            Process.WaitForExit();                                 // the output is read to its end
            lock (log) log.Dispose();
            Process.Dispose();
        }
    }

    internal static void Moce(string root, string name, string[] args)
    {
        using var p = new Child(root, name, args);
        if (!p.Process.WaitForExit(TimeSpan.FromMinutes(30))) throw new TimeoutException($"{name} did not finish in 30 min; see {root}/{name}.log");
        if (p.Process.ExitCode != 0) throw new InvalidOperationException($"{name} failed with exit code {p.Process.ExitCode}; see {root}/{name}.log");
    }

}
