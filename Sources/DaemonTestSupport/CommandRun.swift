import Dispatch
import Foundation

/// What one run of a program printed, and how it ended.
public struct CommandResult: Sendable {
    public var status: Int32
    public var output: String
    public var errors: String

    /// The last line of its standard output ("" if none).
    public var lastLine: String { output.split(separator: "\n").last.map(String.init) ?? "" }
}

/// Runs `executable` with `arguments` to its end and returns what it printed on each stream. Both pipes are
/// read to their end before the wait (a full pipe would block the child), standard error on a thread of its own.
public func runCommand(_ executable: URL, _ arguments: [String]) throws -> CommandResult {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let errors = PipeCollector(err.fileHandleForReading)
    let data = out.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus, output: String(decoding: data, as: UTF8.self), errors: errors.text())
}

/// A pipe's contents, read to the end on a thread of its own.
public final class PipeCollector: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var data = Data()

    public init(_ handle: FileHandle) {
        Thread.detachNewThread { [self] in
            data = handle.readDataToEndOfFile()
            done.signal()
        }
    }

    /// Waits for the end of the pipe.
    public func text() -> String {
        done.wait()
        return String(decoding: data, as: UTF8.self)
    }
}
