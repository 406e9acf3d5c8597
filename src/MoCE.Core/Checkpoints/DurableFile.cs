using System.Runtime.InteropServices;

namespace MoCE.Core.Checkpoints;

/// <summary>Writing a file so that a crash or power loss leaves either the old state or the new one: the data is
/// flushed to disk under a temporary name, renamed over the real name, and then the directory itself is flushed, so
/// the rename (a change of the directory) is on disk too. Without that last step, a file whose name a journal already
/// holds can vanish after a power loss.</summary>
public static class DurableFile
{
    /// <summary>Writes a file through <paramref name="temporary"/> (created new, and locked until it has its real
    /// name: see <see cref="IsInFlight"/>): <paramref name="write"/> fills the stream, and <paramref name="pathOf"/>
    /// names the file from what it returned (a content-addressed name, say). Returns that path and the result.</summary>
    public static (string path, T result) Write<T>(string temporary, Func<Stream, T> write, Func<T, string> pathOf)
    {
        T result;
        string path;
        // FileShare.None takes an advisory lock (flock) on Unix; the rename happens while it is held, so a temporary
        // that exists unlocked was left by a writer that died
        using (var f = new FileStream(temporary, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
        {
            result = write(f);
            f.Flush(flushToDisk: true);
            path = pathOf(result);
            File.Move(temporary, path, overwrite: true);
        }
        SyncDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        return (path, result);
    }

    /// <summary>True while a writer holds <paramref name="temporary"/> (its lock): not to be deleted.</summary>
    public static bool IsInFlight(string temporary)
    {
        try
        {
            using var f = new FileStream(temporary, FileMode.Open, FileAccess.Read, FileShare.None);
            return false;
        }
        catch (FileNotFoundException) { return false; }        // renamed meanwhile: done
        catch (IOException) { return true; }
    }

    /// <summary>fsync(2) on a directory, so that the names created, renamed or removed in it are durable. A no-op
    /// where directories cannot be opened (Windows).</summary>
    public static void SyncDirectory(string directory)
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) return;
        int fd = open(directory, OperatingSystem.IsLinux() ? 0x10000 : 0x100000);      // O_RDONLY | O_DIRECTORY
        if (fd < 0) throw new IOException($"{directory}: cannot open the directory to flush it (errno {Marshal.GetLastPInvokeError()})");
        try
        {
            if (fsync(fd) != 0) throw new IOException($"{directory}: fsync of the directory failed (errno {Marshal.GetLastPInvokeError()})");
        }
        finally { close(fd); }
    }

    [DllImport("libc", SetLastError = true)] private static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);
    [DllImport("libc", SetLastError = true)] private static extern int fsync(int fd);
    [DllImport("libc")] private static extern int close(int fd);
}
