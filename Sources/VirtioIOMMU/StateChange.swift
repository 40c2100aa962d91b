import PASIDAllocators

/// One change the device model made to its state, as a front-end mirroring that state needs to know it
/// (docs/frontend-protocol.md §5.4: the daemon turns these into log entries). Recorded only while
/// `Device.recordsChanges` is on.
///
/// The changes of one request come in the order the model made them and end with `requestCompleted`;
/// a request that fails changes nothing, so it records `requestCompleted` alone.
public enum StateChange: Hashable, Sendable {
    /// A domain came into being (first ATTACH or ATTACH_PASID naming it).
    case domainCreated(Domain.ID, bypass: Bool)
    /// A domain went with its last attachment, primary or aux, and its mappings with it.
    case domainDestroyed(Domain.ID)
    /// An endpoint's primary domain.
    case attached(endpoint: Endpoint.ID, domain: Domain.ID)
    case detached(endpoint: Endpoint.ID, domain: Domain.ID)
    /// PASID extension: an aux attachment (endpoint, PASID) → domain.
    case auxAttached(endpoint: Endpoint.ID, pasid: PASID, domain: Domain.ID)
    case auxDetached(endpoint: Endpoint.ID, pasid: PASID, domain: Domain.ID)
    case mapped(domain: Domain.ID, Mapping)
    /// UNMAP removed every mapping inside `range` (at least one); none straddles it.
    case unmapped(domain: Domain.ID, range: IOVARange)
    /// The `bypass` config field changed (a driver's config write).
    case bypassChanged(Bool)
    /// A device reset: every domain, attachment and mapping is gone (no per-item changes are recorded).
    case reset
    /// `handle` answered a request (used length > 0) with this status. Requests executed through the
    /// `execute` methods directly record their changes but not this.
    case requestCompleted(RequestType, Status)
}

extension IOMMUModel {
    /// Whether the model records its state changes (off by default: then recording costs one branch
    /// per change). Turning it off drops what was recorded.
    public var recordsChanges: Bool {
        get { recordedChanges != nil }
        set {
            if !newValue {
                recordedChanges = nil
            } else if recordedChanges == nil {
                recordedChanges = []
            }
        }
    }

    /// The changes recorded and not yet drained, oldest first.
    public var pendingChanges: [StateChange] { recordedChanges ?? [] }

    /// Hands every recorded change to `body`, oldest first, and forgets them; the storage is kept, so
    /// recording and draining allocate nothing once warm. If `body` throws, the rest are dropped too.
    public mutating func drainChanges<E: Error>(_ body: (StateChange) throws(E) -> Void) throws(E) {
        guard recordedChanges != nil, !recordedChanges!.isEmpty else { return }
        var changes: [StateChange] = []
        swap(&changes, &recordedChanges!)
        defer {
            changes.removeAll(keepingCapacity: true)
            recordedChanges = changes
        }
        for change in changes { try body(change) }
    }

    @inline(__always)
    mutating func record(_ change: @autoclosure () -> StateChange) {
        if recordedChanges != nil { recordedChanges!.append(change()) }
    }
}
