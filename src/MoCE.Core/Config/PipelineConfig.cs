namespace MoCE.Core.Config;

/// <summary>k-means over the dense MAE's features.</summary>
public sealed record ClusterConfig
{
    /// <summary>Clusters C.</summary>
    public int K { get; init; } = 16;
    /// <summary>Lloyd iterations at most.</summary>
    public int MaxIter { get; init; } = 100;
    /// <summary>Stop when no centroid moves more than this (squared distance), or no assignment changes.</summary>
    public double Tol { get; init; } = 1e-6;
    /// <summary>Images per feature-extraction batch (bounds memory).</summary>
    public int FeatureBatch { get; init; } = 512;

    public ClusterConfig Validate()
    {
        if (K < 1) throw new ConfigException("moce.cluster.k", "must be at least 1");
        if (MaxIter < 1) throw new ConfigException("moce.cluster.max-iter", "must be at least 1");
        if (Tol < 0) throw new ConfigException("moce.cluster.tol", "must be non-negative");
        if (FeatureBatch < 1) throw new ConfigException("moce.cluster.feature-batch", "must be positive");
        return this;
    }
}

/// <summary>A downstream task: a group of a dataset's classes, relabelled 0..n−1 in the order given. With
/// <paramref name="Shots"/> &gt; 0 its training set is that many labelled images per class (balanced, seeded).</summary>
public sealed record TaskConfig(string Name, IReadOnlyList<int> Classes, string Dataset = "fashion-mnist", int Shots = 0)
{
    public string Key => $"moce.tasks.{Name}";

    public TaskConfig Validate(DataConfig data)
    {
        if (!data.Datasets.TryGetValue(Dataset, out var ds))
            throw new ConfigException($"{Key}.dataset", $"no dataset '{Dataset}' under moce.datasets (defined: {string.Join(", ", data.Datasets.Keys)})");
        if (Classes.Count < 2) throw new ConfigException($"{Key}.classes", "a task needs at least two classes");
        if (Classes.Any(c => c < 0)) throw new ConfigException($"{Key}.classes", "a class is a label ≥ 0");
        if (ds.Classes.Count > 0) CheckClasses(ds.Classes);                                    // no names: checked against the labels at load
        if (Classes.Distinct().Count() != Classes.Count) throw new ConfigException($"{Key}.classes", "lists a class twice");
        if (Shots < 0) throw new ConfigException($"{Key}.shots", "must be ≥ 0 (0: every training image, up to moce.eval.train-images)");
        return this;
    }

    /// <summary>Every class of the task is one of the dataset's (<paramref name="names"/>, by label).</summary>
    public void CheckClasses(IReadOnlyList<string> names)
    {
        foreach (var c in Classes.Where(c => c >= names.Count))
            throw new ConfigException($"{Key}.classes", $"class {c} is not a class of dataset '{Dataset}' (0..{names.Count - 1}: {string.Join(", ", names)})");
    }
}

/// <summary>Frozen-feature evaluation.</summary>
public sealed record EvalConfig
{
    /// <summary>Tasks to evaluate (names under moce.tasks).</summary>
    public IReadOnlyList<string> Tasks { get; init; } = ["tops", "footwear", "all10"];
    /// <summary>Models to evaluate: pretrained, dense, token-moe, moce, moce-customized.</summary>
    public IReadOnlyList<string> Models { get; init; } = ["dense", "token-moe", "moce", "moce-customized"];
    public static readonly IReadOnlyList<string> KnownModels = ["pretrained", "dense", "token-moe", "moce", "moce-customized"];
    /// <summary>Training images per task at most (the first of the task's classes in a seeded order).</summary>
    public int TrainImages { get; init; } = 10000;
    /// <summary>Test images per task at most.</summary>
    public int TestImages { get; init; } = 10000;
    /// <summary>Neighbours of the k-NN classifier.</summary>
    public int KnnK { get; init; } = 20;
    /// <summary>Temperature of the k-NN vote weights exp(sim / T).</summary>
    public double KnnTemperature { get; init; } = 0.07;
    /// <summary>Linear-probe epochs at most (the probe stops when it has converged; see <see cref="Evaluation.Probes.LinearProbe"/>).</summary>
    public int ProbeEpochs { get; init; } = 100;
    /// <summary>Linear-probe convergence: two epochs in a row that improve the training loss by less than this, relative.</summary>
    public double ProbeTol { get; init; } = 1e-3;
    /// <summary>k-NN on features centred on the training features' mean.</summary>
    public bool KnnCentre { get; init; } = true;
    /// <summary>Linear-probe peak learning rate (cosine decay).</summary>
    public double ProbeLr { get; init; } = 1e-2;
    /// <summary>Linear-probe weight decay.</summary>
    public double ProbeWeightDecay { get; init; } = 0.0;
    /// <summary>Linear-probe batch size.</summary>
    public int ProbeBatch { get; init; } = 256;

    public EvalConfig Validate(IReadOnlyDictionary<string, TaskConfig> tasks)
    {
        foreach (var t in Tasks)
            if (!tasks.ContainsKey(t)) throw new ConfigException("moce.eval.tasks", $"task '{t}' is not defined under moce.tasks (defined: {string.Join(", ", tasks.Keys)})");
        foreach (var m in Models)
            if (!KnownModels.Contains(m)) throw new ConfigException("moce.eval.models", $"unknown model '{m}' (known: {string.Join(", ", KnownModels)})");
        if (TrainImages < 1) throw new ConfigException("moce.eval.train-images", "must be positive");
        if (TestImages < 1) throw new ConfigException("moce.eval.test-images", "must be positive");
        if (KnnK < 1) throw new ConfigException("moce.eval.knn-k", "must be positive");
        if (KnnTemperature <= 0) throw new ConfigException("moce.eval.knn-temperature", "must be positive");
        if (ProbeEpochs < 1) throw new ConfigException("moce.eval.probe-epochs", "must be positive");
        if (ProbeLr <= 0) throw new ConfigException("moce.eval.probe-lr", "must be positive");
        if (ProbeBatch < 1) throw new ConfigException("moce.eval.probe-batch", "must be positive");
        if (ProbeTol is <= 0 or >= 1) throw new ConfigException("moce.eval.probe-tol", "must be in (0, 1)");
        return this;
    }
}
