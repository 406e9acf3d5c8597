using MoCE.Core.Config;
using MoCE.Core.Training;

namespace MoCE.Core.Data;

/// <summary>Which images of a dataset a task uses.</summary>
public static class TaskSelection
{
    /// <summary>A task's images in a seeded order: with <paramref name="shots"/> &gt; 0, the first that many of each
    /// class (balanced); else the first <paramref name="cap"/>.</summary>
    public static (List<int> indices, long[] labels) Select(ImageDataset data, TaskConfig task, int cap, long seed, int shots)
    {
        var order = Seeds.Permutation(data.Count, Seeds.Derive(seed, Seeds.Stream.Probe, data.Count));
        var taken = new Dictionary<int, int>();
        var idx = new List<int>();
        foreach (var i in order)
        {
            int label = data.Labels[i];
            if (!task.Classes.Contains(label)) continue;
            if (shots > 0) { int n = taken.GetValueOrDefault(label); if (n >= shots) continue; taken[label] = n + 1; }
            idx.Add(i);
            if (idx.Count >= cap) break;
        }
        return (idx, idx.Select(i => (long)task.Classes.ToList().IndexOf(data.Labels[i])).ToArray());
    }
}
