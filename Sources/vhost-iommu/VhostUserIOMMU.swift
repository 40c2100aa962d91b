import Dispatch
import IOMMUFrontend
import Logging
import SystemPackage
import PASIDAllocators
import Synchronization
import VhostUser
import VirtioIOMMU

/// The virtio-iommu model served as a vhost-user device: queue 0 takes requests, queue 1 carries
/// fault events. The model sits behind one lock, shared by the event loop and the control socket.
final class VhostUserIOMMU: VhostUserDevice, Sendable {
    static let requestQueue = 0
    static let eventQueue = 1

    let model: Mutex<IOMMUModel>
    private let configuration: Configuration
    /// The engine's, given when it is made (`served(waker:)`), so that faults raised and operator requests
    /// queued off the loop thread wake it.
    let waker = Mutex<Waker?>(nil)

    func served(waker: Waker) { self.waker.withLock { $0 = waker } }

    /// The front-end protocol's session (docs/frontend-protocol.md). Confined to the event-loop thread:
    /// every call that reaches it is a `VhostUserDevice` call, and the engine makes those from its loop.
    private nonisolated(unsafe) let frontend: FrontendSession
    /// An operator's DETACH from the control socket, waiting for the loop thread (and QEMU's acknowledgement).
    final class OperatorDetach: Sendable {
        let endpoint: Endpoint.ID
        let result = Mutex<Result<Void, DetachFailure>?>(nil)
        let finished = DispatchSemaphore(value: 0)
        init(endpoint: Endpoint.ID) { self.endpoint = endpoint }
        func finish(_ outcome: Result<Void, DetachFailure>) {
            result.withLock { $0 = outcome }
            finished.signal()
        }
    }

    struct DetachFailure: Error, Sendable { let reason: String }

    private let operatorRequests = Mutex<[OperatorDetach]>([])
    /// Operator DETACHes published and waiting for QEMU's acknowledgement (loop thread only).
    private nonisolated(unsafe) var acknowledgementWaiters: [(LogCommit, OperatorDetach)] = []

    /// For what a reset could not undo (the PASID store refusing to take this VM's PASIDs back).
    private let logger: Logger

    init(configuration: Configuration, pasidStore: (any PASIDAllocator)? = nil, owner: String = "",
         logger: Logger = Logger(label: "vhost-iommu")) throws(ConfigurationError) {
        self.configuration = configuration
        self.logger = logger
        frontend = FrontendSession(configuration: configuration)
        model = Mutex(try IOMMUModel(configuration: configuration, pasidStore: pasidStore, owner: owner))
    }

    var deviceFeatures: UInt64 { configuration.features.rawValue }
    var queueCount: Int { 2 }
    var maxQueueSize: Int { 1024 }

    func readConfig() -> [UInt8] { model.withLock { $0.configSpace.bytes } }

    /// QEMU's generic device sends the whole config on each write. Read-only bytes must be unchanged;
    /// with the migration flag they may differ and only `bypass` is taken.
    func writeConfig(offset: Int, bytes: [UInt8], migration: Bool) -> Bool {
        model.withLock { model in
            if migration {
                let at = ConfigSpace.bypassOffset - offset
                guard at >= 0, at < bytes.count else { return true }
                return (try? model.writeConfig(offset: ConfigSpace.bypassOffset, bytes: [bytes[at]])) != nil
            }
            return (try? model.writeConfig(offset: offset, bytes: bytes)) != nil
        }
    }

    func setNegotiatedFeatures(_ features: UInt64) {
        model.withLock { $0.negotiate(Features(rawValue: features)) }
    }

    func mode(ofQueue queue: Int) -> QueueMode { queue == Self.requestQueue ? .onKick : .onDemand }

    func hasPendingWork(queue: Int) -> Bool {
        queue == Self.eventQueue && model.withLock { $0.pendingFaultCount > 0 }
    }

    /// One chain, under the model's lock: a request (its changes published to QEMU's log first, when a
    /// front-end mirrors the model) or an event buffer for the oldest pending fault.
    private func handle(queue: Int, readable: ChainReadable, writable: ChainWritable, model: inout IOMMUModel) -> Int {
        guard queue == Self.requestQueue else { return model.deliverFault(into: writable) ?? 0 }
        let length = model.handle(readable: readable, writable: writable)
        if model.recordsChanges { frontend.publishRequest(of: &model) }
        return length
    }

    func process(queue: Int, readable: ChainReadable, writable: ChainWritable) -> Int {
        model.withLock { model in handle(queue: queue, readable: readable, writable: writable, model: &model) }
    }

    /// One lock for a whole turn of the request queue, not one per request.
    func processChains(queue: Int, _ drain: (_ handle: (ChainReadable, ChainWritable) -> Int) -> Void) {
        model.withLock { model in
            drain { readable, writable in handle(queue: queue, readable: readable, writable: writable, model: &model) }
        }
    }

    // MARK: The front-end protocol (docs/frontend-protocol.md)

    func handleDeviceRequest(_ request: UInt32, payload: [UInt8], descriptors: inout ReceivedDescriptors) -> [UInt8]? {
        let session = frontend
        let reply = model.withLock { model in
            session.handle(request, payload: payload, descriptors: &descriptors, model: &model)
        }
        if let violation = frontend.lastViolation { logger.error("front-end protocol: \(violation)") }
        return reply
    }

    func completionMustWait(queue: Int) -> Bool {
        queue == Self.requestQueue && frontend.takeWaitRequest()
    }

    func completionMayProceed(queue: Int) -> Bool {
        let session = frontend
        return model.withLock { model in session.waitIsOver(model: &model) }
    }

    func completionForced(queue: Int) { frontend.abandonWait() }

    var watchedDescriptors: [HostDescriptor] {
        [frontend.acknowledgementDescriptor, frontend.faultDescriptor].compactMap { $0.map(HostDescriptor.init) }
    }

    /// The fault ring's counters, copied after each drain for the control thread's `stats`.
    let frontendFaultCounters = Mutex(FrontendSession.FaultCounters())

    func watchedDescriptorReady(_ hostDescriptor: HostDescriptor) {
        let descriptor = FileDescriptor(hostDescriptor)
        SystemCall.drain(descriptor)
        if descriptor == frontend.faultDescriptor {
            // The engine delivers the queued faults into posted event buffers after this call.
            let session = frontend
            model.withLock { model in _ = session.drainFaults(model: &model) }
            if let failure = frontend.faultRingFailure {
                frontend.faultRingFailure = nil
                logger.error("front-end protocol: \(failure)")
            }
            let counters = frontend.faultCounters
            frontendFaultCounters.withLock { $0 = counters }
            return
        }
        guard !acknowledgementWaiters.isEmpty else { return }
        let session = frontend
        let waiters = acknowledgementWaiters
        let acknowledged = model.withLock { model in waiters.map { session.isAcknowledged($0.0, model: &model) } }
        acknowledgementWaiters = []
        for (waiter, done) in zip(waiters, acknowledged) {
            if done { waiter.1.finish(.success(())) } else { acknowledgementWaiters.append(waiter) }
        }
    }

    // MARK: An operator's DETACH (control socket)

    /// Detaches `endpoint` from its domain as the operator asks: on the loop thread, and, with QEMU's
    /// front-end, only once QEMU acknowledged it (its DMA is refused from then on). Blocks the caller
    /// (the control thread) for at most `timeout`.
    func detachForOperator(endpoint: Endpoint.ID, timeout: DispatchTimeInterval = .seconds(5)) -> Result<Void, DetachFailure> {
        guard let waker = waker.withLock({ $0 }) else { return .failure(DetachFailure(reason: "the device is not being served")) }
        let request = OperatorDetach(endpoint: endpoint)
        operatorRequests.withLock { $0.append(request) }
        waker.wake()
        guard request.finished.wait(timeout: .now() + timeout) == .success else {
            return .failure(DetachFailure(reason: "no answer from the event loop or the front-end in time"))
        }
        return request.result.withLock { $0 } ?? .failure(DetachFailure(reason: "no result"))
    }

    func loopWoken() {
        let requests = operatorRequests.withLock { queued in
            defer { queued.removeAll() }
            return queued
        }
        let session = frontend
        for request in requests {
            logger.debug("operator DETACH of endpoint \(request.endpoint)")
            let outcome: FrontendSession.LocalOutcome = model.withLock { model in
                guard let domain = model.endpoints[request.endpoint]?.domain else {
                    return .failed(model.endpoints[request.endpoint] == nil ? "unknown endpoint \(request.endpoint)"
                                                                             : "endpoint \(request.endpoint) is in no domain")
                }
                let status = model.execute(DetachRequest(domain: domain, endpoint: request.endpoint))
                guard status == .ok else {
                    model.drainChanges { _ in }
                    return .failed("DETACH refused: \(status)")
                }
                return model.recordsChanges ? session.publishLocal(of: &model) : .done
            }
            logger.debug("operator DETACH of endpoint \(request.endpoint): \(outcome)")
            switch outcome {
            case .done: request.finish(.success(()))
            case .waiting(let commit): acknowledgementWaiters.append((commit, request))
            case .failed(let reason): request.finish(.failure(DetachFailure(reason: reason)))
            }
        }
    }

    /// The front-end broke the protocol (docs/frontend-protocol.md §9.2): the engine closes the connection.
    var wantsDisconnect: Bool { frontend.violationNeedsReconnect }

    func frontendDisconnected() {
        if frontend.violationNeedsReconnect, let violation = frontend.lastViolation {
            logger.error("front-end protocol: \(violation); connection closed so that QEMU resynchronises")
        }
        for (_, request) in acknowledgementWaiters { request.finish(.success(())) }  // done in the model; QEMU is gone
        acknowledgementWaiters = []
        let session = frontend
        model.withLock { model in session.end(model: &model) }
    }

    /// A failed PASID release does not stop the reset; it is logged here and counted in stats.
    func reset() {
        let failure: PASIDReleaseFailure? = model.withLock { model in
            let before = model.counters.pasidReleaseFailures
            model.reset()
            return model.counters.pasidReleaseFailures > before ? model.lastPASIDReleaseFailure : nil
        }
        if let failure {
            logger.error("device reset: the PASID store did not take back this VM's \(failure.pasids.count) PASIDs: \(failure.error)")
        }
    }

    /// Translates for a consumer; a fault is queued for the guest and the loop is woken to deliver it.
    func translate(endpoint: UInt32, pasid: UInt32?, iova: UInt64, length: UInt64, access: Access) -> Result<Segments, TranslationError> {
        let result = model.withLock { model in
            Result { () throws(TranslationError) -> Segments in
                try model.translate(endpoint: endpoint, pasid: pasid, iova: iova, length: length, access: access)
            }
        }
        if case .failure(.fault) = result { waker.withLock { $0?.wake() } }
        return result
    }
}
