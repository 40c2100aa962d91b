import IOMMUFrontend
import ModelMirroring
import SystemPackage
import VhostUser
import VirtioIOMMU

/// The daemon's side of docs/frontend-protocol.md with one front-end connection: HELLO, SET_REGION,
/// STATE_PUSH (QEMU's mirror adopted after a reconnect) and RESET, the op log that keeps that mirror
/// current, and the fault ring. Used from the event-loop thread only; `VhostUserIOMMU`
/// keeps it behind its own lock, taken after the model's.
final class FrontendSession {
    private enum Phase {
        case idle
        case greeted(HelloReply)
        case active(Active)
    }

    /// A session with its region, log writer and eventfds (a class: it owns the descriptors).
    private final class Active {
        let hello: HelloReply
        let region: FrontendRegion
        var writer: LogWriter
        let doorbell: OwnedFileDescriptor
        let acknowledgement: OwnedFileDescriptor
        /// With FAULT_RING (§10): the DMA QEMU refused, and the eventfd it signals after each record.
        var faults: FaultRingReader?
        let faultSignal: OwnedFileDescriptor?
        let faultDescriptor: FileDescriptor?
        /// The commit the request queue's waiting completion waits for, or a commit refused for space.
        var waiting: Waiting?
        /// STATE_PUSH comes at most once per session, before the rings run (§2.3): after a request, refused.
        var statePushed = false
        var requestsHandled = false

        init(hello: HelloReply, region: FrontendRegion, writer: LogWriter, doorbell: consuming OwnedFileDescriptor,
             acknowledgement: consuming OwnedFileDescriptor, faults: FaultRingReader?, faultSignal: consuming OwnedFileDescriptor?,
             faultDescriptor: FileDescriptor?) {
            self.hello = hello
            self.region = region
            self.writer = writer
            self.doorbell = doorbell
            self.acknowledgement = acknowledgement
            self.faults = faults
            self.faultSignal = faultSignal
            self.faultDescriptor = faultDescriptor
        }

        func ringDoorbell() { SystemCall.signal(doorbell.descriptor) }
    }

    enum Waiting {
        case acknowledgement(LogCommit)
        case space
    }

    /// The queue size HELLO announces (QEMU sizes both virtqueues with it).
    static let queueSize: UInt32 = 256
    /// What this back-end grants: changes of its own (an operator's DETACH, §6.1) and the fault ring
    /// (§10); no commit window yet.
    static let capabilities: FrontendCapabilities = [.localChanges, .faultRing]

    private var phase = Phase.idle
    /// Set by `publishRequest` when the request just handled must wait; taken by the engine's question.
    private var waitRequested = false
    /// The endpoints this daemon serves, as the region's bitmap names them; nil if one is ≥ 65536.
    private let endpointBitmap: EndpointBitmap?
    /// Why the last session ended with a violation, for the log.
    private(set) var lastViolation: String?
    /// A violation ended the session while the connection stays: QEMU's mirror no longer follows the
    /// model, so the connection must close (§9.2) and QEMU resynchronise on the next one (§8.2).
    private(set) var violationNeedsReconnect = false

    /// The configuration a pushed state must fit (§8.2).
    private let configuration: Configuration

    /// What the fault rings of all sessions so far carried (§10), for stats.
    struct FaultCounters: Sendable, Equatable {
        /// Records queued as faults for the guest's event queue.
        var reported = 0
        /// Records refused: malformed, of an old epoch, or naming an endpoint the device does not have.
        var refused = 0
        /// Records QEMU could not write because the ring was full (its `fault_dropped`), as last read.
        var droppedByFrontend: UInt64 = 0
    }
    private(set) var faultCounters = FaultCounters()
    /// Set when the front-end broke the fault ring (taken by the caller, for the log).
    var faultRingFailure: String?
    private var droppedInEndedSessions: UInt64 = 0

    init(configuration: Configuration) {
        self.configuration = configuration
        endpointBitmap = EndpointBitmap(endpoints: configuration.endpoints.keys)
    }

    var isActive: Bool { if case .active = phase { true } else { false } }

    // MARK: Requests (§2–§4, §7)

    /// Handles one front-end request; returns its reply payload. `model` is the device under its lock.
    func handle(_ id: UInt32, payload: [UInt8], descriptors: inout ReceivedDescriptors, model: inout IOMMUModel) -> [UInt8] {
        guard let request = FrontendProtocol.Request(rawValue: id) else { return FrontendStatus.unsupported.encoded }
        var descriptorCount = request.descriptorCount
        if request == .setRegion, case .greeted(let hello) = phase {
            descriptorCount = SetRegionRequest.descriptorCount(hello.capabilities)
        }
        guard payload.count == request.payloadSize, descriptors.count == descriptorCount else {
            return FrontendStatus.invalid.encoded
        }
        switch request {
        case .hello: return hello(payload)
        case .setRegion: return setRegion(payload, &descriptors, &model)
        case .statePush: return statePush(payload, &descriptors, &model)
        case .reset: return reset(payload, &model)
        }
    }

    private func hello(_ payload: [UInt8]) -> [UInt8] {
        guard case .idle = phase else { return FrontendStatus.badState.encoded }
        do {
            let request = try payload.withUnsafeBytes { bytes throws(FrontendWireError) in try HelloRequest(decoding: bytes) }
            let reply = try request.reply(supporting: Self.capabilities, queueSize: Self.queueSize)
            phase = .greeted(reply)
            return reply.encoded
        } catch {
            return Self.status(for: error).encoded
        }
    }

    /// The status a refused request is answered with: the wire error's, else INVALID.
    private static func status(for error: any Error) -> FrontendStatus {
        (error as? FrontendWireError)?.status ?? .invalid
    }

    private func setRegion(_ payload: [UInt8], _ descriptors: inout ReceivedDescriptors, _ model: inout IOMMUModel) -> [UInt8] {
        guard case .greeted(let hello) = phase else { return FrontendStatus.badState.encoded }
        let request: SetRegionRequest
        do {
            request = try payload.withUnsafeBytes { bytes throws(FrontendWireError) in try SetRegionRequest(decoding: bytes) }
        } catch {
            return Self.status(for: error).encoded
        }
        guard let bitmap = endpointBitmap else { return FrontendStatus.refused.encoded }
        let regionFile = OwnedFileDescriptor(descriptors.take(0))
        let doorbell = OwnedFileDescriptor(descriptors.take(1))
        let acknowledgement = OwnedFileDescriptor(descriptors.take(2))
        let faultRing = hello.capabilities.contains(.faultRing)
        var faultSignal: OwnedFileDescriptor? = nil
        var faultDescriptor: FileDescriptor? = nil
        if faultRing {
            let owned = OwnedFileDescriptor(descriptors.take(3))
            faultDescriptor = owned.descriptor
            faultSignal = .some(owned)
        }
        let mapping: SharedFileMapping
        do {
            mapping = try SharedFileMapping(descriptor: regionFile, size: request.regionSize, maximumSize: RegionLayout.maxRegionSize)
        } catch .system {
            return FrontendStatus.failed.encoded
        } catch {
            return FrontendStatus.invalid.encoded
        }
        let region = FrontendRegion(mapping)
        do {
            var header = [UInt8](repeating: 0, count: RegionLayout.configurationSize)
            header.withUnsafeMutableBytes { region.copyBytes(at: 0, into: $0) }
            let layout = try header.withUnsafeBytes { bytes throws(FrontendWireError) in
                try RegionLayout(decodingHeader: bytes, regionSize: request.regionSize, epoch: request.epoch, faultRing: faultRing)
            }
            bitmap.write(to: region, layout: layout)
            let faults = faultRing ? try FaultRingReader(memory: region, layout: layout) : nil
            // The mirror starts empty: the model starts over too, keeping `bypass` (D5), with no entry (§4.1).
            model.reset()
            model.recordsChanges = true
            let writer = try LogWriter(memory: region, layout: layout, capabilities: hello.capabilities, startIndex: request.startIndex)
            phase = .active(Active(hello: hello, region: region, writer: writer, doorbell: doorbell,
                                   acknowledgement: acknowledgement, faults: faults, faultSignal: faultSignal,
                                   faultDescriptor: faultDescriptor))
            return FrontendStatus.ok.encoded
        } catch let error as FrontendWireError {
            return error.status.encoded
        } catch {
            return FrontendStatus.invalid.encoded
        }
    }

    /// STATE_PUSH (§8.2): QEMU's mirror becomes the model, all or nothing, with no entry written. The
    /// snapshot is untrusted input: decoded and checked against the configuration, then replayed as the
    /// guest's own ATTACH and MAP requests on a copy of the model, each of which must succeed.
    private func statePush(_ payload: [UInt8], _ descriptors: inout ReceivedDescriptors, _ model: inout IOMMUModel) -> [UInt8] {
        guard case .active(let active) = phase, !active.statePushed, !active.requestsHandled else {
            return FrontendStatus.badState.encoded
        }
        let snapshot: StateSnapshot
        do {
            let request = try payload.withUnsafeBytes { bytes throws(FrontendWireError) in try StatePushRequest(decoding: bytes) }
            guard request.epoch == active.writer.epoch else { return FrontendStatus.invalid.encoded }
            let file = OwnedFileDescriptor(descriptors.take(0))
            let bytes: [UInt8]
            do {
                bytes = try SharedFileMapping.readSealedFile(file, size: request.snapshotSize, maximumSize: StateSnapshot.maxSize)
            } catch .system {
                return FrontendStatus.failed.encoded
            } catch {
                return FrontendStatus.invalid.encoded
            }
            snapshot = try bytes.withUnsafeBytes { bytes throws(FrontendWireError) in try StateSnapshot(decoding: bytes, request: request) }
        } catch {
            return Self.status(for: error).encoded
        }
        let limits = configuration.limits
        guard let known = endpointBitmap else { return FrontendStatus.refused.encoded }
        let rules = StateSnapshot.Rules(knownEndpoints: known, granule: model.granule, inputRange: configuration.inputRange.first...configuration.inputRange.last,
                                        domainRange: configuration.domainRange, maxDomains: limits.maxDomains,
                                        maxMappings: limits.maxMappingsTotal, maxMappingsPerDomain: limits.maxMappingsPerDomain,
                                        queueSize: active.hello.queueSize, capabilities: active.hello.capabilities)
        do { try snapshot.validate(against: rules) } catch { return FrontendStatus.refused.encoded }
        // The guest's features may not be negotiated yet (QEMU pushes before it starts the rings): the copy
        // is judged with everything the device offers, then keeps what was negotiated.
        var candidate = model
        let negotiated = candidate.negotiatedFeatures
        candidate.recordsChanges = false
        candidate.reset()
        candidate.negotiate(configuration.features)
        candidate.restoreBypass(snapshot.bypass)
        let bypassDomains = Set(snapshot.domains.filter(\.bypass).map(\.id))
        for endpoint in snapshot.endpoints {
            let flags = bypassDomains.contains(endpoint.domain) ? AttachRequest.flagBypass : 0
            guard candidate.execute(AttachRequest(domain: endpoint.domain, endpoint: endpoint.endpoint, flags: flags)) == .ok else {
                return FrontendStatus.refused.encoded
            }
        }
        for m in snapshot.mappings {
            let request = MapRequest(domain: m.domain, virtualStart: m.virtualStart, virtualEnd: m.virtualEnd,
                                     physicalStart: m.physicalStart, flags: m.flags)
            guard candidate.execute(request) == .ok else { return FrontendStatus.refused.encoded }
        }
        candidate.negotiate(negotiated)
        candidate.recordsChanges = true
        model = candidate
        active.statePushed = true
        return FrontendStatus.ok.encoded
    }

    private func reset(_ payload: [UInt8], _ model: inout IOMMUModel) -> [UInt8] {
        guard case .active(let active) = phase else { return FrontendStatus.badState.encoded }
        do {
            let request = try payload.withUnsafeBytes { bytes throws(FrontendWireError) in try ResetRequest(decoding: bytes) }
            try active.writer.reset(epoch: request.epoch, startIndex: request.startIndex)
            active.waiting = nil  // the engine completes the waiting request (rule 6)
            active.faults?.epoch = request.epoch  // records of the old epoch are refused (§10.3)
            model.reset()
            model.restoreBypass(request.bypass)
            model.drainChanges { _ in }  // a reset writes no entry (§7)
            return FrontendStatus.ok.encoded
        } catch let error as FrontendWireError {
            return error.status.encoded
        } catch {
            return FrontendStatus.invalid.encoded
        }
    }

    // MARK: The log (§5, §6)

    /// After the model handled a request: its changes go to the log and are published. Whether the
    /// request's completion must wait (an acknowledgement, or log space) is kept for `takeWaitRequest`.
    func publishRequest(of model: inout IOMMUModel) {
        guard case .active(let active) = phase else {
            model.drainChanges { _ in }
            return
        }
        active.requestsHandled = true
        var outcome: CommitOutcome?
        var touchedDomain: Domain.ID?
        do {
            try model.drainChanges { (change: StateChange) throws(LogWriterError) in
                // A MAP or UNMAP's domain: its endpoints' notifier bytes decide whether it waits (§6 rule 2).
                if let domain = change.mappingsChangedIn { touchedDomain = domain }
                // The avail position is not known here; it matters only to COMMIT_WINDOW (not granted).
                if let committed = try active.writer.record(change, requestAt: 0) { outcome = committed }
            }
            switch outcome {
            case .committed(var commit)?:
                if let domain = touchedDomain, let members = model.domains[domain]?.endpoints {
                    try active.writer.checkNotifiers(of: members, for: &commit)
                }
                if commit.ringDoorbell { active.ringDoorbell() }
                active.waiting = commit.needsAcknowledgement ? .acknowledgement(commit) : nil
            case .noSpace?:
                active.waiting = .space
                _ = progress(of: active, model: &model)  // rings the doorbell if due
            case nil:
                break
            }
            waitRequested = active.waiting != nil
        } catch {
            end(violation: "log: \(error)", model: &model)
        }
    }

    /// Whether the request just handled must wait (asked once per request, from inside the turn).
    func takeWaitRequest() -> Bool {
        defer { waitRequested = false }
        return waitRequested
    }

    /// QEMU's `applied` and `acked`, ringing the doorbell when it is due; nil when they broke the
    /// protocol (the session is then over).
    private func progress(of active: Active, model: inout IOMMUModel) -> LogProgress? {
        do {
            let progress = try active.writer.progress()
            if progress.ringDoorbell { active.ringDoorbell() }
            return progress
        } catch {
            end(violation: "progress: \(error)", model: &model)
            return nil
        }
    }

    /// Whether the waiting completion may go: its commit acknowledged, or the log had room after all.
    func waitIsOver(model: inout IOMMUModel) -> Bool {
        guard case .active(let active) = phase, let progress = progress(of: active, model: &model) else { return true }
        switch active.waiting {
        case nil:
            break
        case .acknowledgement(let commit):
            if commit.isAcknowledged(by: progress.acked) { active.waiting = nil }
        case .space:
            do {
                if case .committed(let commit) = try active.writer.retry() {
                    if commit.ringDoorbell { active.ringDoorbell() }
                    active.waiting = commit.needsAcknowledgement ? .acknowledgement(commit) : nil
                }
            } catch {
                end(violation: "log: \(error)", model: &model)
                return true
            }
        }
        return active.waiting == nil
    }

    enum LocalOutcome {
        case done
        case waiting(LogCommit)
        case failed(String)
    }

    /// A change the daemon made itself (the model already made it, recorded): published as a LOCAL
    /// group (§6.1), to be acknowledged when it holds a DETACH.
    func publishLocal(of model: inout IOMMUModel) -> LocalOutcome {
        guard case .active(let active) = phase else {
            model.drainChanges { _ in }
            return .done
        }
        guard active.hello.capabilities.contains(.localChanges) else {
            model.drainChanges { _ in }
            return .failed("the front-end did not accept changes of the back-end's own (LOCAL_CHANGES)")
        }
        do {
            // A LOCAL group: its changes are staged and committed together (no request completes in it).
            try model.drainChanges { (change: StateChange) throws(LogWriterError) in
                if let operation = LogOperation(change) { try active.writer.stage(operation) }
            }
            switch try active.writer.commitLocal() {
            case .committed(let commit):
                if commit.ringDoorbell { active.ringDoorbell() }
                return commit.needsAcknowledgement ? .waiting(commit) : .done
            case .noSpace:
                active.writer.discardStaged()
                return .failed("the front-end's log is full; try again")
            }
        } catch {
            end(violation: "log: \(error)", model: &model)
            return .failed("front-end session ended: \(error)")
        }
    }

    /// Whether QEMU acknowledged `commit` (or the session that wanted it is gone).
    func isAcknowledged(_ commit: LogCommit, model: inout IOMMUModel) -> Bool {
        guard case .active(let active) = phase, let progress = progress(of: active, model: &model) else { return true }
        return commit.isAcknowledged(by: progress.acked)
    }

    /// GET_VRING_BASE completes the waiting request without the acknowledgement (§6 rule 6).
    func abandonWait() {
        guard case .active(let active) = phase else { return }
        active.writer.abandonAcknowledgements()
        active.waiting = nil
    }

    /// The acknowledgement eventfd, for the engine to watch.
    var acknowledgementDescriptor: FileDescriptor? {
        if case .active(let active) = phase { return active.acknowledgement.descriptor }
        return nil
    }

    /// The fault eventfd, for the engine to watch (FAULT_RING only).
    var faultDescriptor: FileDescriptor? {
        if case .active(let active) = phase { return active.faultDescriptor }
        return nil
    }

    /// Takes what the fault ring holds (at most its size: bounded work per wake-up) and queues each
    /// record as a fault for the guest (§10.3). Returns how many were queued.
    @discardableResult
    func drainFaults(model: inout IOMMUModel) -> Int {
        guard case .active(let active) = phase, var reader = active.faults else { return 0 }
        let refusedBefore = reader.refusedRecords
        var reported = 0, unknown = 0
        do {
            try reader.drain { record in
                var flags: Fault.Flags = .address
                if record.access.contains(.read) { flags.insert(.read) }
                if record.access.contains(.write) { flags.insert(.write) }
                let fault = Fault(reason: record.reason == .domain ? .domain : .mapping, flags: flags,
                                  endpoint: record.endpoint, address: record.address)
                if model.report(fault) { reported += 1 } else { unknown += 1 }
            }
        } catch {
            // Faults only report; the mirror stays right. The ring is not read again this session.
            active.faults = nil
            faultRingFailure = "fault ring: \(error); no more faults are read from this front-end until it reconnects"
            return reported
        }
        active.faults = reader
        faultCounters.reported += reported
        faultCounters.refused += unknown + reader.refusedRecords - refusedBefore
        faultCounters.droppedByFrontend = Self.saturatingSum(droppedInEndedSessions, reader.droppedByFrontend)
        return reported
    }

    /// `fault_dropped` is QEMU's to write: any value must add up without trapping.
    private static func saturatingSum(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : sum
    }

    /// The front-end is gone (disconnect or device reset of the connection): the session ends.
    func end(model: inout IOMMUModel) {
        violationNeedsReconnect = false
        if case .active(let active) = phase, let reader = active.faults {
            droppedInEndedSessions = Self.saturatingSum(droppedInEndedSessions, reader.droppedByFrontend)
            faultCounters.droppedByFrontend = droppedInEndedSessions
        }
        phase = .idle
        model.recordsChanges = false
    }

    /// A violation by the front-end ends the session; the model stops recording.
    private func end(violation: String, model: inout IOMMUModel) {
        lastViolation = violation
        end(model: &model)
        violationNeedsReconnect = true
    }
}
