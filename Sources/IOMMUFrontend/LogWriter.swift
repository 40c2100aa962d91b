/// Why the back-end's log writer cannot go on.
public enum LogWriterError: Error, Hashable, Sendable, CustomStringConvertible {
    /// More than `LogEntry.maxPerRequest` entries staged for one request (a bug of the caller).
    case tooManyEntries
    /// The front-end's `applied` or `acked` is beyond `tail`: a protocol violation, the session must end (§9.2).
    case progressBeyondTail(applied: UInt64, acked: UInt64, tail: UInt64)
    /// LOCAL changes without the LOCAL_CHANGES capability (§6.1).
    case localChangesNotGranted
    /// RESET: the epoch is the current one, or `start_index` is beyond `tail` (§7; answered INVALID).
    case resetEpochUnchanged(UInt32)
    case resetBeyondTail(startIndex: UInt64, tail: UInt64)
    /// A start index at or above 2^63 (§4.1).
    case startIndexTooLarge(UInt64)
    /// The layout breaks §4.2's rules, or the memory is smaller than the region it describes.
    case invalidLayout(FrontendWireError)
    /// A commit refused for space must be retried (`retry`) before anything else is staged or committed.
    case commitPending
    /// `retry` without a commit refused for space.
    case nothingToRetry
    /// COMMIT is not staged: `commit` writes it for a request that staged nothing.
    case commitStaged

    public var description: String {
        switch self {
        case .tooManyEntries: "more than \(LogEntry.maxPerRequest) entries for one request"
        case .progressBeyondTail(let applied, let acked, let tail): "front-end progress applied=\(applied) acked=\(acked) beyond tail \(tail)"
        case .localChangesNotGranted: "LOCAL changes need the LOCAL_CHANGES capability"
        case .resetEpochUnchanged(let epoch): "RESET keeps epoch \(epoch)"
        case .resetBeyondTail(let start, let tail): "RESET start_index \(start) beyond tail \(tail)"
        case .startIndexTooLarge(let index): "start index \(index) ≥ 2^63"
        case .invalidLayout(let error): "region layout: \(error)"
        case .commitPending: "a commit waits for log space"
        case .nothingToRetry: "no commit waits for log space"
        case .commitStaged: "COMMIT cannot be staged"
        }
    }
}

/// The entries one request (or LOCAL group) published: indices `firstIndex..<endIndex`.
public struct LogCommit: Hashable, Sendable {
    public let firstIndex: UInt64
    /// One past the LAST entry: the request is acknowledged once `acked ≥ endIndex`.
    public let endIndex: UInt64
    /// The request must not complete before `acked ≥ endIndex` (§6 rules 1–3).
    public internal(set) var needsAcknowledgement: Bool
    /// The caller must write the doorbell eventfd now (§6 rule 7).
    public internal(set) var ringDoorbell: Bool

    /// Whether the front-end's `acked` covers this commit.
    public func isAcknowledged(by acked: UInt64) -> Bool { acked >= endIndex }
}

/// What `commit` did.
public enum CommitOutcome: Hashable, Sendable {
    case committed(LogCommit)
    /// No log space (§6 rule 8): nothing was written; the entries and the request's result are kept.
    /// Call `retry()` once `progress()` shows the front-end applied more (after the ack eventfd, or
    /// while polling); until then the queue stays paused and nothing else is staged.
    case noSpace(ringDoorbell: Bool)
}

/// The front-end's progress as the back-end last read it.
public struct LogProgress: Hashable, Sendable {
    public let applied: UInt64
    public let acked: UInt64
    /// The caller must write the doorbell eventfd now.
    public let ringDoorbell: Bool
}

/// The back-end's side of the op log (docs/frontend-protocol.md §5, §6): stages the entries of one
/// request, writes them at request boundaries only, publishes `tail` with a release store, checks log
/// space against the front-end's `applied`, and says when the doorbell is due (at most one outstanding).
///
/// It knows nothing of the device model: the daemon turns the model's state changes into `stage` calls,
/// one per change, and `commit`s when the request completes.
public struct LogWriter {
    public let memory: any RegionMemory
    public let layout: RegionLayout
    public let capabilities: FrontendCapabilities
    public private(set) var epoch: UInt32
    /// The next entry's index; published to the region after every commit.
    public private(set) var tail: UInt64
    /// Entries of the request in progress, without index, epoch, LAST or result.
    public private(set) var staged: [LogEntry] = []
    /// The largest end index some commit waits to see acknowledged.
    private var acknowledgementTarget: UInt64
    /// `tail` when the outstanding doorbell was rung, or nil if none is outstanding.
    private var ringedAt: UInt64?
    /// A commit refused for space: its flags and result, kept for `retry`.
    private var pending: (flags: LogEntryFlags, position: UInt16, status: UInt8)?
    private var waitingForSpace: Bool { pending != nil }

    /// `tail − applied` at which the doorbell rings even without a waiting request (§6 rule 7).
    public var backlogThreshold: UInt64 { min(4096, UInt64(layout.logEntries / 2)) }

    /// Starts a session (SET_REGION): publishes `tail = startIndex`.
    public init(memory: any RegionMemory, layout: RegionLayout, capabilities: FrontendCapabilities,
                startIndex: UInt64) throws(LogWriterError) {
        guard startIndex < RegionLayout.indexLimit else { throw .startIndexTooLarge(startIndex) }
        do throws(FrontendWireError) { try layout.validate() } catch { throw .invalidLayout(error) }
        guard UInt64(memory.byteCount) >= layout.regionSize else {
            throw .invalidLayout(.size(expected: layout.regionSize, actual: UInt64(memory.byteCount)))
        }
        self.memory = memory
        self.layout = layout
        self.capabilities = capabilities
        self.epoch = layout.epoch
        self.tail = startIndex
        self.acknowledgementTarget = startIndex
        staged.reserveCapacity(LogEntry.maxPerRequest)
        memory.storeRelease(startIndex, at: RegionLayout.tailOffset)
    }

    // MARK: Writing

    /// Adds one change to the request in progress. ATTACH and DETACH get SYNC (§5.3).
    public mutating func stage(_ operation: LogOperation) throws(LogWriterError) {
        if case .commit = operation { throw .commitStaged }
        try append(operation)
    }

    private mutating func append(_ operation: LogOperation) throws(LogWriterError) {
        guard pending == nil else { throw .commitPending }
        guard staged.count < LogEntry.maxPerRequest else { throw .tooManyEntries }
        staged.append(LogEntry(indexLow: 0, operation: operation, flags: operation.alwaysSynchronous ? .sync : [],
                               epoch: epoch))
    }

    /// Drops the staged entries, and a commit waiting for space (the caller gave up the request).
    public mutating func discardStaged() {
        staged.removeAll(keepingCapacity: true)
        pending = nil
    }

    /// Publishes the staged entries of a guest request, LAST on the last one with its avail `position`
    /// and virtio-iommu `status`; a request that staged nothing gets a COMMIT (§5.4).
    public mutating func commit(requestAt position: UInt16, status: UInt8) throws(LogWriterError) -> CommitOutcome {
        guard pending == nil else { throw .commitPending }
        if staged.isEmpty { try append(.commit) }
        return try publish(flags: [], position: position, status: status)
    }

    /// Tries again the commit that `noSpace` refused, with the same entries and result.
    public mutating func retry() throws(LogWriterError) -> CommitOutcome {
        guard let pending else { throw .nothingToRetry }
        return try publish(flags: pending.flags, position: pending.position, status: pending.status)
    }

    /// Publishes the staged entries as a LOCAL group (§6.1); nothing staged, nothing written.
    public mutating func commitLocal() throws(LogWriterError) -> CommitOutcome {
        guard capabilities.contains(.localChanges) else { throw .localChangesNotGranted }
        guard pending == nil else { throw .commitPending }
        if staged.isEmpty {
            return .committed(LogCommit(firstIndex: tail, endIndex: tail, needsAcknowledgement: false, ringDoorbell: false))
        }
        return try publish(flags: .local, position: 0, status: 0)
    }

    private mutating func publish(flags extra: LogEntryFlags, position: UInt16, status: UInt8) throws(LogWriterError) -> CommitOutcome {
        let (applied, acked) = try loadProgress()
        let count = UInt64(staged.count)
        // applied ≤ tail (checked), so tail − applied does not underflow; count ≤ 8.
        guard tail - applied + count <= UInt64(layout.logEntries) else {
            pending = (extra, position, status)
            return .noSpace(ringDoorbell: doorbellDue(applied: applied, acked: acked))
        }
        pending = nil
        let first = tail
        var synchronous = false
        withUnsafeTemporaryAllocation(byteCount: LogEntry.size, alignment: 8) { buffer in
            for i in staged.indices {
                var entry = staged[i]
                let index = first + UInt64(i)
                entry.indexLow = UInt32(truncatingIfNeeded: index)
                entry.epoch = epoch
                entry.flags.formUnion(extra)
                if i == staged.count - 1 {
                    entry.flags.insert(.last)
                    if !extra.contains(.local) {
                        entry.requestPosition = position
                        entry.status = status
                    }
                }
                synchronous = synchronous || entry.flags.contains(.sync)
                entry.encode(into: buffer)
                memory.storeBytes(UnsafeRawBufferPointer(buffer), at: layout.entryOffset(index))
            }
        }
        tail = first + count  // tail < 2^63 + 8 · (entries ever written): no overflow
        memory.storeRelease(tail, at: RegionLayout.tailOffset)
        staged.removeAll(keepingCapacity: true)
        if synchronous { acknowledgementTarget = max(acknowledgementTarget, tail) }
        return .committed(LogCommit(firstIndex: first, endIndex: tail, needsAcknowledgement: synchronous,
                                    ringDoorbell: doorbellDue(applied: applied, acked: acked)))
    }

    /// Rule 2 (§6): after a MAP or UNMAP was published, whether any endpoint of its domain has a
    /// notifier registered. A full fence first orders the notifier loads after the `tail` store. If
    /// one has, the commit waits for acknowledgement (and may ring).
    public mutating func checkNotifiers(of endpoints: some Sequence<UInt32>, for commit: inout LogCommit) throws(LogWriterError) {
        guard !commit.needsAcknowledgement, commit.endIndex > commit.firstIndex else { return }
        memory.fullFence()
        let notified = endpoints.contains { id in
            id < UInt32(FrontendProtocol.endpointCount) && memory.loadByte(at: layout.notifierOffset(of: id)) & 3 != 0
        }
        guard notified else { return }
        commit.needsAcknowledgement = true
        acknowledgementTarget = max(acknowledgementTarget, commit.endIndex)
        let (applied, acked) = try loadProgress()
        commit.ringDoorbell = commit.ringDoorbell || doorbellDue(applied: applied, acked: acked)
    }

    // MARK: Progress and the doorbell

    /// Reads the front-end's `applied` and `acked` (acquire) and says whether the doorbell is due now.
    /// Call it when the ack eventfd fires and while polling; complete waiting commits whose
    /// `isAcknowledged(by: acked)`, retry a commit refused for space.
    public mutating func progress() throws(LogWriterError) -> LogProgress {
        let (applied, acked) = try loadProgress()
        return LogProgress(applied: applied, acked: acked, ringDoorbell: doorbellDue(applied: applied, acked: acked))
    }

    /// Rule 6 (§6): waiting requests were completed without acknowledgement (GET_VRING_BASE); the
    /// doorbell is no longer wanted for them.
    public mutating func abandonAcknowledgements() {
        acknowledgementTarget = tail
        ringedAt = nil
    }

    /// RESET (§7): a new epoch, `tail` rewound to the front-end's `applied`; staged entries dropped.
    public mutating func reset(epoch newEpoch: UInt32, startIndex: UInt64) throws(LogWriterError) {
        guard newEpoch != epoch else { throw .resetEpochUnchanged(newEpoch) }
        guard startIndex <= tail else { throw .resetBeyondTail(startIndex: startIndex, tail: tail) }
        epoch = newEpoch
        tail = startIndex
        discardStaged()
        abandonAcknowledgements()
        acknowledgementTarget = startIndex
        memory.storeRelease(startIndex, at: RegionLayout.tailOffset)
    }

    private func loadProgress() throws(LogWriterError) -> (applied: UInt64, acked: UInt64) {
        let applied = memory.loadAcquire(at: RegionLayout.appliedOffset)
        let acked = memory.loadAcquire(at: RegionLayout.ackedOffset)
        guard applied <= tail && acked <= tail else { throw .progressBeyondTail(applied: applied, acked: acked, tail: tail) }
        return (applied, acked)
    }

    /// Rule 7 (§6): wanted while a commit waits for acknowledgement, while the backlog is large, or while
    /// a commit waits for space; rung only if no doorbell is outstanding (one is until `acked` reaches the
    /// `tail` of its ringing).
    private mutating func doorbellDue(applied: UInt64, acked: UInt64) -> Bool {
        let wanted = acked < acknowledgementTarget || tail - applied >= backlogThreshold || waitingForSpace
        guard wanted else { return false }
        if let ringedAt, acked < ringedAt { return false }
        ringedAt = tail
        return true
    }
}
