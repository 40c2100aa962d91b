import Foundation

/// What one run of a program printed, and how it ended.
public struct CommandResult: Sendable {
    public var status: Int32
    public var output: String
    public var errors: String

    /// The last line of its standard output ("" if none).
    public var lastLine: String { output.split(separator: "\n").last.map(String.init) ?? "" }
}

/// A program started with both output streams in pipes, each read on a thread of its own (a full pipe
/// would block the child), for a test that does something while it runs and then collects its result.
public final class RunningCommand: Sendable {
    public let process: Process
    private let output: OutputReader
    private let errors: OutputReader

    public init(_ executable: URL, _ arguments: [String], environment: [String: String]? = nil) throws {
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        if let environment { process.environment = environment }
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        self.process = process
        output = OutputReader(out.fileHandleForReading)
        errors = OutputReader(err.fileHandleForReading)
    }

    /// Waits for the end of both streams and of the program; returns what it printed and its status.
    public func finish() -> CommandResult {
        output.waitForEnd()
        errors.waitForEnd()
        process.waitUntilExit()
        return CommandResult(status: process.terminationStatus, output: output.text, errors: errors.text)
    }
}

/// Runs `executable` with `arguments` to its end and returns what it printed on each stream.
public func runCommand(_ executable: URL, _ arguments: [String]) throws -> CommandResult {
    try RunningCommand(executable, arguments).finish()
}
