import CVhostUser
import Glibc
import SystemPackage
import VhostUser
import VhostUserEmbedded

public enum FrontendError: Error, Hashable {
    case timedOut
    case closed
    case unexpectedReply(request: UInt32, flags: UInt32)
    case system(Errno)
}

/// A vhost-user front-end for tests and benchmarks, in the spirit of rust-vmm's `Frontend`: it speaks
/// the protocol in QEMU's message order, over a real socket or into the embedded driver (whose engine
/// a read of a reply runs until the reply is there; descriptors are then the embedded host's numbers).
public final class TestFrontend: @unchecked Sendable {
    /// The socket (Posix front-ends), closed with the front-end.
    private let socket: TestDescriptor?
    private let embedded: EmbeddedVhostUser?
    public var replyTimeout: Duration = .seconds(5)
    /// Whether REPLY_ACK was negotiated (then messages QEMU acks carry NEED_REPLY).
    public private(set) var replyAck = false

    public init(socket: consuming OwnedFileDescriptor) {
        self.socket = TestDescriptor(posix: socket.release())
        embedded = nil
    }

    public init(embedded: EmbeddedVhostUser) {
        socket = nil
        self.embedded = embedded
    }

    /// The socket (Posix front-ends only).
    public var socketDescriptor: FileDescriptor { socket!.fileDescriptor }

    public convenience init(connectingTo path: String) throws {
        let fd = try SystemCall.socket(AF_UNIX, CInt(SOCK_STREAM.rawValue))
        let owned = OwnedFileDescriptor(fd)
        try SystemCall.connect(fd, path: path)
        self.init(socket: owned)
    }

    /// A connected pair: the front-end and the descriptor to hand to `VhostUserBackend.serve`.
    public static func pair() throws -> (TestFrontend, FileDescriptor) {
        let (a, b) = try SystemCall.socketPair()
        return (TestFrontend(socket: OwnedFileDescriptor(a)), b)
    }

    // MARK: Raw messages

    public func sendRaw(_ bytes: [UInt8], fds: [CInt] = []) throws {
        if let embedded {
            guard embedded.isConnected else { throw FrontendError.closed }
            embedded.sendRaw(bytes, descriptors: fds.map { HostDescriptor(rawValue: $0) })
            return
        }
        let socket = socketDescriptor
        var offset = 0
        while offset < bytes.count {
            let n = try bytes.withUnsafeBytes { b in
                try SystemCall.send(socket, UnsafeRawBufferPointer(rebasing: b[offset...]), fds: offset == 0 ? fds : [])
            }
            offset += n
        }
    }

    public func send(_ request: FrontendRequest, _ payload: [UInt8] = [], fds: [CInt] = [], needReply: Bool = false) throws {
        try sendRaw(Self.message(request.rawValue, payload, needReply: needReply), fds: fds)
    }

    private func readExactly(_ count: Int) throws -> [UInt8] {
        if let embedded {
            // Turns until the bytes are there; a turn that finds nothing to do cannot bring them.
            while embedded.host.outbound.count < count && embedded.isConnected && embedded.step() {}
            guard embedded.host.outbound.count >= count else { throw embedded.isConnected ? FrontendError.timedOut : FrontendError.closed }
            return embedded.readOutbound(count)
        }
        let socket = socketDescriptor
        var out = [UInt8](repeating: 0, count: count)
        var got = 0
        let deadline = ContinuousClock.now + replyTimeout
        while got < count {
            guard SystemCall.isReadable(socket, before: deadline) else { throw FrontendError.timedOut }
            var fds: [CInt] = []
            let n = try out.withUnsafeMutableBytes { b in
                try SystemCall.receive(socket, into: UnsafeMutableRawBufferPointer(rebasing: b[got...]), fds: &fds)
            }
            for fd in fds { try? FileDescriptor(rawValue: fd).close() }
            if n == 0 { throw FrontendError.closed }
            got += n
        }
        return out
    }

    /// Reads one reply; checks it answers `request` with flags exactly 0x5, as QEMU does.
    public func receiveReply(to request: FrontendRequest) throws -> [UInt8] {
        try receiveReply(toRaw: request.rawValue)
    }

    public func receiveReply(toRaw request: UInt32) throws -> [UInt8] {
        let headerBytes = try readExactly(MessageHeader.size)
        let header = headerBytes.withUnsafeBytes { raw in
            MessageHeader(request: raw.loadUnaligned(fromByteOffset: 0, as: UInt32.self),
                          flags: raw.loadUnaligned(fromByteOffset: 4, as: UInt32.self),
                          size: raw.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
        }
        guard header.request == request, header.flags == MessageHeader.replyFlags else {
            throw FrontendError.unexpectedReply(request: header.request, flags: header.flags)
        }
        return try readExactly(Int(header.size))
    }

    /// Sends a message that QEMU acks when REPLY_ACK is on; returns true on success (0).
    @discardableResult
    public func sendAcked(_ request: FrontendRequest, _ payload: [UInt8] = [], fds: [CInt] = []) throws -> Bool {
        try send(request, payload, fds: fds, needReply: replyAck)
        guard replyAck else { return true }
        return Self.u64(try receiveReply(to: request)) == 0
    }

    public func getU64(_ request: FrontendRequest) throws -> UInt64 {
        try send(request)
        return Self.u64(try receiveReply(to: request))
    }

    /// A message's bytes: the header (version 1, NEED_REPLY if asked) and the payload.
    public static func message(_ id: UInt32, _ payload: [UInt8], needReply: Bool) -> [UInt8] {
        MessageHeader(request: id, flags: MessageHeader.version | (needReply ? MessageHeader.needReplyFlag : 0),
                      size: UInt32(payload.count)).bytes + payload
    }

    /// A device request's bytes (id in the device's own range), asking for a reply unless told not to.
    public static func deviceRequest(_ id: UInt32, _ payload: [UInt8], needReply: Bool = true) -> [UInt8] {
        message(id, payload, needReply: needReply)
    }

    public static func u64(_ bytes: [UInt8]) -> UInt64 {
        guard bytes.count == 8 else { return .max }
        return bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }

    public static func bytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    // MARK: Typed messages

    public func getFeatures() throws -> UInt64 { try getU64(.getFeatures) }
    public func setFeatures(_ features: UInt64) throws { try send(.setFeatures, Self.bytes(features)) }
    public func getProtocolFeatures() throws -> ProtocolFeatures { ProtocolFeatures(rawValue: try getU64(.getProtocolFeatures)) }
    public func setProtocolFeatures(_ features: ProtocolFeatures) throws {
        try send(.setProtocolFeatures, Self.bytes(features.rawValue))
        replyAck = features.contains(.replyAck)
    }
    public func setOwner() throws { try send(.setOwner) }

    @discardableResult
    public func setMemTable(_ regions: [SharedMemory]) throws -> Bool {
        var payload = Self.bytes(UInt32(regions.count)) + Self.bytes(UInt32(0))
        for region in regions { payload += region.regionDescription }
        return try sendAcked(.setMemTable, payload, fds: regions.map { $0.descriptor.rawValue })
    }

    @discardableResult
    public func addMemoryRegion(_ region: SharedMemory) throws -> Bool {
        try sendAcked(.addMemReg, Self.bytes(UInt64(0)) + region.regionDescription, fds: [region.descriptor.rawValue])
    }

    @discardableResult
    public func removeMemoryRegion(_ region: SharedMemory) throws -> Bool {
        try sendAcked(.remMemReg, Self.bytes(UInt64(0)) + region.regionDescription)
    }

    public func vringState(_ index: Int, _ num: UInt32) -> [UInt8] { Self.bytes(UInt32(index)) + Self.bytes(num) }

    public func setVringNum(_ index: Int, _ size: Int) throws { try send(.setVringNum, vringState(index, UInt32(size))) }
    public func setVringBase(_ index: Int, _ base: UInt16) throws { try send(.setVringBase, vringState(index, UInt32(base))) }
    public func getVringBase(_ index: Int) throws -> UInt32 {
        try send(.getVringBase, vringState(index, 0))
        let reply = try receiveReply(to: .getVringBase)
        guard reply.count == 8 else { throw FrontendError.closed }
        return reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) }
    }
    public func setVringAddr(_ index: Int, descriptors: UInt64, used: UInt64, avail: UInt64) throws {
        try send(.setVringAddr, Self.bytes(UInt32(index)) + Self.bytes(UInt32(0)) + Self.bytes(descriptors)
                 + Self.bytes(used) + Self.bytes(avail) + Self.bytes(UInt64(0)))
    }
    public func setVringFD(_ request: FrontendRequest, _ index: Int, _ fd: CInt?) throws {
        let value = UInt64(index) | (fd == nil ? 1 << 8 : 0)
        try send(request, Self.bytes(value), fds: fd.map { [$0] } ?? [])
    }
    @discardableResult
    public func setVringEnable(_ index: Int, _ enabled: Bool) throws -> Bool {
        try sendAcked(.setVringEnable, vringState(index, enabled ? 1 : 0))
    }
    public func getConfig(offset: Int = 0, size: Int) throws -> [UInt8] {
        try send(.getConfig, Self.bytes(UInt32(offset)) + Self.bytes(UInt32(size)) + Self.bytes(UInt32(0))
                 + [UInt8](repeating: 0, count: size))
        let reply = try receiveReply(to: .getConfig)
        return reply.count >= 12 ? Array(reply[12...]) : []
    }
    @discardableResult
    public func setConfig(offset: Int = 0, _ bytes: [UInt8], migration: Bool = false) throws -> Bool {
        try sendAcked(.setConfig, Self.bytes(UInt32(offset)) + Self.bytes(UInt32(bytes.count))
                      + Self.bytes(UInt32(migration ? 1 : 0)) + bytes)
    }
    /// QEMU waits for SET_STATUS (REPLY_ACK, or a GET_FEATURES round trip without it).
    @discardableResult
    public func setStatus(_ status: UInt8) throws -> Bool {
        let ok = try sendAcked(.setStatus, Self.bytes(UInt64(status)))
        if !replyAck { _ = try getFeatures() }
        return ok
    }
    public func getStatus() throws -> UInt8 { UInt8(truncatingIfNeeded: try getU64(.getStatus)) }

    /// A round trip (GET_FEATURES) that orders the test after the back-end's earlier work. The back-end
    /// serves rings and messages on one thread and signals a call right after it publishes used.idx, in
    /// the same turn; a message sent after the test saw a used entry is read only after that turn. So
    /// once the reply is here, every call owed for used entries the test saw before `sync()` has been
    /// signalled: a test that expects no call syncs first, then checks `wasCalled()`.
    public func sync() throws { _ = try getFeatures() }

    // MARK: QEMU's sequences (qemu-and-vhost-user.md §3.7)

    /// What `vhost_user_backend_init` and `vhost_dev_init` send; returns the back-end's features.
    @discardableResult
    public func initialize(protocolFeatures wanted: ProtocolFeatures = ProtocolFeatures.supported,
                           queues: [DriverQueue]) throws -> UInt64 {
        let features = try getFeatures()
        if features & TransportFeatures.protocolFeatures != 0 {
            let offered = try getProtocolFeatures()
            try setProtocolFeatures(offered.intersection(wanted))
            if offered.contains(.multipleQueues) { _ = try getU64(.getQueueNum) }
            if offered.contains(.configureMemorySlots) { _ = try getU64(.getMaxMemSlots) }
        }
        try setOwner()
        _ = try getFeatures()
        for queue in queues {
            try setVringFD(.setVringCall, queue.index, queue.call.rawValue)
            try setVringFD(.setVringErr, queue.index, queue.errorDescriptor.rawValue)
        }
        return features
    }

    /// `vhost_dev_start` for the generic device: features, memory, rings, enable, status.
    public func start(features: UInt64, memory: [SharedMemory], queues: [DriverQueue], bases: [UInt16]? = nil) throws {
        try setFeatures(features)
        try setMemTable(memory)
        for (i, queue) in queues.enumerated() {
            try setVringNum(queue.index, queue.size)
            try setVringBase(queue.index, bases?[i] ?? queue.availIndex)
            let a = queue.userAddresses
            try setVringAddr(queue.index, descriptors: a.descriptors, used: a.used, avail: a.avail)
            try setVringFD(.setVringKick, queue.index, queue.kick.rawValue)
            try setVringFD(.setVringCall, queue.index, queue.call.rawValue)
        }
        if features & TransportFeatures.protocolFeatures != 0 {
            for queue in queues { try setVringEnable(queue.index, true) }
        }
        // vhost-user-base unmasks every queue, which sends SET_VRING_CALL again.
        for queue in queues { try setVringFD(.setVringCall, queue.index, queue.call.rawValue) }
        try setStatus(0x0f)
    }

    /// Closes the connection the way a crashing front-end would.
    public func disconnect() {
        if let embedded { embedded.disconnect() } else { shutdown(socketDescriptor.rawValue, CInt(SHUT_RDWR)) }
    }

    /// `do_vhost_dev_stop`: disable every ring, fetch every base, clear the status.
    @discardableResult
    public func stop(queues: [DriverQueue], enableMessages: Bool = true) throws -> [UInt32] {
        if enableMessages { for queue in queues { try setVringEnable(queue.index, false) } }
        let bases = try queues.map { try getVringBase($0.index) }
        try setStatus(0)
        return bases
    }
}
