import Logging
import VhostUser
import VirtioIOMMU

/// Something besides the model whose figures the control socket's `stats` reports; asked from the
/// control thread.
protocol StatisticsSource: Sendable {
    func contribute(to statistics: inout Statistics)
}

/// The engine's figures: event buffers the guest posted, polling turns, ring errors, refused messages,
/// suppressed warnings (all read through its lock or atomics, so safe from the control thread).
extension VhostUserBackend: StatisticsSource {
    func contribute(to stats: inout Statistics) {
        stats.eventBuffersPosted = availableChains(queue: VhostUserIOMMU.eventQueue)
        let engine = counters
        stats.polledTurns = engine.polledTurns
        stats.blockingTurns = engine.blockingTurns
        stats.ringErrors = engine.ringErrors
        stats.ringAnomaliesExplained = engine.ringErrorsExplained
        stats.refusedMessages = engine.refusedMessages
        stats.warningsSuppressed = engine.warningsSuppressed
    }
}

/// The counters the daemon logs on SIGUSR1 and at exit, and reports on the control socket.
struct Statistics: Codable, Sendable {
    struct RequestCount: Codable, Sendable {
        var type: String
        var status: String
        var count: Int
    }

    var requests: [RequestCount]
    var unanswered: Int
    var domains: Int
    var mappings: Int
    var faultsRaised: Int
    var faultsDelivered: Int
    var faultsPending: Int
    var faultsDropped: Int
    /// QEMU's fault ring (docs/frontend-protocol.md §10): records queued as faults, records refused,
    /// and records QEMU dropped because the ring was full.
    var frontendFaults = 0
    var frontendFaultRecordsRefused = 0
    var frontendFaultsDropped: UInt64 = 0
    var eventBuffersPosted = 0
    /// Event-loop turns whose work polling found, and turns that blocked first (with `--poll-max-us` > 0).
    var polledTurns = 0
    var blockingTurns = 0
    /// Engine: rings stopped for a ring error; ring anomalies that a later message (a reset, a stop)
    /// explained; messages refused; warnings about guest or front-end input left out of the log.
    var ringErrors = 0
    var ringAnomaliesExplained = 0
    var refusedMessages = 0
    var warningsSuppressed = 0
    var resets: Int
    /// Resets whose release of this VM's PASIDs the store refused (logged as errors).
    var pasidReleaseFailures: Int
    /// Requests refused for a writable part far larger than their reply (docs/device-behaviour.md).
    var oversizedWritableParts: Int

    init(_ device: IOMMUModel) {
        let counters = device.counters
        requests = RequestType.allCases.flatMap { type in
            Status.allCases.compactMap { status in
                let n = counters.count(type, status)
                return n == 0 ? nil : RequestCount(type: "\(type)", status: "\(status)", count: n)
            }
        }
        unanswered = counters.unanswered
        resets = counters.resets
        pasidReleaseFailures = counters.pasidReleaseFailures
        oversizedWritableParts = counters.oversizedWritableParts
        domains = device.domains.count
        mappings = device.mappingCount
        faultsRaised = counters.faultsRaised
        faultsDelivered = counters.faultsDelivered
        faultsPending = device.pendingFaultCount
        faultsDropped = device.droppedFaultCount
    }

    static func log(_ device: VhostUserIOMMU, logger: Logger) {
        let s = device.model.withLock { Statistics($0) }
        let requests = s.requests.map { "\($0.type)/\($0.status)=\($0.count)" }.joined(separator: " ")
        logger.info("""
            counters: requests [\(requests.isEmpty ? "none" : requests)] unanswered=\(s.unanswered) \
            resets=\(s.resets) pasid_release_failures=\(s.pasidReleaseFailures) domains=\(s.domains) mappings=\(s.mappings) faults raised=\(s.faultsRaised) \
            delivered=\(s.faultsDelivered) pending=\(s.faultsPending) dropped=\(s.faultsDropped)
            """)
    }
}
