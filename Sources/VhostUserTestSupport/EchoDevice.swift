import Synchronization
import SystemPackage
import VhostUser
import VhostUserEmbedded

/// A small device for engine tests and FuzzMessages. Queue 0 (on kick) answers each request with its bytes reversed;
/// queue 1 (on demand) delivers queued events. Config: 8 bytes, only byte 0 writable.
public final class EchoDevice: VhostUserDevice, @unchecked Sendable {
    /// What the device touches outside itself: the size of a file it is given, and the acknowledgement
    /// eventfd it asks the engine to watch. Posix (real eventfd, fstat) or one embedded host's.
    public struct Environment: @unchecked Sendable {
        public var fileSize: (HostDescriptor) -> Int?
        public var acknowledgement: HostDescriptor
        public var signal: (HostDescriptor) -> Void
        public var drain: (HostDescriptor) -> Void
        /// Keeps the Posix acknowledgement eventfd open for the device's life.
        var owner: TestDescriptor?

        public static func posix() -> Environment {
            let eventFD = TestDescriptor(posix: try! SystemCall.eventFD())
            return Environment(fileSize: { try? Int(FileDescriptor($0).stat().size) },
                               acknowledgement: HostDescriptor(eventFD.fileDescriptor),
                               signal: { SystemCall.signal(FileDescriptor($0)) }, drain: { SystemCall.drain(FileDescriptor($0)) },
                               owner: eventFD)
        }

        public static func embedded(_ host: EmbeddedHost) -> Environment {
            Environment(fileSize: { descriptor in
                            guard case .memory(let memory) = host.object(descriptor) else { return nil }
                            return memory.bytes.count
                        },
                        acknowledgement: host.open(.event(EmbeddedEvent())),
                        signal: { host.signal($0) }, drain: { host.drain($0) }, owner: nil)
        }
    }

    public let environment: Environment

    public init(_ environment: Environment = .posix()) {
        self.environment = environment
    }

    public struct State {
        public var resets = 0
        public var negotiated: UInt64 = 0
        public var config: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]
        public var events: [[UInt8]] = []
        public var processed = 0
        /// The most chains one `processChains` call handled (one lock hold in a locking device).
        public var mostChainsPerCall = 0
        /// A request starting with `waitMarker` must wait for `acknowledgement` (completionMustWait).
        public var lastRequestWaits = false
        public var acknowledged = false
        public var forcedCompletions = 0
        /// Off unless a test turns it on: other tests send arbitrary bytes, the marker among them.
        public var waitsEnabled = false
    }

    public let state = Mutex(State())
    public static let featureA: UInt64 = 1 << 0
    public static let featureB: UInt64 = 1 << 5

    public var deviceFeatures: UInt64 { Self.featureA | Self.featureB }
    public var queueCount: Int { 2 }
    public var maxQueueSize: Int { 1024 }

    public func readConfig() -> [UInt8] { state.withLock { $0.config } }

    public func writeConfig(offset: Int, bytes: [UInt8], migration: Bool) -> Bool {
        state.withLock { s in
            for (i, byte) in bytes.enumerated() where offset + i != 0 && byte != s.config[offset + i] && !migration {
                return false
            }
            if offset == 0, let first = bytes.first { s.config[0] = first }
            return true
        }
    }

    public func setNegotiatedFeatures(_ features: UInt64) { state.withLock { $0.negotiated = features } }
    public func mode(ofQueue queue: Int) -> QueueMode { queue == 0 ? .onKick : .onDemand }
    public func hasPendingWork(queue: Int) -> Bool { state.withLock { !$0.events.isEmpty } }

    public func process(queue: Int, readable: ChainReadable, writable: ChainWritable) -> Int {
        var input: [UInt8] = []
        for part in readable { input.append(contentsOf: part) }
        let output: [UInt8] = queue == 0 ? input.reversed() : state.withLock { $0.events.isEmpty ? [] : $0.events.removeFirst() }
        var written = 0
        for part in writable where written < output.count {
            let n = min(part.count, output.count - written)
            output.withUnsafeBytes { part.baseAddress!.copyMemory(from: $0.baseAddress! + written, byteCount: n) }
            written += n
        }
        state.withLock {
            $0.processed += 1
            if queue == 0 && $0.waitsEnabled && input.first == Self.waitMarker { $0.lastRequestWaits = true; $0.acknowledged = false }
        }
        return written
    }

    /// With `waitsEnabled`, requests that start with this byte complete only after `acknowledge()` (or a
    /// forced completion).
    public static let waitMarker: UInt8 = 0xEE
    /// The eventfd the engine watches for this device; `acknowledge()` signals it.
    public var acknowledgement: HostDescriptor { environment.acknowledgement }
    public var watchedDescriptors: [HostDescriptor] { [environment.acknowledgement] }

    public func completionMustWait(queue: Int) -> Bool {
        state.withLock { s in
            defer { s.lastRequestWaits = false }
            return s.lastRequestWaits
        }
    }
    public func completionMayProceed(queue: Int) -> Bool { state.withLock { $0.acknowledged } }
    public func completionForced(queue: Int) { state.withLock { $0.forcedCompletions += 1 } }
    public func watchedDescriptorReady(_ descriptor: HostDescriptor) {
        environment.drain(descriptor)
        state.withLock { $0.acknowledged = true }
    }
    public func acknowledge() { environment.signal(environment.acknowledgement) }
    public var forcedCompletions: Int { state.withLock { $0.forcedCompletions } }
    public func enableWaits() { state.withLock { $0.waitsEnabled = true } }

    public func processChains(queue: Int, _ drain: (_ handle: (ChainReadable, ChainWritable) -> Int) -> Void) {
        var chains = 0
        drain { readable, writable in
            chains += 1
            return process(queue: queue, readable: readable, writable: writable)
        }
        state.withLock { $0.mostChainsPerCall = max($0.mostChainsPerCall, chains) }
    }

    public func reset() { state.withLock { $0.resets += 1; $0.events = [] } }

    /// Device request 0x10001 answers its payload reversed, then how many descriptors came and how
    /// many 256-byte units the first one's file holds; it keeps the first descriptor, leaving the rest to the
    /// engine. Any other device request is refused.
    public static let echoRequest: UInt32 = 0x10001
    public func handleDeviceRequest(_ request: UInt32, payload: [UInt8], descriptors: inout ReceivedDescriptors) -> [UInt8]? {
        guard request == Self.echoRequest else { return nil }
        var size: UInt8 = 0
        if descriptors.count > 0 {
            let kept = descriptors.take(0)
            if let bytes = environment.fileSize(kept.descriptor) { size = UInt8(truncatingIfNeeded: bytes >> 8) }
        }
        return payload.reversed() + [UInt8(descriptors.count), size]
    }
    public var mostChainsPerCall: Int { state.withLock { $0.mostChainsPerCall } }

    public var resets: Int { state.withLock { $0.resets } }
    public var processed: Int { state.withLock { $0.processed } }
    public func post(_ event: [UInt8]) { state.withLock { $0.events.append(event) } }
}
