import Foundation
import Glibc
import SystemPackage
import TestSupport
import VhostUser

struct MachineError: Error, CustomStringConvertible {
    var description: String
}

/// A QEMU process running the test guest. The guest's /init (scripts/guest/init) reads one shell
/// command per line from the serial console and marks its replies with "@@"; QMP drives the VM itself.
final class Machine {
    let process = Process()
    let qmpPath: String
    private let consoleIn = Pipe()
    private let consoleOut = Pipe()
    private var pending: [UInt8] = []
    /// Everything the guest printed, for the failure message.
    private(set) var transcript: [String] = []
    private var qmpSocket: FileDescriptor?
    private var qmpPending: [UInt8] = []

    /// `kernelArguments` go on the guest kernel's command line after "console=ttyS0 quiet" (e.g. "iommu.strict=1").
    init(qemu: String, arguments: [String], guest: GuestFiles, tag: String, kernelArguments: [String] = []) throws {
        qmpPath = "/tmp/vhost-iommu-qmp-\(tag).sock"
        process.executableURL = URL(fileURLWithPath: qemu)
        process.arguments = [
            "-nodefaults", "-display", "none", "-accel", "tcg", "-cpu", "max", "-smp", "1",
            "-kernel", guest.kernel, "-initrd", guest.initramfs,
            "-append", (["console=ttyS0", "quiet"] + kernelArguments).joined(separator: " "),
            "-chardev", "stdio,id=console,signal=off", "-serial", "chardev:console",
            "-qmp", "unix:\(qmpPath),server=on,wait=off",
        ] + arguments
        process.standardInput = consoleIn
        process.standardOutput = consoleOut
        process.standardError = consoleOut
        try process.run()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        try? qmpSocket?.close()
        unlink(qmpPath)
    }

    var log: String { transcript.suffix(200).joined(separator: "\n") }

    // MARK: Serial console

    /// The next console line starting with `prefix`; other lines are kept in the transcript.
    @discardableResult
    func waitFor(_ prefix: String, timeout: Duration = .seconds(120)) throws -> String {
        let deadline = ContinuousClock.now + timeout
        while true {
            if let line = try nextLine(deadline: deadline), line.hasPrefix(prefix) { return line }
            if !process.isRunning && pending.isEmpty {
                throw MachineError(description: "QEMU exited (\(process.terminationStatus)) before \"\(prefix)\"\n\(log)")
            }
        }
    }

    /// Runs one command in the guest and returns its "@@" lines (the final "@@DONE rc" excluded).
    @discardableResult
    func run(_ command: String, timeout: Duration = .seconds(120)) throws -> [String] {
        let (status, lines) = try runStatus(command, timeout: timeout)
        guard status == 0 else {
            throw MachineError(description: "guest command \"\(command)\" failed: @@DONE \(status)\n\(log)")
        }
        return lines
    }

    /// Runs one command in the guest and returns its exit status and "@@" lines, whatever the status.
    func runStatus(_ command: String, timeout: Duration = .seconds(120)) throws -> (status: Int, lines: [String]) {
        send(command)
        var lines: [String] = []
        let deadline = ContinuousClock.now + timeout
        while true {
            guard let line = try nextLine(deadline: deadline) else { continue }
            if line.hasPrefix("@@DONE ") {
                guard let status = Int(line.dropFirst("@@DONE ".count)) else {
                    throw MachineError(description: "guest command \"\(command)\": unreadable \(line)\n\(log)")
                }
                return (status, lines)
            }
            if line.hasPrefix("@@") { lines.append(line) }
        }
    }

    /// Writes one line to the guest's console.
    func send(_ line: String) {
        consoleIn.fileHandleForWriting.write(Data((line + "\n").utf8))
    }

    private func nextLine(deadline: ContinuousClock.Instant) throws -> String? {
        while true {
            if let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                var line = String(decoding: pending[..<newline], as: UTF8.self)
                pending.removeSubrange(...newline)
                line = line.trimmingCharacters(in: CharacterSet(charactersIn: "\r"))
                transcript.append(line)
                return line
            }
            let left = deadline - ContinuousClock.now
            guard left > .zero else {
                throw MachineError(description: "timed out waiting for the guest\n\(log)")
            }
            let console = FileDescriptor(rawValue: consoleOut.fileHandleForReading.fileDescriptor)
            let ms = Int32(min(left.components.seconds * 1000 + 1, 1000))
            guard SystemCall.isReadable(console, within: ms) else { if !process.isRunning { return nil }; continue }
            var buffer = [UInt8](repeating: 0, count: 4096)
            let n = (try? buffer.withUnsafeMutableBytes { try console.read(into: $0) }) ?? -1
            if n <= 0 { return nil }
            pending += buffer[0..<n]
        }
    }

    // MARK: QMP

    /// Runs one QMP command and returns its "return" object (events on the way are skipped).
    @discardableResult
    func qmp(_ command: String, arguments: [String: Any] = [:]) throws -> [String: Any] {
        try qmpValue(command, arguments: arguments) as? [String: Any] ?? [:]
    }

    /// Runs one QMP command and returns its "return" value as it is (`qom-get` returns a number or a string).
    func qmpValue(_ command: String, arguments: [String: Any] = [:]) throws -> Any {
        if qmpSocket == nil { try connectQMP() }
        var request: [String: Any] = ["execute": command]
        if !arguments.isEmpty { request["arguments"] = arguments }
        try qmpSend(String(decoding: try JSONSerialization.data(withJSONObject: request), as: UTF8.self))
        while true {
            let reply = try qmpReadObject()
            if let error = reply["error"] { throw MachineError(description: "QMP \(command): \(error)") }
            if let value = reply["return"] { return value }
        }
    }

    private func connectQMP() throws {
        // QEMU opens its QMP socket some time after it starts, and says nothing: try to connect every 20 ms.
        let connected = try waitUntil(.seconds(10), every: .milliseconds(20)) {
            let fd = try SystemCall.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue))
            do {
                try SystemCall.connect(fd, path: qmpPath)
                qmpSocket = fd
                return true
            } catch {
                try? fd.close()
                return false
            }
        }
        guard connected else { throw MachineError(description: "QMP socket \(qmpPath) never opened") }
        _ = try qmpReadObject()  // greeting
        try qmpSend(#"{"execute":"qmp_capabilities"}"#)
        _ = try qmpReadObject()
    }

    private func qmpSend(_ json: String) throws {
        let bytes = Array((json + "\n").utf8)
        guard let socket = qmpSocket, (try? bytes.withUnsafeBytes { try SystemCall.send(socket, $0) }) == bytes.count else {
            throw MachineError(description: "QMP write failed")
        }
    }

    private func qmpReadObject() throws -> [String: Any] {
        while true {
            if let newline = qmpPending.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Data(qmpPending[..<newline])
                qmpPending.removeSubrange(...newline)
                if let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any] { return object }
                continue
            }
            // A QMP reply that takes over 60 s is a hung QEMU: the test fails instead of waiting on.
            var buffer = [UInt8](repeating: 0, count: 4096)
            guard let socket = qmpSocket, SystemCall.isReadable(socket, within: 60_000) else {
                throw MachineError(description: "QMP connection closed or timed out")
            }
            let n = (try? buffer.withUnsafeMutableBytes { try socket.read(into: $0) }) ?? -1
            guard n > 0 else { throw MachineError(description: "QMP connection closed or timed out") }
            qmpPending += buffer[0..<n]
        }
    }

    /// Waits for QEMU to exit; returns its exit status.
    func waitForExit(timeout: Duration = .seconds(60)) -> Int32? {
        let deadline = ContinuousClock.now + timeout
        while process.isRunning && ContinuousClock.now < deadline {
            _ = try? nextLine(deadline: min(deadline, ContinuousClock.now + .milliseconds(100)))
        }
        guard !process.isRunning else { return nil }
        process.waitUntilExit()
        return process.terminationStatus
    }
}
