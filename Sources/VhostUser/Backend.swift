import CVhostUser
import Glibc
import Logging
import Synchronization
import SystemPackage

/// The vhost-user back-end engine: validates every front-end message before dispatch, owns guest
/// memory and the rings, and hands chains to a `VhostUserDevice`. One thread runs it; from other
/// threads only `waker`, `requestStop()`, `notifyConfigChange()` and `availableChains(queue:)` may be
/// used (they touch atomics, a lock or an eventfd only), hence the unchecked `Sendable`.
public final class VhostUserBackend: @unchecked Sendable {
    public enum Outcome: Sendable, Equatable {
        case disconnected
        case stopped
    }

    /// Engine counters, readable after (or between) runs.
    public struct Statistics: Sendable, Hashable {
        public var messages = 0
        public var refusedMessages = 0
        public var badChains = 0
        public var ringErrors = 0
        public var guestResetsDetected = 0
        /// Loop turns whose work was found by polling the rings, and turns that blocked in epoll.
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
    public private(set) var polling: AdaptivePolling
    public var logger: Logger
    /// Engine counters; safe to read from any thread.
    public var statistics: Statistics { counters.withLock { $0 } }
    private let counters = Mutex(Statistics())

    func record(_ change: (inout Statistics) -> Void) { counters.withLock { change(&$0) } }

    let loop: EventLoop
    var memory: GuestMemory
    let queues: [Virtqueue]
    let offeredFeatures: UInt64
    var ackedFeatures: UInt64 = 0
    var protocolFeatures: ProtocolFeatures = []
    var status: UInt8 = 0
    var backendChannel: OwnedFileDescriptor?
    private let stopFlag = Atomic<Bool>(false)
    private let configChangePending = Atomic<Bool>(false)
    /// Chains the driver has made available and the engine has not consumed, per queue, as of the
    /// loop's last turn (for an event queue: the buffers the guest has posted).
    private let available: Mutex<[Int]>

    // The connection being served.
    var connection: FileDescriptor?
    var decoder: MessageDecoder
    var output: [UInt8] = []
    var outputOffset = 0
    var disconnectRequested = false
    /// Whether the connection is watched for writability (replies pending) instead of input.
    private var waitingToWrite = false
    /// Descriptors watched for the device, in the order of its `watchedDescriptors` (tokens follow it).
    var watched: [FileDescriptor] = []
    /// Warnings caused by guest or front-end input (bad chains, refused messages, ring errors).
    private var inputWarnings = LogRateLimiter(burst: 20, window: .seconds(60))

    static let connectionToken: UInt64 = 2
    static let listenerToken: UInt64 = 3
    static let kickTokenBase: UInt64 = 100
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
    /// Replies the front-end has not read yet; beyond this it is considered stuck and dropped.
    static let maxPendingOutput = 64 * 1024

    public init(device: any VhostUserDevice, limits: Limits = Limits(),
                polling: AdaptivePolling = AdaptivePolling(maximumNanoseconds: 0),
                logger: Logger = Logger(label: "vhost-user")) throws(Errno) {
        precondition(device.queueCount > 0 && device.queueCount <= 256, "a device has 1 to 256 queues")
        self.device = device
        self.limits = limits
        self.polling = polling
        self.memory = GuestMemory(maxRegions: limits.maxMemoryRegions)
        self.decoder = MessageDecoder(maxPayloadSize: limits.maxMessageSize)
        self.logger = logger
        self.loop = try EventLoop()
        self.queues = (0..<device.queueCount).map { Virtqueue(index: $0) }
        self.offeredFeatures = (device.deviceFeatures & ~TransportFeatures.reservedMask) | TransportFeatures.all
        self.available = Mutex([Int](repeating: 0, count: device.queueCount))
    }

    /// Chains available on `queue` and not yet consumed; safe from any thread.
    public func availableChains(queue: Int) -> Int {
        available.withLock { queue < $0.count ? $0[queue] : 0 }
    }

    private func publishAvailableCounts() {
        available.withLock { counts in
            for queue in queues {
                counts[queue.index] = queue.isRunnable ? ((try? queue.pendingCount()) ?? 0) : 0
            }
        }
    }

    /// Wakes the loop from any thread (for example after the device queued an event).
    public var waker: Waker { loop.waker }

    /// Asks the loop to return `.stopped` soon; safe from any thread or a signal-handling thread.
    public func requestStop() {
        stopFlag.store(true, ordering: .releasing)
        loop.waker.wake()
    }

    public var isStopRequested: Bool { stopFlag.load(ordering: .acquiring) }

    /// The device status as GET_STATUS reports it (with DEVICE_NEEDS_RESET after a ring error).
    public var deviceStatus: UInt8 {
        status | (queues.contains { $0.isBroken } ? DeviceStatus.needsReset : 0)
    }

    // MARK: Serving

    /// Waits for a front-end on `listener`; nil when a stop was requested first.
    public func accept(_ listener: borrowing Listener) throws(Errno) -> FileDescriptor? {
        try loop.add(listener.socket.descriptor, token: Self.listenerToken)
        defer { loop.remove(listener.socket.descriptor) }
        while !isStopRequested {
            var ready = false
            try loop.wait(timeout: -1) { token, _ in if token == Self.listenerToken { ready = true } }
            SystemCall.drain(loop.wakeDescriptor.descriptor)
            device.loopWoken()
            if ready, !isStopRequested {
                do { return try SystemCall.accept(listener.socket.descriptor) } catch .wouldBlock { continue }
            }
        }
        return nil
    }

    /// Serves one connected front-end until it disconnects or a stop is requested.
    /// The descriptor is closed on return, and the device is reset (a disconnect resets it).
    public func serve(connection fd: FileDescriptor) throws(Errno) -> Outcome {
        let owned = OwnedFileDescriptor(fd)
        try SystemCall.setNonBlocking(fd)
        try loop.add(fd, token: Self.connectionToken)
        connection = fd
        disconnectRequested = false
        waitingToWrite = false
        watchDeviceDescriptors()
        defer {
            loop.remove(fd)
            connection = nil
            disconnectCleanup()
            _ = owned
        }
        var ready: [(UInt64, UInt32)] = []
        ready.reserveCapacity(64)
        var lastDescriptorCheck = ContinuousClock.now
        while true {
            if isStopRequested { return .stopped }
            ready.removeAll(keepingCapacity: true)
            let waitStarted = ContinuousClock.now
            let polled = pollRings()
            // After a poll that found work, the other descriptors (socket, wake-ups) are checked at most
            // every 50 µs: a syscall per request would be a good part of the request's cost. Kicks are
            // back on first, so that no message is handled while a ring tells the driver not to kick.
            let checkDescriptors = !polled || waitStarted - lastDescriptorCheck >= .microseconds(50)
            if checkDescriptors {
                if polled { resumeKicks() }
                try loop.wait(timeout: polled ? 0 : -1) { ready.append(($0, $1)) }
                lastDescriptorCheck = ContinuousClock.now
            }
            if polling.maximum > 0 {
                polling.record(waited: Self.nanoseconds(ContinuousClock.now - waitStarted))
                record { polled ? ($0.polledTurns += 1) : ($0.blockingTurns += 1) }
            }
            if polled { for queue in queues where isPollable(queue) && queue.hasAvailable { process(queue) } }
            for (token, events) in ready {
                switch token {
                case EventLoop.wakeToken:
                    SystemCall.drain(loop.wakeDescriptor.descriptor)
                    device.loopWoken()
                case Self.connectionToken:
                    let hangup = events & (cvu_epollhup | cvu_epollerr) != 0
                    if events & cvu_epollout != 0 || hangup { flushOutput() }
                    if hangup && outputOffset < output.count {
                        // The front-end is gone with replies unread: nothing more can be said to it.
                        disconnectRequested = true
                    } else if events & cvu_epollin != 0 || hangup {
                        readMessages()
                    }
                default:
                    if token >= Self.watchedTokenBase {
                        watchedDescriptorReady(token: token)
                    } else if token >= Self.kickTokenBase, Int(token - Self.kickTokenBase) < queues.count {
                        kicked(queues[Int(token - Self.kickTokenBase)])
                    }
                }
                if disconnectRequested { return .disconnected }
            }
            releaseWaitingCompletions()
            // A ring anomaly counts only once the messages already sent are handled (a reset explains it).
            settleSuspectedRings()
            if disconnectRequested { return .disconnected }
            if device.wantsDisconnect {
                logger.error("closing the connection at the device's request")
                return .disconnected
            }
            // Event buffers and faults: faults raised off the loop wake it (and so a descriptor check).
            if checkDescriptors {
                serviceOnDemandQueues()
                publishAvailableCounts()
                if let dropped = inputWarnings.takeExpiredSuppressions(at: .now) {
                    logger.warning("\(dropped) more warnings about guest or front-end input were suppressed")
                }
            }
            if configChangePending.exchange(false, ordering: .acquiringAndReleasing) { sendConfigChange() }
        }
    }

    /// Spins on the request rings for up to the polling window, with the driver's kicks suppressed;
    /// true when a ring has work (then the loop does not block, and kicks stay off while it keeps
    /// finding work: turning them on and off per request would cost a fence and a cache line each).
    private func pollRings() -> Bool {
        guard polling.window > 0, queues.contains(where: isPollable) else {
            resumeKicks()
            return false
        }
        do {
            for queue in queues where isPollable(queue) && !queue.kicksSuppressed { try queue.setKicks(enabled: false) }
            let started = ContinuousClock.now
            let deadline = started + .nanoseconds(Int64(polling.window))
            // Past yieldAfter, each check is followed by a sched_yield instead of a pause (AdaptivePolling).
            let yieldFrom = polling.yieldAfter.flatMap { $0 < polling.window ? started + .nanoseconds(Int64($0)) : nil }
            while true {
                if queues.contains(where: { isPollable($0) && $0.hasAvailable }) { return true }
                let now = ContinuousClock.now
                if now >= deadline { break }
                if let yieldFrom, now >= yieldFrom { sched_yield() } else { for _ in 0..<4 { cvu_cpu_relax() } }
            }
            // Kicks back on before blocking; entries that slipped in meanwhile count as found.
            var found = false
            for queue in queues where queue.kicksSuppressed { if try queue.setKicks(enabled: true) { found = true } }
            return found
        } catch {
            resumeKicks()
            return false  // the kick path meets the same ring error and stops the queue
        }
    }

    /// Turns kicks back on wherever polling had turned them off.
    private func resumeKicks() {
        for queue in queues where queue.kicksSuppressed { _ = try? queue.setKicks(enabled: true) }
    }

    private func isPollable(_ queue: Virtqueue) -> Bool {
        queue.isRunnable && queue.enabled && queue.isResolved && device.mode(ofQueue: queue.index) == .onKick
    }

    private static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return seconds < 0 ? 0 : UInt64(clamping: seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
    }

    /// What a disconnect does: reset the device and forget everything the front-end set up.
    func disconnectCleanup() {
        device.frontendDisconnected()
        decoder.discard()
        output = []
        outputOffset = 0
        resetDeviceState()
        memory = GuestMemory(maxRegions: limits.maxMemoryRegions)
        ackedFeatures = 0
        protocolFeatures = []
        backendChannel = nil
        if let dropped = inputWarnings.takeSuppressions() {
            logger.warning("\(dropped) more warnings about guest or front-end input were suppressed")
        }
        logger.info("front-end disconnected; device reset")
    }

    /// Logs a warning caused by guest or front-end input, within the rate limit.
    func warnAboutInput(_ message: @autoclosure () -> Logger.Message) {
        let (admitted, dropped) = inputWarnings.admit(at: .now)
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
            if let kick = queue.kick?.descriptor { loop.remove(kick) }
            if queue.suspectedError != nil { record { $0.ringErrorsExplained += 1 } }  // the reset explains it
            queue.reset()
            queue.restartsFresh = restartsFresh
        }
        status = 0
        polling = polling.restarted  // a fresh device has not polled yet
        device.reset()
        watchDeviceDescriptors()
    }

    // MARK: Socket I/O

    /// Reads and handles messages until the socket is empty (true), or until replies are pending or
    /// the connection ends (false).
    @discardableResult
    private func readMessages() -> Bool {
        guard let fd = connection else { return false }
        return withUnsafeTemporaryAllocation(byteCount: decoder.maxPayloadSize + MessageHeader.size, alignment: 8) { buffer in
            // Stop reading while replies are pending: a front-end that does not read cannot make us queue without bound.
            while !disconnectRequested && outputOffset >= output.count {
                let want = decoder.bytesWanted
                var fds: [CInt] = []
                let n: Int
                do {
                    n = try SystemCall.receive(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), fds: &fds)
                } catch .wouldBlock {
                    return true
                } catch {
                    logger.error("socket receive failed: \(error)")
                    disconnectRequested = true
                    return false
                }
                if n == 0 {
                    for fd in fds { try? FileDescriptor(rawValue: fd).close() }
                    if decoder.isMidMessage { warnAboutInput("front-end disconnected in the middle of a message") }
                    disconnectRequested = true
                    return false
                }
                do {
                    try decoder.feed(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), descriptors: fds) { message in
                        handle(message)
                    }
                } catch {
                    warnAboutInput("protocol error, closing the connection: \(error)")
                    disconnectRequested = true
                }
            }
            return false
        }
    }

    func send(_ header: MessageHeader, _ payload: [UInt8]) {
        output.append(contentsOf: header.bytes)
        output.append(contentsOf: payload)
        flushOutput()
    }

    private func flushOutput() {
        guard let fd = connection else { return }
        while outputOffset < output.count {
            let sent: Int
            do {
                sent = try output.withUnsafeBytes { bytes throws(Errno) in
                    try SystemCall.send(fd, UnsafeRawBufferPointer(rebasing: bytes[outputOffset...]))
                }
            } catch .wouldBlock {
                if output.count - outputOffset > Self.maxPendingOutput {
                    logger.error("front-end is not reading replies; closing the connection")
                    disconnectRequested = true
                } else if !waitingToWrite {
                    waitingToWrite = true
                    try? loop.modify(fd, token: Self.connectionToken, writable: true)
                }
                return
            } catch {
                logger.warning("socket send failed, closing the connection: \(error)")
                disconnectRequested = true
                return
            }
            outputOffset += sent
        }
        output.removeAll(keepingCapacity: true)
        outputOffset = 0
        if waitingToWrite {
            // Back to reading; epoll is level-triggered, so messages left unread show up again.
            waitingToWrite = false
            try? loop.modify(fd, token: Self.connectionToken, writable: false)
        }
    }

    // MARK: Queues

    private func kicked(_ queue: Virtqueue) {
        guard let kick = queue.kick?.descriptor else { return }
        SystemCall.drain(kick)
        if !queue.started { start(queue) }
        process(queue)
    }

    func start(_ queue: Virtqueue) {
        queue.started = true
        guard queue.isRunnable else { return }
        do {
            try queue.resolve(in: memory)
            queue.loadUsedIndex()
        } catch {
            ringUnusable(queue, error)
        }
        logger.debug("queue \(queue.index) started", metadata: ["base": "\(queue.lastAvailIndex)"])
    }

    /// A ring whose contents look corrupt is only suspected at first: the front-end may have sent a reset
    /// or a stop before rewriting the ring, and that message may still be waiting in the socket.
    func ringFailed(_ queue: Virtqueue, _ error: RingError) {
        queue.suspectedError = (error, queue.generation)
    }

    /// A ring that what the front-end set up cannot serve (its addresses, the memory table): the message
    /// that made it so has been handled, so there is nothing to wait for; it stops now.
    func ringUnusable(_ queue: Virtqueue, _ error: RingError) {
        record { $0.ringErrors += 1 }  // counted before the error eventfd tells anyone
        queue.markBroken(error)
        warnAboutInput("queue \(queue.index) stopped until reset: \(error)")
    }

    /// Handles every message waiting in the socket, then stops each queue whose ring error no
    /// message explained (the ring is the same one, and still running). With replies pending the
    /// socket is not read; the queues stay suspended until a later turn gets through.
    func settleSuspectedRings() {
        guard queues.contains(where: { $0.suspectedError != nil }) else { return }
        if connection != nil {
            guard readMessages() else { return }
        }
        for queue in queues {
            guard let (error, generation) = queue.suspectedError else { continue }
            queue.suspectedError = nil
            if generation == queue.generation && queue.started {
                ringUnusable(queue, error)
            } else {
                record { $0.ringErrorsExplained += 1 }
                logger.debug("queue \(queue.index): ring anomaly explained by a later message: \(error)")
                if queue.started && queue.enabled { process(queue) }
            }
        }
    }

    /// Handles what the driver made available on `queue`, then notifies the driver once if it wants it.
    /// The turn goes in batches (one device call each, so one lock hold in a device that locks per
    /// call) and ends when the ring is empty, or after `chainBudget` chains or `turnTimeLimit`.
    func process(_ queue: Virtqueue) {
        // A disabled ring is left alone: completing its chains with length 0 would fail the guest's
        // requests and return its event buffers empty (QEMU kicks before it enables). Enabling it
        // processes what is pending (`resumeIfPending`).
        guard queue.isRunnable, queue.enabled else { return }
        if !queue.isResolved {
            do { try queue.resolve(in: memory) } catch { ringUnusable(queue, error); return }
        }
        // Locals, not properties, inside the loop: each read of a class property costs a retain.
        let device = self.device
        let memory = self.memory
        let onDemand = device.mode(ofQueue: queue.index) == .onDemand
        let previousUsed = queue.usedIndex
        var handled = 0
        var ringError: RingError?
        var turnOver = false  // the ring is empty, or a completion waits

        /// Pops chains until none is left (with kicks re-armed) or the batch is full; refused chains
        /// complete with used length 0, valid ones go to `handle`.
        func drainBatch(_ handle: (ChainReadable, ChainWritable) -> Int) {
            let batchEnd = handled + Self.lockBatchChains
            let walkedAtStart = queue.descriptorsWalked
            do {
                while true {
                    while handled < batchEnd && queue.descriptorsWalked &- walkedAtStart < Self.lockBatchDescriptors {
                        if onDemand && !device.hasPendingWork(queue: queue.index) { break }
                        guard let (head, chainError) = try queue.popChain(memory: memory) else { break }
                        handled += 1
                        var length = 0
                        if let chainError {
                            queue.countBadChain()
                            record { $0.badChains += 1 }
                            warnAboutInput("queue \(queue.index): bad chain at head \(head): \(chainError)")
                        } else {
                            length = queue.withChain(handle)
                            if !onDemand && device.completionMustWait(queue: queue.index) {
                                // Head-of-line: this completion and every later chain wait for the device.
                                queue.waitingCompletion = (head, UInt32(clamping: length))
                                queue.publishUsed()
                                turnOver = true
                                return
                            }
                        }
                        queue.pushUsed(head: head, length: UInt32(clamping: length))
                        if handled % Self.usedBatch == 0 { queue.publishUsed() }
                    }
                    queue.publishUsed()
                    if handled >= batchEnd || queue.descriptorsWalked &- walkedAtStart >= Self.lockBatchDescriptors { return }
                    guard try queue.armKick() else { turnOver = true; return }
                    if onDemand && !device.hasPendingWork(queue: queue.index) { turnOver = true; return }
                }
            } catch {
                queue.publishUsed()  // what completed before the ring error stands
                ringError = error
            }
        }

        let turnStarted = ContinuousClock.now
        while true {
            if onDemand {
                // Per chain: `hasPendingWork` asks the device between chains.
                drainBatch { readable, writable in device.process(queue: queue.index, readable: readable, writable: writable) }
            } else {
                device.processChains(queue: queue.index, drainBatch)
            }
            if turnOver || ringError != nil { break }
            if handled >= Self.chainBudget || ContinuousClock.now - turnStarted >= Self.turnTimeLimit {
                // Let the socket and other queues run; come back through our own kick.
                if let kick = queue.kick?.descriptor { SystemCall.signal(kick) }
                break
            }
        }
        if let ringError {
            ringFailed(queue, ringError)
            return
        }
        if queue.needsNotification(since: previousUsed) { queue.notify() }
    }

    private func serviceOnDemandQueues() {
        for queue in queues where queue.isRunnable && queue.enabled
            && device.mode(ofQueue: queue.index) == .onDemand && device.hasPendingWork(queue: queue.index) {
            process(queue)
        }
    }

    /// Refreshes every ring's pointers after a memory-table change; a started ring that no longer
    /// lies in guest memory stops with a ring error.
    func memoryChanged() {
        for queue in queues where !queue.isBroken {
            if queue.started {
                do { try queue.resolve(in: memory) } catch { ringUnusable(queue, error) }
            } else {
                queue.unresolve()
            }
        }
    }

    // MARK: Back-end channel

    /// Asks the loop to tell the front-end to re-read the config space; safe from any thread.
    public func notifyConfigChange() {
        configChangePending.store(true, ordering: .releasing)
        loop.waker.wake()
    }

    /// Sends BACKEND_CONFIG_CHANGE_MSG on the back-end channel, if the front-end gave one.
    private func sendConfigChange() {
        guard let channel = backendChannel?.descriptor else { return }
        let header = MessageHeader(request: BackendRequest.configChange.rawValue, flags: MessageHeader.version, size: 0)
        _ = header.bytes.withUnsafeBytes { try? SystemCall.send(channel, $0) }
    }
}
