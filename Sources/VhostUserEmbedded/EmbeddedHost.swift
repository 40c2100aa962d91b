import Synchronization
import VhostUserCore

/// The engine's host made of memory only, for `EmbeddedVhostUser`: descriptors are numbers naming
/// in-memory objects (guest RAM, eventfd-like counters, a back-end channel that records what it is sent),
/// the front-end's socket is two byte queues, and the clock moves only when told. Passing a descriptor to
/// the engine gives it a number of its own for the same object, as SCM_RIGHTS does.
public final class EmbeddedHost: VhostUserHost, @unchecked Sendable {
    /// What a descriptor number names.
    public enum Object {
        case memory(EmbeddedMemory)
        case event(EmbeddedEvent)
        case channel(EmbeddedChannel)
    }

    private var objects: [Int32: Object] = [:]
    private var nextNumber: Int32 = 1_000
    /// Numbers handed to the engine (through messages) and not yet closed by it.
    public private(set) var engineHeld: Set<Int32> = []
    /// Watched descriptors and their tokens, in registration order.
    public private(set) var watched: [(descriptor: HostDescriptor, token: UInt64)] = []
    /// Bytes from the front-end not yet fed to the engine, each chunk with the descriptors sent with it.
    var inbound: [(bytes: [UInt8], descriptors: [Int32])] = []
    /// Bytes the engine wrote to the front-end and the test has not read.
    public internal(set) var outbound: [UInt8] = []
    /// The engine this host feeds (set right after both exist).
    unowned(unsafe) var engine: VhostUserEngine!
    /// The host's clock: starts at creation, moves only through `advance(by:)`.
    private var instant = ContinuousClock.now
    /// Set from any thread by the engine's waker.
    let wakeRequested = Atomic<Bool>(false)

    public init() {}

    public var now: ContinuousClock.Instant { instant }

    public func advance(by duration: Duration) { instant += duration }

    // MARK: Descriptors

    /// A new number for `object`, owned by the test.
    public func open(_ object: Object) -> HostDescriptor {
        nextNumber += 1
        objects[nextNumber] = object
        return HostDescriptor(rawValue: nextNumber)
    }

    public func object(_ descriptor: HostDescriptor) -> Object? { objects[descriptor.rawValue] }

    /// Another number for the same object, now the engine's (what SCM_RIGHTS makes of a sent descriptor).
    func pass(_ descriptor: HostDescriptor) -> Int32 {
        guard let object = objects[descriptor.rawValue] else { return -1 }
        let passed = open(object).rawValue
        engineHeld.insert(passed)
        return passed
    }

    public func close(_ descriptor: HostDescriptor) {
        objects[descriptor.rawValue] = nil
        engineHeld.remove(descriptor.rawValue)
        watched.removeAll { $0.descriptor == descriptor }
    }

    private func event(_ descriptor: HostDescriptor) -> EmbeddedEvent? {
        if case .event(let event) = objects[descriptor.rawValue] { return event }
        return nil
    }

    public func signal(_ descriptor: HostDescriptor) { event(descriptor)?.signal() }

    public func drain(_ descriptor: HostDescriptor) { _ = event(descriptor)?.drain() }

    public func watch(_ descriptor: HostDescriptor, token: UInt64) throws(HostError) {
        guard objects[descriptor.rawValue] != nil else { throw HostError("descriptor \(descriptor) is not open") }
        guard !watched.contains(where: { $0.descriptor == descriptor }) else { throw HostError("descriptor \(descriptor) is already watched") }
        watched.append((descriptor, token))
    }

    public func unwatch(_ descriptor: HostDescriptor) { watched.removeAll { $0.descriptor == descriptor } }

    /// Tokens of the watched descriptors that are readable now (an eventfd with a nonzero count).
    var readyTokens: [UInt64] {
        watched.filter { event($0.descriptor)?.count ?? 0 > 0 }.map(\.token)
    }

    public func map(_ descriptor: HostDescriptor, size: UInt64, offset: UInt64) throws(MemoryError) -> any MemoryMapping {
        guard case .memory(let memory) = objects[descriptor.rawValue] else { throw .mapFailed("not a memory descriptor") }
        // As mmap of a file: the mapping must lie within it (beyond its end an access would fault).
        let (end, overflow) = offset.addingReportingOverflow(size)
        guard !overflow, end <= UInt64(memory.bytes.count) else { throw .invalidRegion }
        return EmbeddedMapping(memory, offset: Int(offset), count: Int(size))
    }

    // MARK: The front-end's socket and the back-end channel

    public func sendToFrontend(_ bytes: [UInt8]) { outbound.append(contentsOf: bytes) }

    public func sendOnBackendChannel(_ descriptor: HostDescriptor, _ bytes: [UInt8]) {
        guard case .channel(let channel) = objects[descriptor.rawValue] else { return }
        channel.messages.append(bytes)
    }

    /// The connection is gone: bytes not yet fed are lost, and the descriptors sent with them closed (as
    /// the kernel closes descriptors in flight on a socket that closes).
    func dropInbound() {
        for chunk in inbound { for number in chunk.descriptors { close(HostDescriptor(rawValue: number)) } }
        inbound.removeAll()
    }

    public func receiveWaitingMessages() -> Bool {
        while !inbound.isEmpty && !engine.disconnectRequested {
            let (bytes, descriptors) = inbound.removeFirst()
            bytes.withUnsafeBytes { engine.receive($0, descriptors: descriptors) }
        }
        return !engine.disconnectRequested
    }
}

/// Guest RAM (or any memory file) of the embedded host: zeroed, page-aligned, freed with the last mapping.
public final class EmbeddedMemory: @unchecked Sendable {
    public let bytes: UnsafeMutableRawBufferPointer

    public init(size: Int) {
        bytes = .allocate(byteCount: max(size, 1), alignment: 4096)
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit { bytes.deallocate() }
}

/// A mapping of part of an `EmbeddedMemory`, which it keeps alive.
final class EmbeddedMapping: MemoryMapping, @unchecked Sendable {
    let memory: EmbeddedMemory
    let bytes: UnsafeMutableRawBufferPointer

    init(_ memory: EmbeddedMemory, offset: Int, count: Int) {
        self.memory = memory
        bytes = UnsafeMutableRawBufferPointer(rebasing: memory.bytes[offset..<offset + count])
    }
}

/// An eventfd's counter: signals add one, a drain reads and clears it.
public final class EmbeddedEvent: @unchecked Sendable {
    public private(set) var count: UInt64 = 0

    public init() {}

    public func signal() { count &+= 1 }

    /// The count before clearing it (what an eventfd read returns); 0 if it was not signalled.
    @discardableResult
    public func drain() -> UInt64 {
        defer { count = 0 }
        return count
    }
}

/// The back-end channel's other end: the messages the engine sent on it, each whole.
public final class EmbeddedChannel: @unchecked Sendable {
    public var messages: [[UInt8]] = []

    public init() {}
}
