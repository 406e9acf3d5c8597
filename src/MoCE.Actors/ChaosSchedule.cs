using System.Globalization;
using Akka.Configuration;
using Akka.Configuration.Hocon;
using MoCE.Core.Config;

namespace MoCE.Actors;

/// <summary>A chaos schedule in HOCON (hocon/chaos/*.conf, `moce train --chaos FILE`): a seed and a list of events,
/// each a trigger and a target, turned into a <see cref="ChaosPlan"/>. Every key is checked: a typo names its key.
/// <code>
/// chaos {
///   seed = 7                                    # for probabilistic triggers
///   events = [
///     { kind = fail, owner = expert-2, step = 40, phase = backward }   # phase: forward | backward | apply | checkpoint
///     { kind = fail, owner = router, probability = 0.01 }              # each step, drawn from (seed, owner, step)
///     { kind = nan-gradient, owner = expert-3, step = 45 }             # its gradients become NaN: the step fails
///     { kind = straggler, owner = expert-1, from = 50, to = 90, factor = 5 }   # and/or ms = 20
///     { kind = drop, owner = expert-0, step = 70, message = forward }  # drop | duplicate | delay (with ms = 200);
///                                                                     # message: forward | output | backward | input-grad
///     { kind = corrupt-checkpoint, owner = router, step = 80 }         # the owner's first checkpoint file at step ≥ 80
///     { kind = slow-persist, owner = router, step = 90, ms = 5000 }    # its background write of the cut ≥ 90 takes 5 s longer
///     { kind = lose-copy, owner = expert-2 }                           # expert-exact: its in-memory copy is gone at its next restart
///     { kind = journal-refuses, step = 100, ms = 1500 }                # the database refuses journal writes for 1.5 s
///     { kind = kill-node, node = "127.0.0.1:4553", step = 120 }        # cluster: SIGKILL of that expert node's process
///     { kind = fail-in-move, move = 1, phase = placement, owner = router }  # phase: cut | placement | restore of the
///                                                                     # run's first planned move (a drain, a rebalance)
///   ]
/// }
/// </code>
/// Owners: trainer, router, teacher, expert-N (fail); expert-N (nan-gradient, straggler and message faults). In a cluster the schedule
/// runs on the coordinators (`moce node --chaos FILE`): faults of the trainer, router and teacher, message faults (at the
/// router), corrupt checkpoints of the trainer and router, journal refusals and node kills fire there; an expert on
/// another node runs no schedule.</summary>
public static class ChaosSchedule
{
    public static ChaosPlan Load(string path)
    {
        if (!File.Exists(path)) throw new ConfigException("--chaos", $"no chaos schedule at '{path}'");
        Config config;
        try { config = ConfigurationFactory.ParseString(File.ReadAllText(path)); }
        catch (Exception e) { throw new ConfigException("--chaos", $"'{path}' is not valid HOCON: {e.Message}"); }
        return Parse(config);
    }

    public static ChaosPlan Parse(Config config)
    {
        if (!config.HasPath("chaos.events")) throw new ConfigException("chaos.events", "missing: a schedule is a list of events under chaos.events");
        foreach (var key in config.GetValue("chaos").GetObject().Items.Keys)
            if (key is not ("seed" or "events")) throw new ConfigException($"chaos.{key}", "unknown key (expected seed and events)");
        long seed = config.HasPath("chaos.seed") ? long.Parse(config.GetString("chaos.seed"), CultureInfo.InvariantCulture) : 0;
        var events = config.GetValue("chaos.events");
        if (!events.IsArray()) throw new ConfigException("chaos.events", "expected a list of { kind = ..., ... } objects");
        var plan = new ChaosPlan();
        int i = 0;
        foreach (var e in events.GetArray())
        {
            var at = $"chaos.events[{i++}]";
            if (!e.IsObject()) throw new ConfigException(at, "expected an object like { kind = fail, owner = expert-1, step = 10 }");
            var fields = e.GetObject().Items.ToDictionary(kv => kv.Key, kv => kv.Value);
            var used = new HashSet<string> { "kind" };
            string Str(string k) { used.Add(k); return fields.TryGetValue(k, out var v) && !v.IsObject() && !v.IsArray() ? v.GetString() : throw new ConfigException($"{at}.{k}", "missing"); }
            string? Opt(string k) => fields.ContainsKey(k) ? Str(k) : null;
            long Long(string k) => long.TryParse(Str(k), NumberStyles.Integer, CultureInfo.InvariantCulture, out var x) && x >= 0 ? x : throw new ConfigException($"{at}.{k}", $"expected a step ≥ 0, got '{Str(k)}'");
            double Num(string k, double fallback) => Opt(k) is not { } s ? fallback
                : double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var x) && x >= 0 ? x : throw new ConfigException($"{at}.{k}", $"expected a number ≥ 0, got '{s}'");
            string Expert(string k) { var o = Str(k); return SupervisorState.ExpertIndex(o) is not null ? o : throw new ConfigException($"{at}.{k}", $"expected expert-N, got '{o}'"); }

            var kind = Str("kind");
            switch (kind)
            {
                case "fail":
                    var owner = Str("owner");
                    if (owner is not ("trainer" or "router" or "teacher") && SupervisorState.ExpertIndex(owner) is null)
                        throw new ConfigException($"{at}.owner", $"expected trainer, router, teacher or expert-N, got '{owner}'");
                    var phase = (Opt("phase") ?? "forward") switch
                    {
                        "forward" => ChaosPhase.Entry, "backward" => ChaosPhase.Backward, "apply" => ChaosPhase.Apply, "checkpoint" => ChaosPhase.Checkpoint,
                        var p => throw new ConfigException($"{at}.phase", $"expected forward, backward, apply or checkpoint, got '{p}'"),
                    };
                    if (phase != ChaosPhase.Entry && SupervisorState.ExpertIndex(owner) is null)
                        throw new ConfigException($"{at}.phase", $"only an expert fails in {Opt("phase")}; {owner} fails at its handler's entry (forward)");
                    if (fields.ContainsKey("probability")) plan.FailWithProbability(owner, Num("probability", 0), seed, phase);
                    else plan.FailAt(owner, Long("step"), (int)Num("times", 1), phase);
                    break;
                case "nan-gradient":
                    plan.PoisonGradient(Expert("owner"), Long("step"));
                    break;
                case "straggler":
                    var slow = Str("owner");
                    if (slow != "router" && SupervisorState.ExpertIndex(slow) is null)
                        throw new ConfigException($"{at}.owner", $"expected router or expert-N, got '{slow}'");
                    plan.Straggle(slow, Long("from"), Long("to"), Math.Max(1, Num("factor", 1)), Num("ms", 0));
                    break;
                case "drop" or "duplicate" or "delay":
                    var message = Str("message");
                    if (message is not ("forward" or "output" or "backward" or "input-grad"))
                        throw new ConfigException($"{at}.message", $"expected forward, output, backward or input-grad, got '{message}'");
                    plan.Message(Enum.Parse<MessageFault>(kind, ignoreCase: true), Expert("owner"), Long("step"), message, Num("ms", kind == "delay" ? 100 : 0));
                    break;
                case "corrupt-checkpoint":
                    var o = Str("owner");
                    if (o is not ("trainer" or "router") && SupervisorState.ExpertIndex(o) is null)
                        throw new ConfigException($"{at}.owner", $"expected trainer, router or expert-N (the owners that write parts), got '{o}'");
                    plan.CorruptCheckpoint(o, Long("step"));
                    break;
                case "kill-node":
                    var hostPort = Str("node");
                    _ = NodeOptions.SeedAddress(hostPort);                                // host:port, or a clear error
                    plan.KillNode(hostPort, Long("step"));
                    break;
                case "fail-in-move":
                    var mover = Str("owner");
                    if (mover is not ("trainer" or "router")) throw new ConfigException($"{at}.owner", $"expected trainer or router, got '{mover}'");
                    var movePhase = Str("phase") switch
                    {
                        "cut" => MovePhase.Cut, "placement" => MovePhase.Placement, "restore" => MovePhase.Restore,
                        var p => throw new ConfigException($"{at}.phase", $"expected cut, placement or restore, got '{p}'"),
                    };
                    plan.FailInMove((int)Math.Max(1, Long("move")), movePhase, mover);
                    break;
                case "slow-persist":
                    var writer = Str("owner");
                    if (writer is not ("trainer" or "router") && SupervisorState.ExpertIndex(writer) is null)
                        throw new ConfigException($"{at}.owner", $"expected trainer, router or expert-N (the owners that write parts), got '{writer}'");
                    plan.SlowPersist(writer, Long("step"), TimeSpan.FromMilliseconds(Num("ms", 1000)));
                    break;
                case "lose-copy":
                    plan.LoseCopy(Expert("owner"));
                    break;
                case "journal-refuses":
                    plan.RefuseJournal(Long("step"), TimeSpan.FromMilliseconds(Num("ms", 1000)));
                    break;
                default:
                    throw new ConfigException($"{at}.kind", $"expected fail, nan-gradient, straggler, drop, duplicate, delay, corrupt-checkpoint, slow-persist, lose-copy, journal-refuses, kill-node or fail-in-move, got '{kind}'");
            }
            foreach (var k in fields.Keys.Where(k => !used.Contains(k)))
                throw new ConfigException($"{at}.{k}", $"unknown key for kind = {kind}");
        }
        return plan;
    }
}
