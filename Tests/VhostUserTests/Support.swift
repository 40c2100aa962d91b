import Glibc
import Logging
import Synchronization
import SystemPackage
import Testing
@testable import VhostUser
import VhostUserTestSupport

/// A small device for engine tests. Queue 0 (on kick) answers each request with its bytes reversed;
/// queue 1 (on demand) delivers queued events. Config: 8 bytes, only byte 0 writable.
final class EchoDevice: VhostUserDevice, @unchecked Sendable {
    struct State {
        var resets = 0
        var negotiated: UInt64 = 0
        var config: [UInt8] = [1, 2, 3, 4, 5, 6, 7, 8]
        var events: [[UInt8]] = []
        var processed = 0
        /// The most chains one `processChains` call handled (one lock hold in a locking device).
        var mostChainsPerCall = 0
        /// A request starting with `waitMarker` must wait for `acknowledgement` (completionMustWait).
        var lastRequestWaits = false
        var acknowledged = false
        var forcedCompletions = 0
        /// Off unless a test turns it on: other tests send arbitrary bytes, the marker among them.
        var waitsEnabled = false
    }

    let state = Mutex(State())
    static let featureA: UInt64 = 1 << 0
    static let featureB: UInt64 = 1 << 5

    var deviceFeatures: UInt64 { Self.featureA | Self.featureB }
    var queueCount: Int { 2 }
    var maxQueueSize: Int { 1024 }

    func readConfig() -> [UInt8] { state.withLock { $0.config } }

    func writeConfig(offset: Int, bytes: [UInt8], migration: Bool) -> Bool {
        state.withLock { s in
            for (i, byte) in bytes.enumerated() where offset + i != 0 && byte != s.config[offset + i] && !migration {
                return false
            }
            if offset == 0, let first = bytes.first { s.config[0] = first }
            return true
        }
    }

    func setNegotiatedFeatures(_ features: UInt64) { state.withLock { $0.negotiated = features } }
    func mode(ofQueue queue: Int) -> QueueMode { queue == 0 ? .onKick : .onDemand }
    func hasPendingWork(queue: Int) -> Bool { state.withLock { !$0.events.isEmpty } }

    func process(queue: Int, readable: ChainReadable, writable: ChainWritable) -> Int {
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
    static let waitMarker: UInt8 = 0xEE
    /// The eventfd the engine watches for this device; `acknowledge()` signals it.
    let acknowledgement = OwnedFileDescriptor(try! SystemCall.eventFD())
    var watchedDescriptors: [FileDescriptor] { [acknowledgement.descriptor] }

    func completionMustWait(queue: Int) -> Bool {
        state.withLock { s in
            defer { s.lastRequestWaits = false }
            return s.lastRequestWaits
        }
    }
    func completionMayProceed(queue: Int) -> Bool { state.withLock { $0.acknowledged } }
    func completionForced(queue: Int) { state.withLock { $0.forcedCompletions += 1 } }
    func watchedDescriptorReady(_ descriptor: FileDescriptor) {
        SystemCall.drain(descriptor)
        state.withLock { $0.acknowledged = true }
    }
    func acknowledge() { SystemCall.signal(acknowledgement.descriptor) }
    var forcedCompletions: Int { state.withLock { $0.forcedCompletions } }
    func enableWaits() { state.withLock { $0.waitsEnabled = true } }

    func processChains(queue: Int, _ drain: (_ handle: (ChainReadable, ChainWritable) -> Int) -> Void) {
        var chains = 0
        drain { readable, writable in
            chains += 1
            return process(queue: queue, readable: readable, writable: writable)
        }
        state.withLock { $0.mostChainsPerCall = max($0.mostChainsPerCall, chains) }
    }

    func reset() { state.withLock { $0.resets += 1; $0.events = [] } }

    /// Device request 0x10001 answers its payload reversed, then how many descriptors came and how
    /// many 256-byte units the first one's file holds; it keeps the first descriptor, leaving the rest to the
    /// engine. Any other device request is refused.
    static let echoRequest: UInt32 = 0x10001
    func handleDeviceRequest(_ request: UInt32, payload: [UInt8], descriptors: inout ReceivedDescriptors) -> [UInt8]? {
        guard request == Self.echoRequest else { return nil }
        var size: UInt8 = 0
        if descriptors.count > 0 {
            let kept = descriptors.take(0)
            if let info = try? kept.descriptor.stat() { size = UInt8(truncatingIfNeeded: info.size >> 8) }
        }
        return payload.reversed() + [UInt8(descriptors.count), size]
    }
    var mostChainsPerCall: Int { state.withLock { $0.mostChainsPerCall } }

    var resets: Int { state.withLock { $0.resets } }
    var processed: Int { state.withLock { $0.processed } }
    func post(_ event: [UInt8]) { state.withLock { $0.events.append(event) } }
}

struct UncheckedBox<T>: @unchecked Sendable { let value: T }

/// A back-end serving an `EchoDevice` on its own thread, and a test front-end connected to it.
final class Harness {
    let device = EchoDevice()
    let backend: VhostUserBackend
    let frontend: TestFrontend
    let memory: SharedMemory
    let queues: [DriverQueue]
    private let thread: OSThread
    private final class OutcomeBox: Sendable { let value = Mutex<VhostUserBackend.Outcome?>(nil) }
    private let result = OutcomeBox()
    private var finished = false

    init(queueSize: Int = 256, memorySize: Int = 4 << 20, pollMaximum: UInt64 = 0, polling: AdaptivePolling? = nil) throws {
        var logger = Logger(label: "test")
        logger.logLevel = getenv("VU_TEST_LOG") != nil ? .debug : .critical
        backend = try VhostUserBackend(device: device, polling: polling ?? AdaptivePolling(maximumNanoseconds: pollMaximum),
                                       logger: logger)
        let (frontend, backendEnd) = try TestFrontend.pair()
        self.frontend = frontend
        let memory = try SharedMemory(size: memorySize)
        self.memory = memory
        queues = try (0..<2).map { try DriverQueue(memory: memory, index: $0, size: queueSize) }
        let box = UncheckedBox(value: (backend, backendEnd, result))
        thread = OSThread {
            let outcome = try? box.value.0.serve(connection: box.value.1)
            box.value.2.value.withLock { $0 = outcome }
        }
    }

    /// The device's bits and every transport bit the engine offers (virtio 1.4 §6, vhost-user.rst).
    var allFeatures: UInt64 {
        EchoDevice.featureA | EchoDevice.featureB | VirtioSpec.VIRTIO_F_INDIRECT_DESC | VirtioSpec.VIRTIO_F_EVENT_IDX
            | VirtioSpec.VHOST_USER_F_PROTOCOL_FEATURES | VirtioSpec.VIRTIO_F_VERSION_1
    }

    /// Initialization and start exactly as QEMU does them.
    func start(features: UInt64? = nil, protocolFeatures: ProtocolFeatures = .supported) throws {
        try frontend.initialize(protocolFeatures: protocolFeatures, queues: queues)
        try frontend.start(features: features ?? allFeatures, memory: [memory], queues: queues)
    }

    /// Sends a request on queue 0, kicks, and waits for it to complete.
    func roundTrip(_ bytes: [UInt8], replySize: Int? = nil) -> (DriverQueue.Used?, [UInt8]) {
        let head = queues[0].add(readable: [bytes], writable: [replySize ?? bytes.count])
        queues[0].kickNow()
        let used = queues[0].waitForUsed(1).first
        return (used, queues[0].reply(of: head))
    }

    /// Disconnects and waits for the back-end thread; returns how `serve` ended.
    @discardableResult
    func finish(disconnect: Bool = true) -> VhostUserBackend.Outcome? {
        if !finished {
            finished = true
            if disconnect { frontend.disconnect() }
            thread.join()
        }
        return result.value.withLock { $0 }
    }

    deinit { _ = finish() }
}

/// Open descriptors of this process, to show that nothing leaks.
func openDescriptorCount() -> Int { ProcessDescriptors.count() }

/// How many descriptors of this process refer to the memfd named `name` (parallel-safe leak check).
func descriptorsReferring(to name: String) -> Int { ProcessDescriptors.targets().filter { $0.contains(name) }.count }

/// A memfd with a unique name, to follow where its descriptors go.
func namedMemfd(_ name: String) throws -> OwnedFileDescriptor {
    OwnedFileDescriptor(try SystemCall.memfd(name: name, size: 4096))
}
