import Foundation
import Glibc
import VhostUser
import SystemPackage
import VhostUserTestSupport

/// The real `vhost-iommu` executable (built into the test bundle's folder), started for one test with its own socket paths.
public final class Daemon: @unchecked Sendable {
    public let process = Process()
    public let socketPath: String
    public let controlPath: String
    private let logPipe = Pipe()
    private var logData = Data()
    private let logLock = NSLock()

    public static var executable: URL {
        // The test bundle and the executable are built into the same folder.
        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return me.deletingLastPathComponent().appendingPathComponent("vhost-iommu")
    }

    public init(_ arguments: [String] = [], waitForSocket: Bool = true, executable: URL = Daemon.executable) throws {
        let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        socketPath = "/tmp/vhost-iommu-test-\(tag).sock"
        controlPath = "/tmp/vhost-iommu-test-\(tag).ctl"
        process.executableURL = executable
        process.arguments = ["--socket-path", socketPath, "--control-socket", controlPath, "--log-level", "debug"]
            + (arguments.contains("--pasid-store") ? [] : ["--pasid-store", "memory"]) + arguments
        process.standardError = logPipe
        process.standardOutput = FileHandle.nullDevice
        logPipe.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let chunk = handle.availableData
            guard let self else { return }
            self.logLock.lock(); self.logData.append(chunk); self.logLock.unlock()
        }
        try process.run()
        if waitForSocket {
            let deadline = ContinuousClock.now + .seconds(10)
            while (access(socketPath, F_OK) != 0 || access(controlPath, F_OK) != 0) && ContinuousClock.now < deadline {
                usleep(2000)
            }
        }
    }

    public var log: String {
        logLock.lock(); defer { logLock.unlock() }
        return String(decoding: logData, as: UTF8.self)
    }

    public func connect() throws -> TestFrontend { try TestFrontend(connectingTo: socketPath) }

    /// Sends a signal and waits for the exit; returns the exit status.
    @discardableResult
    public func terminate(_ signal: Int32 = SIGTERM) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, signal) }
        return waitForExit()
    }

    @discardableResult
    public func waitForExit(timeout: Duration = .seconds(10)) -> Int32 {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline { usleep(2000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        usleep(20000)  // let the log reader catch up
        return process.terminationStatus
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        logPipe.fileHandleForReading.readabilityHandler = nil
        unlink(socketPath)
        unlink(controlPath)
    }

    /// One control-socket request and its parsed reply.
    public func control(_ json: String) throws -> [String: Any] {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        try SystemCall.connect(FileDescriptor(rawValue: fd), path: controlPath)
        let line = Array((json + "\n").utf8)
        _ = line.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var reply: [UInt8] = []
        var byte: UInt8 = 0
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        while recv(fd, &byte, 1, 0) == 1 && byte != UInt8(ascii: "\n") { reply.append(byte) }
        return (try JSONSerialization.jsonObject(with: Data(reply)) as? [String: Any]) ?? [:]
    }

    public func stats() throws -> [String: Any] { (try control(#"{"op":"stats"}"#)["stats"] as? [String: Any]) ?? [:] }

    /// The count of requests of `type` completed with `status`, from the control socket.
    public func requestCount(_ type: String, _ status: String) throws -> Int {
        let requests = (try stats()["requests"] as? [[String: Any]]) ?? []
        return requests.first { $0["type"] as? String == type && $0["status"] as? String == status }?["count"] as? Int ?? 0
    }
}
