import Glibc
import Logging
import Synchronization
import VhostUser
import VhostUserEmbedded

/// An `EchoDevice` behind the engine, with a test front-end, guest memory and two driver queues:
/// either the Posix back-end serving a socket on its own thread, or the embedded driver (no threads,
/// sockets or sleeps: every wait of the test side runs the engine). The engine's tests choose the
/// embedded side wherever they test logic, and the Posix side where they test the OS.
public final class EngineHarness {
    public let side: TestBackendSide
    public let device: EchoDevice
    public let engine: VhostUserEngine
    /// The Posix back-end (nil on the embedded side).
    public let backend: VhostUserBackend?
    /// The embedded driver (nil on the Posix side).
    public let embedded: EmbeddedVhostUser?
    public let frontend: TestFrontend
    public let memory: SharedMemory
    public let queues: [DriverQueue]
    private let thread: OSThread?
    private final class OutcomeBox: Sendable { let value = Mutex<VhostUserBackend.Outcome?>(nil) }
    private let result = OutcomeBox()
    private var finished = false

    public enum Kind: Sendable { case posix, embedded }

    /// `polling`, when given, replaces the policy made from `pollMaximum` (nanoseconds; 0: no polling).
    public init(_ kind: Kind, queueSize: Int = 256, memorySize: Int = 4 << 20, pollMaximum: UInt64 = 0,
                polling: AdaptivePolling? = nil) throws {
        let polling = polling ?? AdaptivePolling(maximumNanoseconds: pollMaximum)
        var logger = Logger(label: "test")
        logger.logLevel = getenv("VU_TEST_LOG") != nil ? .debug : .critical
        switch kind {
        case .posix:
            device = EchoDevice(.posix())
            let backend = try VhostUserBackend(device: device, polling: polling, logger: logger)
            self.backend = backend
            embedded = nil
            engine = backend.engine
            side = .posix
            let (frontend, backendEnd) = try TestFrontend.pair()
            self.frontend = frontend
            let box = UncheckedBox(value: (backend, backendEnd, result))
            thread = OSThread {
                let outcome = try? box.value.0.serve(connection: box.value.1)
                box.value.2.value.withLock { $0 = outcome }
            }
        case .embedded:
            let host = EmbeddedHost()
            device = EchoDevice(.embedded(host))
            let driver = EmbeddedVhostUser(device: device, host: host, polling: polling, logger: logger)
            embedded = driver
            backend = nil
            engine = driver.engine
            side = .embedded(driver)
            frontend = TestFrontend(embedded: driver)
            thread = nil
        }
        let memory = try SharedMemory(size: memorySize, side: side)
        self.memory = memory
        queues = try (0..<2).map { try DriverQueue(memory: memory, index: $0, size: queueSize) }
    }

    /// The device's bits and every transport bit the engine offers (virtio 1.4 §6, vhost-user.rst).
    public var allFeatures: UInt64 {
        EchoDevice.featureA | EchoDevice.featureB | VirtioSpec.VIRTIO_F_INDIRECT_DESC | VirtioSpec.VIRTIO_F_EVENT_IDX
            | VhostUserSpec.VHOST_USER_F_PROTOCOL_FEATURES | VirtioSpec.VIRTIO_F_VERSION_1
    }

    /// Initialization and start exactly as QEMU does them.
    public func start(features: UInt64? = nil, protocolFeatures: ProtocolFeatures = .supported) throws {
        try frontend.initialize(protocolFeatures: protocolFeatures, queues: queues)
        try frontend.start(features: features ?? allFeatures, memory: [memory], queues: queues)
    }

    /// Sends a request on queue 0, kicks, and waits for it to complete.
    public func roundTrip(_ bytes: [UInt8], replySize: Int? = nil) -> (DriverQueue.Used?, [UInt8]) {
        let head = queues[0].add(readable: [bytes], writable: [replySize ?? bytes.count])
        queues[0].kickNow()
        let used = queues[0].waitForUsed(1).first
        return (used, queues[0].reply(of: head))
    }

    /// Disconnects and waits for the Posix back-end's thread; returns how `serve` ended (nil on the
    /// embedded side, which has no serve loop: see `embedded.isConnected`).
    @discardableResult
    public func finish(disconnect: Bool = true) -> VhostUserBackend.Outcome? {
        if !finished {
            finished = true
            if disconnect { frontend.disconnect() }
            thread?.join()
        }
        return result.value.withLock { $0 }
    }

    deinit { _ = finish() }
}
