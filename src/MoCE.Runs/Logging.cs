using Serilog;
using Serilog.Events;

namespace MoCE.Runs;

/// <summary>Serilog setup: one structured line per event on the console, and the same events in the run's log
/// file once the run directory is known.</summary>
public static class Logging
{
    private const string Template = "[{Timestamp:HH:mm:ss} {Level:u3}] {Message:lj}{NewLine}{Exception}";

    public static ILogger Console() => new LoggerConfiguration()
        .MinimumLevel.Information()
        .WriteTo.Console(outputTemplate: Template, standardErrorFromLevel: LogEventLevel.Error)
        .CreateLogger();

    /// <summary>For commands whose standard output is data (moce experts list --format json): every log line to stderr.</summary>
    public static ILogger StandardError() => new LoggerConfiguration()
        .MinimumLevel.Warning()
        .WriteTo.Console(outputTemplate: Template, standardErrorFromLevel: LogEventLevel.Verbose)
        .CreateLogger();

    public static ILogger ConsoleAndFile(string logFile) => new LoggerConfiguration()
        .MinimumLevel.Debug()
        .WriteTo.Console(outputTemplate: Template, restrictedToMinimumLevel: LogEventLevel.Information, standardErrorFromLevel: LogEventLevel.Error)
        .WriteTo.File(logFile, shared: true, outputTemplate: "{Timestamp:yyyy-MM-dd HH:mm:ss.fff} [{Level:u3}] {Message:lj} {Properties:j}{NewLine}{Exception}")
        .CreateLogger();
}
