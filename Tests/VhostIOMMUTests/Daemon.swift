import Foundation
import Glibc
import Testing
import VhostUser
import VhostUserTestSupport
import VirtioIOMMU

/// The real `vhost-iommu` executable, started for one test with its own socket paths.
final class Daemon: @unchecked Sendable {
    let process = Process()
    let socketPath: String
    let controlPath: String
    private let logPipe = Pipe()
    private var logData = Data()
    private let logLock = NSLock()

    static var executable: URL {
        // The test bundle and the executable are built into the same folder.
        let me = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        return me.deletingLastPathComponent().appendingPathComponent("vhost-iommu")
    }

    init(_ arguments: [String] = [], waitForSocket: Bool = true) throws {
        let tag = "\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        socketPath = "/tmp/vhost-iommu-test-\(tag).sock"
        controlPath = "/tmp/vhost-iommu-test-\(tag).ctl"
        process.executableURL = Self.executable
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

    var log: String {
        logLock.lock(); defer { logLock.unlock() }
        return String(decoding: logData, as: UTF8.self)
    }

    func connect() throws -> TestFrontend { try TestFrontend(connectingTo: socketPath) }

    /// Sends a signal and waits for the exit; returns the exit status.
    @discardableResult
    func terminate(_ signal: Int32 = SIGTERM) -> Int32 {
        if process.isRunning { kill(process.processIdentifier, signal) }
        return waitForExit()
    }

    @discardableResult
    func waitForExit(timeout: Duration = .seconds(10)) -> Int32 {
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
    func control(_ json: String) throws -> [String: Any] {
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

    func stats() throws -> [String: Any] { (try control(#"{"op":"stats"}"#)["stats"] as? [String: Any]) ?? [:] }

    /// The count of requests of `type` completed with `status`, from the control socket.
    func requestCount(_ type: String, _ status: String) throws -> Int {
        let requests = (try stats()["requests"] as? [[String: Any]]) ?? []
        return requests.first { $0["type"] as? String == type && $0["status"] as? String == status }?["count"] as? Int ?? 0
    }
}

import SystemPackage

/// A started device: front-end, guest memory, request and event queues.
final class Guest {
    let frontend: TestFrontend
    let memory: SharedMemory
    var requests: DriverQueue
    var events: DriverQueue
    let features: UInt64

    init(_ daemon: Daemon, queueSize: Int = 256, acceptPASID: Bool = false) throws {
        frontend = try daemon.connect()
        memory = try SharedMemory(size: 8 << 20)
        requests = try DriverQueue(memory: memory, index: 0, size: queueSize)
        events = try DriverQueue(memory: memory, index: 1, size: queueSize)
        let offered = try frontend.initialize(queues: [requests, events])
        // What Linux accepts: VERSION_1, the ring features, and the virtio-iommu bits it knows
        // (plus F_PASID for a driver that implements the extension).
        features = offered & (TransportFeatures.all | Features.standard.rawValue | (acceptPASID ? Features.pasid.rawValue : 0))
        try frontend.start(features: features, memory: [memory], queues: [requests, events])
    }

    /// Sends one request with a writable part of `writable` bytes; returns the used length and reply.
    func send(_ request: [UInt8], writable: Int = 4) -> (UInt32?, [UInt8]) {
        let head = requests.add(readable: [request], writable: [writable], indirect: true)
        requests.kickNow()
        let used = requests.waitForUsed(1).first
        return (used?.length, requests.reply(of: head))
    }

    func status(_ request: [UInt8]) -> Status? {
        let (used, reply) = send(request)
        guard used == 4 else { return nil }
        return Status(rawValue: reply[0])
    }

    /// Restarts the queues as a reset guest would: fresh rings at index 0.
    func restartAsResetGuest() throws {
        try frontend.stop(queues: [requests, events])
        requests = try DriverQueue(memory: memory, index: 0, size: requests.size)
        events = try DriverQueue(memory: memory, index: 1, size: events.size)
        try frontend.start(features: features, memory: [memory], queues: [requests, events])
    }
}
