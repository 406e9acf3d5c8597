using Akka.Configuration;
using MoCE.Core.Config;

namespace MoCE.Runs.Configuration;

/// <summary>Builds a run's configuration in layers, each overriding the ones before:
/// <c>hocon/moce.conf</c> (every default), a preset (<c>hocon/NAME.conf</c>), <c>--config</c> files, then
/// <c>-o key=value</c> overrides. Keys under <c>moce</c> that moce.conf does not define are an error.</summary>
public static class ConfigLoader
{
    public static string HoconDir => Path.Combine(AppContext.BaseDirectory, "hocon");

    public sealed record Sources(string? Preset = null, IReadOnlyList<string>? Files = null, IReadOnlyList<string>? Overrides = null);

    public static Config Defaults() => ParseFile(Path.Combine(HoconDir, "moce.conf"));

    public static MoceConfig Load(Sources src) => Resolve(Merge(src)).config;

    public static Config Merge(Sources src)
    {
        var layers = new List<(string name, Config config)>();
        if (src.Preset is not null)
        {
            var p = Path.Combine(HoconDir, src.Preset + ".conf");
            if (!File.Exists(p))
            {
                var known = Directory.EnumerateFiles(HoconDir, "*.conf").Select(Path.GetFileNameWithoutExtension).Where(n => n != "moce");
                throw new ConfigException("--preset", $"no preset '{src.Preset}' (known: {string.Join(", ", known)})");
            }
            layers.Add((p, ParseFile(p)));
        }
        foreach (var f in src.Files ?? []) layers.Add((f, ParseFile(f)));
        foreach (var o in src.Overrides ?? []) layers.Add(("-o " + o, ParseOverride(o)));
        return Merge(Defaults(), layers);
    }

    /// <summary>Layers configs over defaults after checking that each names only known keys.</summary>
    public static Config Merge(Config defaults, IEnumerable<(string name, Config config)> layers)
    {
        var known = HoconTree.Leaves(defaults, "moce").Select(l => l.path).ToHashSet();
        var merged = defaults;
        foreach (var (name, layer) in layers)
        {
            foreach (var (path, _) in HoconTree.Leaves(layer, "moce"))
                if (!known.Contains(path) && !MoceConfig.IsOpenKey(path))
                {
                    var inside = known.FirstOrDefault(k => k.StartsWith(path + ".", StringComparison.Ordinal));
                    throw new ConfigException(path, inside is not null
                        ? $"is a section, not a value (from {name}); set its keys instead, e.g. {inside}"
                        : $"unknown key (from {name}); see hocon/moce.conf for the keys that exist");
                }
            merged = layer.WithFallback(merged);
        }
        return merged;
    }

    public static (MoceConfig config, IReadOnlySet<string> keysRead) Resolve(Config merged) => MoceConfig.Bind(merged);

    public static Config ParseFile(string path)
    {
        if (!File.Exists(path)) throw new ConfigException(path, "config file not found");
        try { return ConfigurationFactory.ParseString(WithIncludes(path, 0)); }
        catch (Exception e) when (e is not ConfigException) { throw new ConfigException(path, $"not valid HOCON: {e.Message}"); }
    }

    /// <summary>The file's text with each top-level <c>include "FILE"</c> line replaced by that file (relative to this one).</summary>
    private static string WithIncludes(string path, int depth)
    {
        if (depth > 8) throw new ConfigException(path, "includes nest more than 8 deep (a cycle?)");
        return string.Join('\n', File.ReadAllLines(path).Select(line =>
        {
            var m = System.Text.RegularExpressions.Regex.Match(line, @"^\s*include\s+""([^""]+)""\s*$");
            if (!m.Success) return line;
            var inc = Path.Combine(Path.GetDirectoryName(Path.GetFullPath(path))!, m.Groups[1].Value);
            if (!File.Exists(inc)) throw new ConfigException(path, $"includes {m.Groups[1].Value}, which does not exist");
            return WithIncludes(inc, depth + 1);
        }));
    }

    /// <summary>Parses <c>key=value</c>. A key without a <c>moce.</c> or <c>akka.</c> prefix gets <c>moce.</c>.
    /// Values that are not lists or objects are quoted, so paths and URLs survive HOCON's comment syntax.</summary>
    /// <summary>Keys whose values are secrets (passwords, connection strings): never taken from argv.</summary>
    public static bool IsSecret(string key) =>
        key.EndsWith("connection-string", StringComparison.OrdinalIgnoreCase) || key.Contains("password", StringComparison.OrdinalIgnoreCase);

    public static Config ParseOverride(string kv)
    {
        int eq = kv.IndexOf('=');
        if (eq <= 0) throw new ConfigException(kv, "override must look like key=value");
        var key = kv[..eq].Trim();
        var value = kv[(eq + 1)..].Trim();
        if (!key.StartsWith("moce.", StringComparison.Ordinal) && !key.StartsWith("akka.", StringComparison.Ordinal)) key = "moce." + key;
        if (IsSecret(key))
            throw new ConfigException(key, "a secret on the command line shows in the process list: give the journal's connection string in " +
                                           "$MOCE_POSTGRES, a certificate's password in $MOCE_TLS_PASSWORD, or the key in a --config file only you can read");
        var literal = value.StartsWith('[') || value.StartsWith('{') ? value : System.Text.Json.JsonSerializer.Serialize(value);
        try { return ConfigurationFactory.ParseString($"{key} = {literal}"); }
        catch (Exception e) { throw new ConfigException(key, $"cannot parse override value '{value}': {e.Message}"); }
    }

    /// <summary>The <c>moce</c> tree as flat, sorted <c>key = value</c> lines: valid HOCON, easy to diff.</summary>
    public static string Render(Config config) =>
        string.Join('\n', HoconTree.Leaves(config, "moce").OrderBy(l => l.path, StringComparer.Ordinal)
            .Select(l => $"{l.path} = {HoconTree.Render(l.value)}")) + "\n";

    /// <summary>Keys whose values differ between two configs (ordinal, flattened).</summary>
    public static IEnumerable<(string key, string? a, string? b)> Diff(Config a, Config b)
    {
        var da = HoconTree.Leaves(a, "moce").ToDictionary(l => l.path, l => HoconTree.Render(l.value));
        var db = HoconTree.Leaves(b, "moce").ToDictionary(l => l.path, l => HoconTree.Render(l.value));
        foreach (var k in da.Keys.Union(db.Keys).OrderBy(k => k, StringComparer.Ordinal))
        {
            da.TryGetValue(k, out var va);
            db.TryGetValue(k, out var vb);
            if (va != vb) yield return (k, va, vb);
        }
    }
}
