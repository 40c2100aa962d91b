import Foundation
import SystemPackage
import VhostUser

/// What a child process writes to a pipe or socket, read to its end on a thread of its own: the child
/// never blocks on a full pipe, and a test can wait for what it expects as it comes.
public final class OutputReader: Sendable {
    /// The bytes so far and whether the end came; the reading thread holds only this, so that the
    /// reader's deinit never runs on that thread.
    private final class State: @unchecked Sendable {
        let condition = NSCondition()
        var data = Data()
        var ended = false
    }

    private let state = State()
    private let thread: OSThread

    /// Reads a pipe's end (`Pipe.fileHandleForReading`); the handle, which closes the descriptor when it
    /// goes, is kept until the reading ends.
    public convenience init(_ handle: FileHandle) {
        self.init(FileDescriptor(rawValue: handle.fileDescriptor), closing: false, keeping: handle)
    }

    /// Reads `descriptor`, which the reader owns and closes at its end.
    public convenience init(closing descriptor: FileDescriptor) {
        self.init(descriptor, closing: true, keeping: nil)
    }

    private init(_ fd: FileDescriptor, closing: Bool, keeping owner: FileHandle?) {
        thread = OSThread { [state] in
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                // swift-system retries an interrupted read; an error ends the output as end of file does.
                let n = (try? buffer.withUnsafeMutableBytes { try fd.read(into: $0) }) ?? 0
                state.condition.lock()
                if n > 0 { state.data.append(contentsOf: buffer[0..<n]) } else { state.ended = true }
                state.condition.broadcast()
                state.condition.unlock()
                if n <= 0 { break }
            }
            if closing { try? fd.close() }
            withExtendedLifetime(owner) {}
        }
    }

    /// Its thread ends at the end of the output: by now the writer is gone or going (Daemon and TestPMD
    /// kill theirs first), so the wait is short.
    deinit {
        // A writer that outlives the reader (a stray grandchild holding the pipe) must not hang the test.
        if waitForEnd(timeout: .seconds(10)) { thread.join() } else { thread.detach() }
    }

    /// Everything read so far.
    public var text: String {
        state.condition.lock(); defer { state.condition.unlock() }
        return String(decoding: state.data, as: UTF8.self)
    }

    /// How many bytes were read so far (an offset for `wait(from:)`).
    public var count: Int {
        state.condition.lock(); defer { state.condition.unlock() }
        return state.data.count
    }

    /// Waits until the text from byte `offset` on satisfies `predicate` and returns that text; nil if the
    /// output ended or `timeout` passed without it.
    public func wait(from offset: Int = 0, timeout: Duration, until predicate: (Substring) -> Bool) -> Substring? {
        let deadline = Date() + Self.seconds(timeout)
        state.condition.lock(); defer { state.condition.unlock() }
        func text() -> Substring {
            let data = state.data
            return String(decoding: data[(data.startIndex + min(offset, data.count))...], as: UTF8.self)[...]
        }
        while true {
            let now = text()
            if predicate(now) { return now }
            if state.ended || !state.condition.wait(until: deadline) {
                let last = text()
                return predicate(last) ? last : nil
            }
        }
    }

    /// Waits for the end of the output (without a limit when `timeout` is nil); false if `timeout` passed first.
    @discardableResult
    public func waitForEnd(timeout: Duration? = nil) -> Bool {
        let deadline = timeout.map { Date() + Self.seconds($0) }
        state.condition.lock(); defer { state.condition.unlock() }
        while !state.ended {
            // NSCondition traps on Date.distantFuture: without a limit it waits plainly.
            guard let deadline else { state.condition.wait(); continue }
            if !state.condition.wait(until: deadline) { return state.ended }
        }
        return true
    }

    private static func seconds(_ duration: Duration) -> TimeInterval {
        let (seconds, attoseconds) = duration.components
        return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
    }
}
