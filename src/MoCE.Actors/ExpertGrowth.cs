using System.Globalization;
using MoCE.Actors.Messages;
using MoCE.Actors.Placement;
using MoCE.Core.Checkpoints;
using MoCE.Core.Config;
using MoCE.Core.Model;
using static TorchSharp.torch;

namespace MoCE.Actors;

/// <summary>`moce experts add` as a function of a commit: from the parts of the commit at step s with E experts it
/// writes the parts of a commit at the same step with E + n: the router's, whose every gate grows a row per new
/// expert (<see cref="ExpertSplit"/>, with that row's AdamW moments), and one per new expert, a copy of its source
/// expert's part (weights and AdamW state) under the new index. The other owners' parts are unchanged. A plain
/// function of files, so a test checks it without actors, and the result is the same on whichever node computes it.</summary>
public static class ExpertGrowth
{
    /// <summary>The experts to split for <paramref name="count"/> new ones: the busiest by <paramref name="tokens"/>
    /// each time, whose load then halves between it and its copy (ties: the lower index).</summary>
    public static IReadOnlyList<int> Sources(IReadOnlyList<long> tokens, int count)
    {
        var load = tokens.Select(t => (double)t).ToList();
        var sources = new List<int>();
        for (int i = 0; i < count; i++)
        {
            int b = Enumerable.Range(0, load.Count).Aggregate((x, y) => load[y] > load[x] ? y : x);
            sources.Add(b);
            load[b] /= 2;
            load.Add(load[b]);
        }
        return sources;
    }

    /// <summary>The commit of step <paramref name="commit"/>.Step with one expert more per source (expert E + i splits
    /// sources[i]); <paramref name="margin"/> in units of the gate temperature.</summary>
    public static CheckpointCommitted Grow(ICheckpointStore store, CheckpointCommitted commit, MoeConfig moe, IReadOnlyList<int> sources, double margin)
    {
        var parts = commit.Manifest.ToDictionary(p => p.Owner);
        int experts = parts.Keys.Count(o => SupervisorState.ExpertIndex(o) is not null);
        var grown = new List<CheckpointRef>(commit.Manifest.Where(p => p.Owner != RouterActor.Name));
        using (var router = store.Load(parts[RouterActor.Name]))
        {
            using var scope = NewDisposeScope();
            var tensors = router.Tensors.ToDictionary(kv => kv.Key, kv => kv.Value);
            foreach (var b in moe.Layers)
            {
                string w = $"blocks.{b}.mlp.gate.w_gate.weight", emb = $"blocks.{b}.mlp.gate.emb";
                string[] moments = [$"optim.exp_avg.{w}", $"optim.exp_avg_sq.{w}"];
                for (int i = 0; i < sources.Count; i++)
                {
                    var weight = tensors["model." + w];
                    if (weight.shape[0] != experts + i) throw new InvalidDataException($"{parts[RouterActor.Name].File}: gate of block {b} has {weight.shape[0]} rows for {experts + i} experts");
                    var delta = ExpertSplit.Direction(weight, tensors.GetValueOrDefault("model." + emb), sources[i], margin * moe.Temperature);
                    tensors["model." + w] = ExpertSplit.SplitRows(weight, delta, sources[i]);
                    foreach (var m in moments) tensors[m] = ExpertSplit.CopyRow(tensors[m], sources[i]);
                }
            }
            var meta = new Dictionary<string, string>(router.Meta) { ["experts"] = (experts + sources.Count).ToString(CultureInfo.InvariantCulture) };
            grown.Add(store.Save(RouterActor.Name, commit.Step, meta, tensors.Select(kv => (kv.Key, kv.Value))));
        }
        for (int i = 0; i < sources.Count; i++)
        {
            int e = experts + i;
            var source = grown.Single(p => p.Owner == OwnerRegistry.ExpertId(sources[i]));
            using var c = store.Load(source);
            var meta = new Dictionary<string, string>(c.Meta) { ["expert"] = e.ToString(CultureInfo.InvariantCulture), ["split-from"] = source.Owner };
            string from = $".mlp.experts.{sources[i]}.", to = $".mlp.experts.{e}.";
            grown.Add(store.Save(OwnerRegistry.ExpertId(e), commit.Step, meta, c.Tensors.Select(kv => (kv.Key.Replace(from, to, StringComparison.Ordinal), kv.Value))));
        }
        return new CheckpointCommitted(commit.Step, grown, Window: []);          // the next add counts traffic with the new experts
    }
}
