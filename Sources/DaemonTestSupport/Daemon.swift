import Foundation
import Glibc
import VhostUser
import SystemPackage
import TestSupport
import VhostUserTestSupport

/// The real `vhost-iommu` executable (built into the test bundle's folder), started for one test with its own socket paths.
public final class Daemon: @unchecked Sendable {
    /// How the daemon polls its request ring (`--poll-max-us`) unless the arguments say so themselves.
    ///
    /// Functional tests run the daemon with polling off. Polling spins a core for up to the window after
    /// each request; `swift test` runs tests in parallel, and on a 2-core machine a few polling daemons
    /// take the cores from the test's own front-end thread, so every request waits for the scheduler and
    /// timeouts become the thing under test. Off, the daemon wakes on each kick, which exercises the
    /// same request path (the device model, the used ring, calls). Tests whose subject is polling (or a
    /// rate, as the real-guest test) ask for it: `.daemonDefault` runs what a user runs, and the engine's
    /// PollingTests cover the polling rules over a real ring.
    public enum Polling: Sendable {
        /// `--poll-max-us 0`: never poll.
        case off
        /// No `--poll-max-us`: the daemon's shipped default.
        case daemonDefault
    }

    public let process = Process()
    public let socketPath: String
    public let controlPath: String
    private let logReader: OutputReader

    public static var executable: URL {
        // The test bundle and the executable are built into the same folder.
        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return me.deletingLastPathComponent().appendingPathComponent("vhost-iommu")
    }

    /// Starts the daemon with its own socket, control socket and debug logging, and `polling` unless the
    /// arguments set `--poll-max-us`. A test daemon never uses the host's PASID store: arguments that turn
    /// the PASID extension on through an endpoint (`pasid=BITS`) without naming a store get a private one
    /// (`--pasid-store memory`); without either the daemon serves the plain device and opens no store.
    /// `reusingSocketPath`: serve on this path (a daemon restarted where the front-end reconnects) instead of a new one.
    public init(_ arguments: [String] = [], waitForSocket: Bool = true, polling: Polling = .off,
                executable: URL = Daemon.executable, reusingSocketPath: String? = nil) throws {
        let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        socketPath = reusingSocketPath ?? "/tmp/vhost-iommu-test-\(tag).sock"
        controlPath = "/tmp/vhost-iommu-test-\(tag).ctl"
        process.executableURL = executable
        var defaults = ["--socket-path", socketPath, "--control-socket", controlPath, "--log-level", "debug"]
        if !arguments.contains("--pasid-store") && arguments.contains(where: { $0.contains("pasid=") }) {
            defaults += ["--pasid-store", "memory"]
        }
        if !arguments.contains("--poll-max-us"), case .off = polling { defaults += ["--poll-max-us", "0"] }
        process.arguments = defaults + arguments
        // The log channel is a socket pair made close-on-exec atomically, so that no other child of
        // this test process keeps the daemon's end open: the daemon is its only writer, and its end of
        // file means the daemon is gone and every line it wrote has been read.
        let (ours, theirs) = try SystemCall.socketPair()
        process.standardError = FileHandle(fileDescriptor: theirs.rawValue, closeOnDealloc: false)
        process.standardOutput = FileHandle.nullDevice
        do {
            try process.run()
        } catch {
            try? ours.close()
            try? theirs.close()
            throw error
        }
        try? theirs.close()
        logReader = OutputReader(closing: ours)
        if waitForSocket {
            // The daemon creates its sockets' files without telling anyone: look for them.
            _ = waitUntil(.seconds(10), every: .milliseconds(2)) { [socketPath, controlPath, process] in
                (access(socketPath, F_OK) == 0 && access(controlPath, F_OK) == 0) || !process.isRunning
            }
        }
    }

    /// Everything the daemon has logged so far.
    public var log: String { logReader.text }
    /// The log's lines at level error or critical (swift-log's default format names the level).
    public var errorLines: [Substring] { log.split(separator: "\n").filter { $0.contains(" error ") || $0.contains(" critical ") } }

    /// Waits until the log contains `text` (or the daemon exits, or `timeout` passes); returns whether it does.
    @discardableResult
    public func waitForLog(_ text: String, timeout: Duration = .seconds(5)) -> Bool {
        logReader.wait(timeout: timeout) { $0.contains(text) } != nil
    }

    public func connect() throws -> TestFrontend { try TestFrontend(connectingTo: socketPath) }

    /// Sends a signal without waiting (SIGSTOP and SIGCONT: a daemon that stops answering for a while).
    public func signal(_ signal: Int32) {
        if process.isRunning { kill(process.processIdentifier, signal) }
    }

    /// Sends a signal and waits for the exit; returns the exit status.
    @discardableResult
    public func terminate(_ signal: Int32 = SIGTERM) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, signal) }
        return waitForExit()
    }

    /// Waits for the daemon to exit (SIGKILL after `timeout`) and for the end of its log; returns the
    /// exit status (or 128 + the signal that ended it).
    @discardableResult
    public func waitForExit(timeout: Duration = .seconds(10)) -> Int32 {
        // The log ends when the daemon exits (it is the pipe's only writer).
        if !logReader.waitForEnd(timeout: timeout) && process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            _ = logReader.waitForEnd(timeout: .seconds(10))
        }
        process.waitUntilExit()
        return process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        unlink(socketPath)
        unlink(controlPath)
    }

    /// One control-socket request and its parsed reply.
    public func control(_ json: String) throws -> [String: Any] {
        let socket = try SystemCall.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue))
        defer { try? socket.close() }
        try SystemCall.connect(socket, path: controlPath)
        _ = try Array((json + "\n").utf8).withUnsafeBytes { bytes throws(Errno) in try SystemCall.send(socket, bytes) }
        // The reply is one line; reading stops when the daemon says nothing for 5 s (the parse then fails).
        var reply: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !reply.contains(UInt8(ascii: "\n")), SystemCall.isReadable(socket, within: 5000) {
            let count = try buffer.withUnsafeMutableBytes { try socket.read(into: $0) }
            if count <= 0 { break }
            reply += buffer[..<count]
        }
        let line = reply.prefix { $0 != UInt8(ascii: "\n") }
        return (try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]) ?? [:]
    }

    public func stats() throws -> [String: Any] { (try control(#"{"op":"stats"}"#)["stats"] as? [String: Any]) ?? [:] }

    /// The count of requests of `type` completed with `status`, from the control socket.
    public func requestCount(_ type: String, _ status: String) throws -> Int {
        let requests = (try stats()["requests"] as? [[String: Any]]) ?? []
        return requests.first { $0["type"] as? String == type && $0["status"] as? String == status }?["count"] as? Int ?? 0
    }
}
