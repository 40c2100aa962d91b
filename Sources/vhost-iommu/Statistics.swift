import Logging
import VhostUser
import VirtioIOMMU

/// A part of the daemon whose counters go into its statistics; asked from the control thread, the
/// signal thread and at exit, so it reads them through its own locks or atomics.
protocol StatisticsSource: Sendable {
    func contribute(to statistics: inout Statistics)
}

/// The engine's figures: event buffers the guest posted, polling turns, ring errors, refused messages,
/// suppressed warnings.
extension VhostUserBackend: StatisticsSource {
    func contribute(to statistics: inout Statistics) {
        statistics.eventBuffersPosted = availableChains(queue: VhostUserIOMMU.eventQueue)
        let engine = counters
        statistics.polledTurns = engine.polledTurns
        statistics.blockingTurns = engine.blockingTurns
        statistics.ringErrors = engine.ringErrors
        statistics.ringErrorsExplained = engine.ringErrorsExplained
        statistics.refusedMessages = engine.refusedMessages
        statistics.warningsSuppressed = engine.warningsSuppressed
    }
}

/// The model's figures (requests by type and status, domains, mappings, faults) and the fault ring's.
extension VhostUserIOMMU: StatisticsSource {
    func contribute(to statistics: inout Statistics) {
        model.withLock { model in
            let counters = model.counters
            statistics.requests = RequestType.allCases.flatMap { type in
                Status.allCases.compactMap { status in
                    let n = counters.count(type, status)
                    return n == 0 ? nil : Statistics.RequestCount(type: "\(type)", status: "\(status)", count: n)
                }
            }
            statistics.unanswered = counters.unanswered
            statistics.resets = counters.resets
            statistics.pasidReleaseFailures = counters.pasidReleaseFailures
            statistics.oversizedWritableParts = counters.oversizedWritableParts
            statistics.domains = model.domains.count
            statistics.mappings = model.mappingCount
            statistics.faultsRaised = counters.faultsRaised
            statistics.faultsDelivered = counters.faultsDelivered
            statistics.faultsPending = model.pendingFaultCount
            statistics.faultsDropped = model.droppedFaultCount
        }
        let ring = frontendFaultCounters.withLock { $0 }
        statistics.frontendFaults = ring.reported
        statistics.frontendFaultRecordsRefused = ring.refused
        statistics.frontendFaultsDropped = ring.droppedByFrontend
    }
}

/// The daemon's report, built from the counters of its parts: logged on SIGUSR1 and at exit, and
/// answered to the control socket's `stats`.
struct Statistics: Codable, Sendable {
    struct RequestCount: Codable, Sendable {
        var type: String
        var status: String
        var count: Int
    }

    var requests: [RequestCount] = []
    var unanswered = 0
    var domains = 0
    var mappings = 0
    var faultsRaised = 0
    var faultsDelivered = 0
    var faultsPending = 0
    var faultsDropped = 0
    /// QEMU's fault ring (docs/frontend-protocol.md §10): records queued as faults, records refused,
    /// and records QEMU dropped because the ring was full.
    var frontendFaults = 0
    var frontendFaultRecordsRefused = 0
    var frontendFaultsDropped: UInt64 = 0
    var eventBuffersPosted = 0
    /// Event-loop turns whose work polling found, and turns that blocked first (with `--poll-max-us` > 0).
    var polledTurns = 0
    var blockingTurns = 0
    /// Engine: rings stopped for a ring error; suspected ring errors that a later message (a reset, a
    /// stop) explained; messages refused; warnings about guest or front-end input left out of the log.
    var ringErrors = 0
    var ringErrorsExplained = 0
    var refusedMessages = 0
    var warningsSuppressed = 0
    var resets = 0
    /// Resets whose release of this VM's PASIDs the store refused (logged as errors).
    var pasidReleaseFailures = 0
    /// Requests refused for a writable part far larger than their reply (docs/device-behaviour.md).
    var oversizedWritableParts = 0

    /// What every source reports now.
    init(_ sources: [any StatisticsSource]) {
        for source in sources { source.contribute(to: &self) }
    }

    /// One line at info level with every figure.
    static func log(_ sources: [any StatisticsSource], logger: Logger) {
        let s = Statistics(sources)
        let requests = s.requests.map { "\($0.type)/\($0.status)=\($0.count)" }.joined(separator: " ")
        logger.info("""
            statistics: requests [\(requests.isEmpty ? "none" : requests)] unanswered=\(s.unanswered) \
            resets=\(s.resets) pasid_release_failures=\(s.pasidReleaseFailures) oversized_writable=\(s.oversizedWritableParts) \
            domains=\(s.domains) mappings=\(s.mappings) faults raised=\(s.faultsRaised) delivered=\(s.faultsDelivered) \
            pending=\(s.faultsPending) dropped=\(s.faultsDropped) frontend_faults=\(s.frontendFaults) \
            frontend_refused=\(s.frontendFaultRecordsRefused) frontend_dropped=\(s.frontendFaultsDropped) \
            event_buffers=\(s.eventBuffersPosted) polled_turns=\(s.polledTurns) blocking_turns=\(s.blockingTurns) \
            ring_errors=\(s.ringErrors) ring_errors_explained=\(s.ringErrorsExplained) refused_messages=\(s.refusedMessages) \
            warnings_suppressed=\(s.warningsSuppressed)
            """)
    }
}
