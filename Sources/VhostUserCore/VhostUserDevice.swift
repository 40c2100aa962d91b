/// The device-readable and device-writable parts of one chain, as views into guest memory that are
/// valid for the duration of the call.
public typealias ChainReadable = UnsafeBufferPointer<UnsafeRawBufferPointer>
public typealias ChainWritable = UnsafeBufferPointer<UnsafeMutableRawBufferPointer>

/// How a queue's chains reach the device.
public enum QueueMode: Sendable {
    /// Every chain a kick makes available is handed to `process` (request queues).
    case onKick
    /// Chains are taken only while the device `hasPendingWork` (event queues): buffers the driver posts
    /// wait in the ring until there is something to write, and are never held by the engine.
    case onDemand
}

/// What a device implements to be served by the engine. All calls come from the event-loop thread.
public protocol VhostUserDevice: AnyObject {
    /// The device's own virtio feature bits; the engine adds the transport bits it implements.
    var deviceFeatures: UInt64 { get }
    var queueCount: Int { get }
    /// The largest queue size the device accepts (a power of two ≤ 32768).
    var maxQueueSize: Int { get }
    /// The config space as the driver reads it.
    func readConfig() -> [UInt8]
    /// Applies a config write. With `migration`, read-only bytes may differ and are not applied.
    /// Returns false to refuse the write.
    func writeConfig(offset: Int, bytes: [UInt8], migration: Bool) -> Bool
    /// The device bits of the features the front-end acknowledged.
    func setNegotiatedFeatures(_ features: UInt64)
    func mode(ofQueue queue: Int) -> QueueMode
    /// For `.onDemand` queues: whether the device has something to write now.
    func hasPendingWork(queue: Int) -> Bool
    /// Handles one chain; returns the number of bytes written to the writable part (the used length).
    func process(queue: Int, readable: ChainReadable, writable: ChainWritable) -> Int
    /// Handles the chains of one turn of an `.onKick` queue: `drain` calls its argument once per valid
    /// chain, in ring order, and publishes each returned used length. A device that locks per chain
    /// can lock once per turn here. The default calls `process` for each chain.
    func processChains(queue: Int, _ drain: (_ handle: (ChainReadable, ChainWritable) -> Int) -> Void)
    /// Returns the device to its initial state (guest reset, RESET_DEVICE or front-end disconnect).
    func reset()
    /// The engine that serves the device was made: `waker` wakes its loop from any thread (the device
    /// keeps it for work it queues for the loop thread). Called once, from the engine's initialiser.
    /// Default: nothing.
    func served(waker: Waker)
    /// The loop's wake eventfd fired (another thread asked for the loop: `VhostUserEngine.waker`); the
    /// device runs what it queued for the loop thread. Default: nothing.
    func loopWoken()
    /// The front-end connection ended (before the reset that follows): whatever the device set up with
    /// that front-end (device requests, watched descriptors) ends with it. Default: nothing.
    func frontendDisconnected()
    /// Whether the device wants the connection closed (the front-end broke a protocol of the device's
    /// own, and only a fresh connection can set it right). Asked once per loop turn; cleared by
    /// `frontendDisconnected`. Default: never.
    var wantsDisconnect: Bool { get }
    /// A front-end request of the device's own (`DeviceRequest.firstID` and above: QEMU's
    /// VHOST_USER_DEVICE_REQUEST_MIN), after the engine checked that it asks for a reply. Returns the
    /// reply's payload, or nil to refuse it (the front-end then reads a nonzero 8-byte status).
    /// Descriptors the device does not `take` are closed. The default refuses every such request.
    func handleDeviceRequest(_ request: UInt32, payload: [UInt8], descriptors: inout ReceivedDescriptors) -> [UInt8]?

    // MARK: Completions that wait (all from the loop thread, never under the device's own lock)

    /// Asked right after the device handled a chain of an `.onKick` queue: whether its completion must
    /// wait, for example until another process acknowledged what the request changed. The engine then
    /// keeps the used entry back and takes no further chain from that queue (head-of-line) until
    /// `completionMayProceed(queue:)` is true. Default: never.
    func completionMustWait(queue: Int) -> Bool
    /// Whether the waiting completion of `queue` may be published now. Asked after every readable
    /// watched descriptor, device request and loop turn while a completion waits. Default: yes.
    func completionMayProceed(queue: Int) -> Bool
    /// The engine completes the waiting request of `queue` without the device's consent: the ring is
    /// being stopped (GET_VRING_BASE), and the front-end must see every request it took completed.
    func completionForced(queue: Int)
    /// Descriptors the engine watches for the device (for example an acknowledgement eventfd); read again
    /// after every device request, reset and disconnect. Default: none.
    var watchedDescriptors: [HostDescriptor] { get }
    /// One of `watchedDescriptors` is readable; the device consumes what made it so.
    func watchedDescriptorReady(_ descriptor: HostDescriptor)
}

/// Requests a device defines for itself, outside the ids vhost-user.rst assigns.
public enum DeviceRequest {
    /// The first id of the device-specific range (QEMU patch 0001, `VHOST_USER_DEVICE_REQUEST_MIN`).
    public static let firstID: UInt32 = 0x10000
}

extension VhostUserDevice {
    public func handleDeviceRequest(_ request: UInt32, payload: [UInt8], descriptors: inout ReceivedDescriptors) -> [UInt8]? {
        nil
    }

    public func frontendDisconnected() {}
    public var wantsDisconnect: Bool { false }
    public func served(waker: Waker) {}
    public func loopWoken() {}
    public func completionMustWait(queue: Int) -> Bool { false }
    public func completionMayProceed(queue: Int) -> Bool { true }
    public func completionForced(queue: Int) {}
    public var watchedDescriptors: [HostDescriptor] { [] }
    public func watchedDescriptorReady(_ descriptor: HostDescriptor) {}

    public func processChains(queue: Int, _ drain: (_ handle: (ChainReadable, ChainWritable) -> Int) -> Void) {
        drain { readable, writable in process(queue: queue, readable: readable, writable: writable) }
    }
}
