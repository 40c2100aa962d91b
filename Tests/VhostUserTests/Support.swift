import Glibc
import Logging
import Synchronization
import SystemPackage
import Testing
@testable import VhostUser
@testable import VhostUserCore
import VhostUserTestSupport


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
