namespace MoCE.Runs;

/// <summary>How a run is opened: the configuration's sources, in order (a preset, --config files, -o overrides), the run
/// directory, and the command that opens it (for the log).</summary>
public sealed record RunRequest(string Command, string? Preset, IReadOnlyList<string> Files, IReadOnlyList<string> Overrides, string RunDir);
