using MoCE.Core.Checkpoints;
using MoCE.Core.Training;
using Serilog;
using static TorchSharp.torch;

namespace MoCE.Core.Tests;

public class CheckpointTests
{
    private static readonly ILogger Quiet = new LoggerConfiguration().CreateLogger();

    private static List<(string name, Tensor t)> State(DenseTrainer t) =>
        t.Model.state_dict().Select(kv => ("model." + kv.Key, kv.Value))
         .Concat(t.Optimizer.StateTensors().Select(s => ("optim." + s.name, s.tensor))).ToList();

    private static void AssertBitExact(IEnumerable<(string name, Tensor t)> a, IEnumerable<(string name, Tensor t)> b)
    {
        var bb = b.ToDictionary(x => x.name, x => x.t);
        int n = 0;
        foreach (var (name, t) in a)
        {
            Assert.True(bb.TryGetValue(name, out var other), $"missing {name}");
            Assert.True(t.dtype == other!.dtype && t.shape.SequenceEqual(other.shape), name);
            Assert.True(t.bytes.SequenceEqual(other.bytes), $"{name} differs");
            n++;
        }
        Assert.Equal(bb.Count, n);
    }

    [Fact]
    public void Checkpoint_round_trip_is_bit_exact()
    {
        using var data = Tiny.TrainSample();
        var store = new CheckpointStore(Tiny.TempDir());
        using var a = new DenseTrainer(Tiny.Model, Tiny.Train(), data);
        for (int i = 0; i < 3; i++) a.TrainStep();
        var refs = a.SaveCheckpoint(store);
        var commit = new CheckpointCommit(a.NextStep, refs, DateTime.UtcNow);

        using var b = new DenseTrainer(Tiny.Model, Tiny.Train(seed: 99), data); // different init
        b.Restore(commit, store);
        Assert.Equal(a.NextStep, b.NextStep);
        Assert.Equal(a.Optimizer.StepCount, b.Optimizer.StepCount);
        AssertBitExact(State(a), State(b));
        // and the file name carries its hash
        Assert.Contains(refs[0].Sha256[..16], refs[0].File);
        Assert.Equal(refs[0].Sha256, CheckpointFile.Sha256Of(store.PathOf(refs[0])));
    }

    /// <summary>Pruning never deletes a part being written (by this process or another node sharing the store): a
    /// writer holds its temporary locked until the rename. One left behind by a writer that died is unlocked and goes.</summary>
    [Fact]
    public void Pruning_keeps_a_temporary_being_written_and_deletes_one_left_behind()
    {
        var store = new CheckpointStore(Tiny.TempDir());
        using var w = ones(3);
        var kept = store.Save("expert-0", 5, new Dictionary<string, string>(), [("w", w)]);
        var old = store.Save("expert-0", 4, new Dictionary<string, string>(), [("w", w * 2)]);
        var writing = Path.Combine(store.Directory, ".tmp-expert-1-5-inflight");
        var dead = Path.Combine(store.Directory, ".tmp-expert-2-5-dead");
        File.WriteAllBytes(dead, [1, 2, 3]);
        using (var f = new FileStream(writing, FileMode.CreateNew, FileAccess.Write, FileShare.None))   // as DurableFile.Write holds it
        {
            f.Write([1, 2, 3]);
            store.DeleteAllExcept([kept]);
            Assert.True(File.Exists(writing), "a temporary still being written was deleted");
        }
        Assert.False(File.Exists(dead), "a temporary left by a dead writer was kept");
        Assert.False(File.Exists(store.PathOf(old)));
        Assert.True(File.Exists(store.PathOf(kept)));
        store.DeleteAllExcept([kept]);                                        // its writer is gone now
        Assert.False(File.Exists(writing));
        using var back = store.Load(kept);
        Assert.True(Tiny.Same(w, back.Tensors["w"]));
    }

    [Fact]
    public void Train_2k_equals_train_k_then_resume_k()
    {
        const int k = 6;
        using var data = Tiny.TrainSample();
        var cfg = Tiny.Train(steps: 2 * k) with { CheckpointEvery = k };

        using var straight = new DenseTrainer(Tiny.Model, cfg, data);
        var losses = new List<double>();
        for (int i = 0; i < 2 * k; i++) losses.Add(straight.TrainStep().Loss);

        var runDir = Tiny.TempDir();
        using (var first = new DenseTrainer(Tiny.Model, cfg, data))
            new TrainingLoop(first, cfg, runDir, Quiet).Run(stopAt: k); // the process "stops" at k

        using var resumed = new DenseTrainer(Tiny.Model, cfg, data);
        var loop = new TrainingLoop(resumed, cfg, runDir, Quiet);
        Assert.Equal(k, loop.Resume());
        var resumedLosses = new List<double>();
        for (int i = k; i < 2 * k; i++) resumedLosses.Add(resumed.TrainStep().Loss);

        Assert.Equal(losses.Skip(k), resumedLosses);
        AssertBitExact(State(straight), State(resumed));
    }

    [Fact]
    public void Corrupt_checkpoint_is_detected_by_hash_and_named()
    {
        using var data = Tiny.TrainSample();
        var store = new CheckpointStore(Tiny.TempDir());
        using var t = new DenseTrainer(Tiny.Model, Tiny.Train(), data);
        var r = t.SaveCheckpoint(store)[0];
        var path = store.PathOf(r);
        var bytes = File.ReadAllBytes(path);
        bytes[bytes.Length / 2] ^= 0x40;
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<CheckpointCorruptException>(() => store.Load(r));
        Assert.Contains(r.File, e.Message);
        Assert.Contains("sha256 mismatch", e.Message);
    }

    [Fact]
    public void Resume_falls_back_to_the_previous_commit_when_the_newest_is_corrupt_or_missing()
    {
        using var data = Tiny.TrainSample();
        var cfg = Tiny.Train(steps: 6) with { CheckpointEvery = 2, KeepCheckpoints = 3 };
        var runDir = Tiny.TempDir();
        using (var t = new DenseTrainer(Tiny.Model, cfg, data))
            new TrainingLoop(t, cfg, runDir, Quiet).Run();
        var store = new CheckpointStore(Path.Combine(runDir, "checkpoints"));
        var commits = new CommitLog(store).Commits;
        Assert.Equal(new long[] { 2, 4, 6 }, commits.Select(c => c.Step));

        File.Delete(store.PathOf(commits[2].Parts[0]));                    // newest: missing
        File.AppendAllText(store.PathOf(commits[1].Parts[0]), "garbage");  // previous: corrupt
        var warnings = new List<string>();
        var log = new LoggerConfiguration().WriteTo.Sink(new ListSink(warnings)).CreateLogger();
        using var resumed = new DenseTrainer(Tiny.Model, cfg, data);
        Assert.Equal(2, new TrainingLoop(resumed, cfg, runDir, log).Resume());
        Assert.Contains(warnings, w => w.Contains(commits[2].Parts[0].File) && w.Contains("missing"));
        Assert.Contains(warnings, w => w.Contains(commits[1].Parts[0].File) && w.Contains("sha256"));
    }

    /// <summary>A tensor larger than one chunk of the stream (64 MiB) goes through in several, bit for bit, and the hash
    /// computed on the way is the file's.</summary>
    [Fact]
    public void A_tensor_of_several_chunks_round_trips_and_the_hash_on_the_way_is_the_file_s()
    {
        var dir = Tiny.TempDir();
        var store = new CheckpointStore(dir);
        using var big = arange(20_000_000, dtype: ScalarType.Float32).mul_(0.5f);         // 80 MB: two chunks
        using var small = tensor(new long[] { 3, -1, 7 });
        var part = store.Save("owner", 1, new Dictionary<string, string> { ["step"] = "1" }, [("big", big), ("small", small)]);
        Assert.Equal(part.Sha256, CheckpointFile.Sha256Of(store.PathOf(part)));
        using var back = store.Load(part);
        Assert.True(back.Tensors["big"].eq(big).all().item<bool>());
        Assert.Equal([3L, -1L, 7L], back.Tensors["small"].data<long>().ToArray());
        using var f = File.OpenRead(store.PathOf(part));
        using var again = CheckpointFile.Read(f, store.PathOf(part), out var sha);
        Assert.Equal(part.Sha256, sha);
    }

    /// <summary>A part larger than 2 GiB, in one tensor larger than 2 GiB, is written and loaded through the store (no
    /// whole-file buffer, no span over the whole tensor). It needs about 5 GB of disk and 6 GB of memory, and skips,
    /// saying why, where the machine has less.</summary>
    [SkippableFact]
    public void A_part_larger_than_2_GiB_round_trips()
    {
        const long elements = 600_000_000;                                        // 2.4 GB of float32
        var dir = Tiny.TempDir();
        long free = new DriveInfo(Path.GetPathRoot(Path.GetFullPath(dir))!).AvailableFreeSpace;
        Skip.If(free < 5L << 30, $"needs 5 GiB free on {dir}'s disk, has {free >> 20} MiB");
        long memory = File.ReadLines("/proc/meminfo").Where(l => l.StartsWith("MemAvailable:", StringComparison.Ordinal))
            .Select(l => long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) << 10).FirstOrDefault();
        Skip.If(memory < 6L << 30, $"needs 6 GiB of available memory, has {memory >> 20} MiB");
        var store = new CheckpointStore(dir);
        try
        {
            using var t = ones(elements, dtype: ScalarType.Float32);
            t[elements - 1] = tensor(7f);                                         // the last element, past 2 GiB
            var part = store.Save("big", 1, new Dictionary<string, string> { ["step"] = "1" }, [("w", t)]);
            Assert.True(new FileInfo(store.PathOf(part)).Length > 2L << 30);
            using var back = store.Load(part);
            Assert.True(back.Tensors["w"].eq(t).all().item<bool>());
            Assert.Equal(7f, back.Tensors["w"][elements - 1].item<float>());
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void Truncated_checkpoint_file_is_a_clear_error()
    {
        var dir = Tiny.TempDir();
        var path = Path.Combine(dir, "x.ckpt");
        using (var f = File.Create(path))
            CheckpointFile.Write(f, new Dictionary<string, string> { ["step"] = "1" }, [("w", ones(4, 4))]);
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^10]);
        var e = Assert.Throws<InvalidDataException>(() => CheckpointFile.Read(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("truncated", e.Message);
    }

    /// <summary>A header that announces more bytes than the file holds (16 GiB here) is an error before the tensor is
    /// allocated, not an allocation of 16 GiB.</summary>
    [Fact]
    public void A_tensor_announced_larger_than_the_file_is_refused_before_it_is_allocated()
    {
        var path = Path.Combine(Tiny.TempDir(), "x.ckpt");
        using (var f = File.Create(path))
            CheckpointFile.Write(f, new Dictionary<string, string> { ["step"] = "1" }, [("w", ones(4, 4))]);
        var bytes = File.ReadAllBytes(path);
        // magic 8, version 4, meta 4 + 12 ({"step":"1"}), count 4, name 4 + 1, dtype 4, ndim 4: the shape starts at 45
        BitConverter.TryWriteBytes(bytes.AsSpan(45, 8), 1L << 30);               // 2^30 × 4 floats
        BitConverter.TryWriteBytes(bytes.AsSpan(61, 8), 16L << 30);              // and the length that shape needs
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<InvalidDataException>(() => CheckpointFile.Read(path));
        Assert.Contains("17179869184 bytes announced", e.Message);
    }

    [Fact]
    public void Only_the_last_K_commits_are_kept_on_disk()
    {
        using var data = Tiny.TrainSample();
        var cfg = Tiny.Train(steps: 10) with { CheckpointEvery = 2, KeepCheckpoints = 2 };
        var runDir = Tiny.TempDir();
        using (var t = new DenseTrainer(Tiny.Model, cfg, data))
            new TrainingLoop(t, cfg, runDir, Quiet).Run();
        var dir = Path.Combine(runDir, "checkpoints");
        var files = Directory.GetFiles(dir, "*.ckpt").Select(Path.GetFileName).Order().ToList();
        Assert.Equal(2, files.Count);
        Assert.StartsWith("trainer-00000008-", files[0]);
        Assert.StartsWith("trainer-00000010-", files[1]);
        Assert.Equal(new long[] { 8, 10 }, new CommitLog(new CheckpointStore(dir)).Commits.Select(c => c.Step));
    }

    private sealed class ListSink(List<string> messages) : Serilog.Core.ILogEventSink
    {
        public void Emit(Serilog.Events.LogEvent e) { lock (messages) messages.Add(e.RenderMessage()); }
    }

    /// <summary>A reference can arrive over the wire: its file must be the name the store gives its owner, step and
    /// sha256, so "../" or an absolute path never leaves the store.</summary>
    [Fact]
    public void A_crafted_checkpoint_reference_is_refused_before_any_path_is_built()
    {
        var store = new CheckpointStore(Tiny.TempDir());
        using var w = TorchSharp.torch.ones(3);
        var r = store.Save("expert-1", 7, new Dictionary<string, string>(), [("w", w)]);
        using (store.Load(r)) { }                                              // the real reference loads
        var outside = Path.Combine(Path.GetDirectoryName(store.Location)!, "victim.ckpt");
        File.Copy(store.PathOf(r), outside, overwrite: true);                 // a valid file just outside the store
        foreach (var bad in new[]
        {
            r with { File = "../victim.ckpt" }, r with { File = outside }, r with { File = "sub/" + r.File },
            r with { Owner = "../x" }, r with { Sha256 = r.Sha256.ToUpperInvariant() }, r with { Step = -1 },
            r with { File = r.File.Replace("expert-1", "expert-2", StringComparison.Ordinal) },
        })
        {
            var e = Assert.Throws<CheckpointCorruptException>(() => store.Load(bad));
            Assert.Contains("refused", e.Message);
            Assert.Throws<CheckpointCorruptException>(() => store.Verify(bad));
        }
    }
}
