import Logging
import Synchronization

/// The vhost-user back-end engine, free of the OS: it validates every front-end message before
/// dispatch, owns the guest memory table and the rings, and hands chains to a `VhostUserDevice`.
/// What it needs of the system (mapping memory, eventfds, the socket, a clock) it asks of its
/// `VhostUserHost`: the Posix layer's `VhostUserBackend` in the daemon, `EmbeddedVhostUser` in tests and
/// fuzzing. One thread drives it; from other threads only `waker`, `notifyConfigChange()`, `counters` and
/// `availableChains(queue:)` may be used (atomics, a lock, the host's waker), hence the unchecked `Sendable`.
public final class VhostUserEngine: @unchecked Sendable {
    /// What the engine counts, readable after (or between) runs. ("Counters" is what a layer counts — the
    /// model's `VirtioIOMMU.Counters`, this — and "Statistics" the daemon's report built from them.)
    public struct Counters: Sendable, Hashable {
        public var messages = 0
        public var refusedMessages = 0
        public var badChains = 0
        public var ringErrors = 0
        public var guestResetsDetected = 0
        /// Loop turns whose work was found by polling the rings, and turns that blocked waiting.
        public var polledTurns = 0
        public var blockingTurns = 0
        /// Ring anomalies that a message waiting in the socket explained (a reset or a stop while
        /// the loop read the ring), so the queue did not stop.
        public var ringErrorsExplained = 0
        /// Warnings about guest or front-end input left out of the log by the rate limit.
        public var warningsSuppressed = 0
    }

    /// Caps on what a front-end can make the engine hold.
    public struct Limits: Sendable, Hashable {
        /// Memory regions (GET_MAX_MEM_SLOTS); at least 8 (SET_MEM_TABLE), at most 509.
        public var maxMemoryRegions: Int
        /// Bytes of one message's payload; at least 268.
        public var maxMessageSize: Int

        public init(maxMemoryRegions: Int = GuestMemory.defaultMaxRegions,
                    maxMessageSize: Int = MessageDecoder.defaultMaxPayloadSize) {
            self.maxMemoryRegions = maxMemoryRegions
            self.maxMessageSize = maxMessageSize
        }
    }

    public let device: any VhostUserDevice
    public let limits: Limits
    /// Ring polling before the loop blocks (off when its maximum is 0).
    public internal(set) var polling: AdaptivePolling
    public var logger: Logger
    /// Engine counters; safe to read from any thread.
    public var counters: Counters { countersLock.withLock { $0 } }
    let countersLock = Mutex(Counters())

    func record(_ change: (inout Counters) -> Void) { countersLock.withLock { change(&$0) } }

    let host: any VhostUserHost
    /// Wakes the loop that drives the engine, from any thread (for example after the device queued an event).
    public let waker: Waker
    var memory: GuestMemory
    let queues: [Virtqueue]
    let offeredFeatures: UInt64
    var ackedFeatures: UInt64 = 0
    var protocolFeatures: ProtocolFeatures = []
    var status: UInt8 = 0
    var backendChannel: OwnedDescriptor?
    let configChangePending = Atomic<Bool>(false)
    /// Chains the driver has made available and the engine has not consumed, per queue, as of the
    /// loop's last turn (for an event queue: the buffers the guest has posted).
    let available: Mutex<[Int]>

    var decoder: MessageDecoder
    /// The connection must end: a fatal protocol error, or the device asked for it. The driver closes it.
    public internal(set) var disconnectRequested = false
    /// A front-end is connected: only then does the engine watch the device's descriptors (a readable
    /// one with nobody to serve it would wake a waiting loop again and again).
    public internal(set) var isConnected = false
    /// Descriptors watched for the device, in the order of its `watchedDescriptors` (tokens follow it).
    var watched: [HostDescriptor] = []
    /// Warnings caused by guest or front-end input (bad chains, refused messages, ring errors).
    var inputWarnings = LogRateLimiter(burst: 20, window: .seconds(60))

    /// Tokens below this are the host's own (its wake-up, the connection, a listener).
    public static let firstToken: UInt64 = 100
    static let kickTokenBase: UInt64 = firstToken
    /// Tokens of the descriptors a device asked the loop to watch (`watchedDescriptors`).
    static let watchedTokenBase: UInt64 = 1_000
    /// Chains handled per queue per wake-up before other descriptors get a turn.
    static let chainBudget = 4096
    /// How long one queue's turn may run before the socket and other queues get a turn: bounds how
    /// long a vhost-user message waits while a guest floods requests.
    static let turnTimeLimit: Duration = .microseconds(500)
    /// One device call (one lock hold, for a device that locks per call) takes at most this many
    /// chains or walks this many descriptors, so the control socket never waits long for the lock.
    static let lockBatchChains = 64
    static let lockBatchDescriptors = 4096
    /// Chains completed between used.idx stores within one turn.
    static let usedBatch = 32

    public init(device: any VhostUserDevice, limits: Limits = Limits(),
                polling: AdaptivePolling = AdaptivePolling(maximumNanoseconds: 0),
                logger: Logger = Logger(label: "vhost-user"), host: any VhostUserHost, waker: Waker) {
        precondition(device.queueCount > 0 && device.queueCount <= 256, "a device has 1 to 256 queues")
        self.device = device
        self.limits = limits
        self.polling = polling
        self.host = host
        self.waker = waker
        self.memory = GuestMemory(maxRegions: limits.maxMemoryRegions)
        self.decoder = MessageDecoder(maxPayloadSize: limits.maxMessageSize, closer: host)
        self.logger = logger
        self.queues = (0..<device.queueCount).map { Virtqueue(index: $0) }
        self.offeredFeatures = (device.deviceFeatures & ~TransportFeatures.reservedMask) | TransportFeatures.all
        self.available = Mutex([Int](repeating: 0, count: device.queueCount))
        device.served(waker: waker)
    }

    /// Chains available on `queue` and not yet consumed; safe from any thread.
    public func availableChains(queue: Int) -> Int {
        available.withLock { queue < $0.count ? $0[queue] : 0 }
    }

    /// The device status as GET_STATUS reports it (with DEVICE_NEEDS_RESET after a ring error).
    public var deviceStatus: UInt8 {
        status | (queues.contains { $0.isBroken } ? DeviceStatus.needsReset : 0)
    }

    /// A front-end connected: the engine starts watching what the device asks it to.
    public func connected() {
        disconnectRequested = false
        isConnected = true
        watchDeviceDescriptors()
    }

    /// The connection ended: reset the device and forget everything the front-end set up.
    public func disconnected() {
        isConnected = false
        device.frontendDisconnected()
        decoder.discard()
        resetDeviceState()
        memory = GuestMemory(maxRegions: limits.maxMemoryRegions)
        ackedFeatures = 0
        protocolFeatures = []
        backendChannel = nil
        disconnectRequested = false
        if let dropped = inputWarnings.takeSuppressions() {
            logger.warning("\(dropped) more warnings about guest or front-end input were suppressed")
        }
        logger.info("front-end disconnected; device reset")
    }

    /// Logs a warning caused by guest or front-end input, within the rate limit.
    func warnAboutInput(_ message: @autoclosure () -> Logger.Message) {
        let (admitted, dropped) = inputWarnings.admit(at: host.now)
        guard admitted else {
            record { $0.warningsSuppressed += 1 }
            return
        }
        logger.warning(message())
        if dropped > 0 { logger.warning("\(dropped) similar warnings were suppressed before this one") }
    }

    /// Device reset: the device's own state and every ring back to initial; memory stays mapped.
    /// `restartsFresh`: the front-end will restart the rings on this connection, so each starts at
    /// its base with a used index of our own, not what the ring held while it was being rewritten.
    func resetDeviceState(restartsFresh: Bool = false) {
        for queue in queues {
            if let kick = queue.kick?.descriptor { host.unwatch(kick) }
            if queue.suspectedError != nil { record { $0.ringErrorsExplained += 1 } }  // the reset explains it
            queue.reset()
            queue.restartsFresh = restartsFresh
        }
        status = 0
        polling = polling.restarted  // a fresh device has not polled yet
        device.reset()
        watchDeviceDescriptors()
    }

    /// Asks the loop to tell the front-end to re-read the config space; safe from any thread.
    public func notifyConfigChange() {
        configChangePending.store(true, ordering: .releasing)
        waker.wake()
    }

    /// Sends BACKEND_CONFIG_CHANGE_MSG on the back-end channel, if the front-end gave one.
    func sendConfigChange() {
        guard let channel = backendChannel?.descriptor else { return }
        let header = MessageHeader(request: BackendRequest.configChange.rawValue, flags: MessageHeader.version, size: 0)
        host.sendOnBackendChannel(channel, header.bytes)
    }
}
