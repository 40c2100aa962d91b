import Foundation
import Glibc
import Logging
import PASIDAllocators
import Synchronization
import SystemPackage
import VhostUser
import VirtioIOMMU

/// The control socket: one JSON object per line in, one reply line out (translate, stats, domains).
/// It runs on its own thread and takes the device lock only for the length of one request, so it
/// never blocks the device's queues for long.
final class ControlServer: @unchecked Sendable {
    static let maxLineLength = 64 * 1024
    static let maxClients = 64

    private let listener: Listener
    private let device: VhostUserIOMMU
    private let logger: Logger
    private let wake: OwnedFileDescriptor
    private let stopped = Atomic<Bool>(false)
    private var thread: OSThread?
    /// Where `stats` comes from (the device and the engine), asked on the control thread.
    private let sources: [any StatisticsSource]

    init(path: String, device: VhostUserIOMMU, sources: [any StatisticsSource], logger: Logger) throws {
        listener = try Listener(path: path)
        self.device = device
        self.sources = sources
        self.logger = logger
        wake = OwnedFileDescriptor(try SystemCall.eventFD())
        try SystemCall.setNonBlocking(listener.socketDescriptor)
        thread = OSThread { [self] in run() }
        logger.info("control socket on \(path)")
    }

    func stop() {
        guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
        SystemCall.signal(wake.descriptor)
        thread?.join()
    }

    private struct Client {
        var fd: FileDescriptor
        var input: [UInt8] = []
        var output: [UInt8] = []
    }

    private func run() {
        var clients: [Client] = []
        defer { for client in clients { try? client.fd.close() } }
        while !stopped.load(ordering: .acquiring) {
            var fds = [pollfd(fd: wake.rawValue, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: listener.socketDescriptor.rawValue, events: Int16(POLLIN), revents: 0)]
            for client in clients {
                fds.append(pollfd(fd: client.fd.rawValue, events: Int16(POLLIN) | (client.output.isEmpty ? 0 : Int16(POLLOUT)), revents: 0))
            }
            guard (try? SystemCall.poll(&fds, timeout: -1)) != nil else { continue }
            if fds[1].revents & Int16(POLLIN) != 0, let fd = try? SystemCall.accept(listener.socketDescriptor) {
                if clients.count < Self.maxClients, (try? SystemCall.setNonBlocking(fd)) != nil {
                    clients.append(Client(fd: fd))
                } else {
                    try? fd.close()
                }
            }
            var closed: Set<CInt> = []
            for (i, pfd) in fds.enumerated().dropFirst(2) where pfd.revents != 0 {
                let index = i - 2
                if pfd.revents & Int16(POLLOUT) != 0 { flush(&clients[index]) }
                if pfd.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0, !read(&clients[index]) { closed.insert(pfd.fd) }
            }
            for client in clients where closed.contains(client.fd.rawValue) { try? client.fd.close() }
            clients.removeAll { closed.contains($0.fd.rawValue) }
        }
    }

    /// Reads what is there and answers every complete line; false when the client is gone.
    private func read(_ client: inout Client) -> Bool {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n: Int
            do {
                n = try buffer.withUnsafeMutableBytes { try client.fd.read(into: $0) }
            } catch {
                return (error as? Errno) == .wouldBlock
            }
            if n == 0 { return false }
            client.input.append(contentsOf: buffer[0..<n])
            while let newline = client.input.firstIndex(of: UInt8(ascii: "\n")) {
                let line = Array(client.input[..<newline])
                client.input.removeSubrange(...newline)
                client.output += answer(line) + [UInt8(ascii: "\n")]
            }
            if client.input.count > Self.maxLineLength {
                client.output += Self.encode(ControlReply.error("line longer than \(Self.maxLineLength) bytes")) + [UInt8(ascii: "\n")]
                flush(&client)
                return false
            }
            flush(&client)
            if client.output.count > 4 * Self.maxLineLength { return false }  // not reading its replies
        }
    }

    private func flush(_ client: inout Client) {
        while !client.output.isEmpty {
            guard let n = try? client.output.withUnsafeBytes({ bytes throws(Errno) in try SystemCall.send(client.fd, bytes) }),
                  n > 0 else { return }
            client.output.removeFirst(n)
        }
    }

    func answer(_ line: [UInt8]) -> [UInt8] {
        let request: ControlRequest
        do {
            request = try JSONDecoder().decode(ControlRequest.self, from: Data(line))
        } catch {
            return Self.encode(ControlReply.error("malformed request: expected a JSON object with \"op\""))
        }
        return Self.encode(handle(request))
    }

    private func handle(_ request: ControlRequest) -> ControlReply {
        switch request.op {
        case "translate":
            guard let endpoint = request.endpoint, let iova = request.iova, let length = request.length,
                  let access = request.access.flatMap(Access.init(name:)) else {
                return .error("translate needs endpoint, iova, length and access (read, write or readwrite)")
            }
            if let pasid = request.pasid, pasid == 0 || pasid >= 1 << maxPASIDWidth {
                return .error("pasid must be 1...\((1 << maxPASIDWidth) - 1)")
            }
            switch device.translate(endpoint: endpoint, pasid: request.pasid, iova: iova, length: length, access: access) {
            case .success(let segments):
                return ControlReply(ok: true, segments: segments.map { .init(gpa: $0.address, length: $0.length) })
            case .failure(.fault(let fault)):
                return ControlReply(ok: false, fault: .init(fault))
            case .failure(.unknownEndpoint(let id)):
                return .error("unknown endpoint \(id)")
            case .failure(.invalidRange):
                return .error("length must be at least 1 and the range must end by 2^64-1")
            }
        case "detach":
            guard let endpoint = request.endpoint else { return .error("detach needs endpoint") }
            switch device.detachForOperator(endpoint: endpoint) {
            case .success: return ControlReply(ok: true)
            case .failure(let failure): return .error(failure.reason)
            }
        case "stats":
            return ControlReply(ok: true, stats: Statistics(sources))
        case "domains":
            let domains = device.model.withLock { model in
                model.domains.values.sorted { $0.id < $1.id }.map {
                    ControlReply.DomainInfo(id: $0.id, endpoints: $0.endpoints.sorted(), mappings: $0.mappings.count, bypass: $0.isBypass)
                }
            }
            return ControlReply(ok: true, domains: domains)
        default:
            return .error("unknown op \"\(request.op)\"")
        }
    }

    static func encode(_ reply: ControlReply) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return (try? Array(encoder.encode(reply))) ?? Array(#"{"ok":false,"error":"encoding failed"}"#.utf8)
    }
}

extension Listener {
    var socketDescriptor: FileDescriptor { socket.descriptor }
}

extension Access {
    init?(name: String) {
        switch name {
        case "read": self = .read
        case "write": self = .write
        case "readwrite", "rw": self = [.read, .write]
        default: return nil
        }
    }
}
