using System.Globalization;
using Akka.Configuration;
using Akka.Configuration.Hocon;
using MoCE.Core.Config;

namespace MoCE.Runs.Configuration;

/// <summary>Strict, typed reads of a HOCON tree. Every read records its key, so the loader can prove that each
/// default is used; every failure is a <see cref="ConfigException"/> naming the key.</summary>
public sealed class HoconTree(Config config)
{
    private readonly HashSet<string> read = [];
    public Config Config { get; } = config;
    public IReadOnlySet<string> KeysRead => read;

    public string String(string key) => Leaf(key).GetString();

    public bool Bool(string key) => Parse(key, "a boolean (true/false)", s => s switch
    {
        "true" or "on" or "yes" => true,
        "false" or "off" or "no" => false,
        _ => (bool?)null,
    });

    public int Int(string key) => Parse(key, "an integer", s => int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v : (int?)null);

    public long Long(string key) => Parse(key, "an integer", s => long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v : (long?)null);

    public double Double(string key) => Parse(key, "a number", s => double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var v) && double.IsFinite(v) ? v : (double?)null);

    public IReadOnlyList<int> IntList(string key)
    {
        var v = Leaf(key);
        if (IsEmptyList(v)) return [];
        if (!v.IsArray()) throw new ConfigException(key, $"expected a list of integers like [1, 3], got '{v}'");
        return v.GetArray().Select((e, i) => int.TryParse(e.GetString(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var x)
            ? x : throw new ConfigException(key, $"element {i} '{e.GetString()}' is not an integer")).ToList();
    }

    /// <summary>A number, or a non-empty list of numbers (one per channel, say).</summary>
    public IReadOnlyList<double> Doubles(string key)
    {
        var v = Leaf(key);
        if (!v.IsArray()) return [Double(key)];
        var res = v.GetArray().Select((e, i) => double.TryParse(e.GetString(), NumberStyles.Float, CultureInfo.InvariantCulture, out var x) && double.IsFinite(x)
            ? x : throw new ConfigException(key, $"element {i} '{e.GetString()}' is not a number")).ToList();
        return res.Count > 0 ? res : throw new ConfigException(key, "expected a number or a list of numbers, got []");
    }

    /// <summary>One of an enum's names, in kebab case (bad-images = skip).</summary>
    public T Enum<T>(string key) where T : struct, System.Enum
    {
        var s = String(key);
        foreach (var e in System.Enum.GetValues<T>())
            if (Kebab(e.ToString()) == s) return e;
        throw new ConfigException(key, $"expected {string.Join(", ", System.Enum.GetValues<T>().Select(e => Kebab(e.ToString())))}, got '{s}'");
    }

    public static string Kebab(string pascal) => string.Concat(pascal.Select((c, i) => char.IsUpper(c) ? (i > 0 ? "-" : "") + char.ToLowerInvariant(c) : c.ToString()));

    public IReadOnlyList<string> StringList(string key)
    {
        var v = Leaf(key);
        if (IsEmptyList(v)) return [];
        if (!v.IsArray()) throw new ConfigException(key, $"expected a list like [a, b], got '{v}'");
        return v.GetArray().Select(e => e.GetString()).ToList();
    }

    /// <summary>HOCON's <c>[]</c>: Akka's parser gives a value holding one empty array, which it calls neither an array
    /// nor a string ("&lt;&lt;unknown value&gt;&gt;"); followed by a comment on its line, the array and the blanks before
    /// the comment.</summary>
    private static bool IsEmptyList(HoconValue v) =>
        v.Values.Where(x => !(x.IsString() && string.IsNullOrWhiteSpace(x.GetString()))).ToList() is [{ } only] && only.IsArray() && only.GetArray().Count == 0;

    private T Parse<T>(string key, string what, Func<string, T?> parse) where T : struct
    {
        var v = Leaf(key);
        var s = v.IsString() ? v.GetString() : null;
        return (s is null ? null : parse(s.Trim())) ?? throw new ConfigException(key, $"expected {what}, got '{v}'");
    }

    private HoconValue Leaf(string key)
    {
        read.Add(key);
        if (!Config.HasPath(key)) throw new ConfigException(key, "missing");
        var v = Config.GetValue(key);
        if (v.IsObject()) throw new ConfigException(key, "expected a value, got an object");
        return v;
    }

    /// <summary>Every leaf path under <paramref name="prefix"/> with its rendered value, in document order.</summary>
    public static IEnumerable<(string path, HoconValue value)> Leaves(Config config, string prefix)
    {
        if (!config.HasPath(prefix)) yield break;
        foreach (var leaf in Walk(prefix, config.GetValue(prefix))) yield return leaf;
    }

    private static IEnumerable<(string, HoconValue)> Walk(string path, HoconValue v)
    {
        if (v.IsObject())
        {
            foreach (var (k, child) in v.GetObject().Items)
                foreach (var leaf in Walk($"{path}.{k}", child)) yield return leaf;
        }
        else yield return (path, v);
    }

    /// <summary>Renders a leaf as HOCON source: numbers and booleans bare, strings quoted, lists bracketed.</summary>
    public static string Render(HoconValue v)
    {
        if (IsEmptyList(v)) return "[]";
        if (v.IsArray()) return "[" + string.Join(", ", v.GetArray().Select(Render)) + "]";
        var s = v.GetString();
        bool bare = s is "true" or "false" || double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out _);
        return bare ? s : System.Text.Json.JsonSerializer.Serialize(s);
    }
}
