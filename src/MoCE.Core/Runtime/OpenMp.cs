using System.Globalization;
using System.Runtime.InteropServices;

namespace MoCE.Core.Runtime;

/// <summary>Settings of libtorch's OpenMP runtime (libgomp), which it reads once, when libtorch loads it: so they
/// must be in the process environment before the first torch call.</summary>
public static class OpenMp
{
    /// <summary>How long an idle OpenMP worker spins before it sleeps, in libgomp's spin iterations (about 0.1 ms per
    /// 10 000 here). libgomp's default, 300 000, suits one thread computing at a time; in the actor engine, the
    /// trainer's worker keeps spinning on a core while the router and the experts compute on their threads.</summary>
    public const long DefaultSpinCount = 10_000;

    /// <summary>Sets GOMP_SPINCOUNT to <see cref="DefaultSpinCount"/> unless the environment already chooses
    /// (GOMP_SPINCOUNT or OMP_WAIT_POLICY). Call it before anything touches TorchSharp. Returns the value in effect,
    /// or null where the runtime is not libgomp's (not Linux).</summary>
    public static string? UseDefaultSpinCount()
    {
        if (!OperatingSystem.IsLinux()) return null;
        if (Environment.GetEnvironmentVariable("OMP_WAIT_POLICY") is { } policy) return $"OMP_WAIT_POLICY={policy}";
        if (Environment.GetEnvironmentVariable("GOMP_SPINCOUNT") is { } set) return set;
        var value = DefaultSpinCount.ToString(CultureInfo.InvariantCulture);
        // .NET keeps its own copy of the environment; native code (libgomp) reads the C library's
        if (setenv("GOMP_SPINCOUNT", value, 0) != 0) return null;
        Environment.SetEnvironmentVariable("GOMP_SPINCOUNT", value);
        return value;
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int setenv([MarshalAs(UnmanagedType.LPUTF8Str)] string name, [MarshalAs(UnmanagedType.LPUTF8Str)] string value, int overwrite);
}
