import IOMMUFrontend
import VirtioIOMMU

/// How a change the device model records becomes an entry of QEMU's op log (docs/frontend-protocol.md §5.4).
/// The one place that joins the model and the front-end protocol, which otherwise know nothing of each other.
extension LogOperation {
    /// The log operation for a mirrored change, or nil for what the log does not carry: aux (PASID)
    /// attachments, `bypass`, resets (§5.4, §7) and request completions (the writer commits those).
    public init?(_ change: StateChange) {
        switch change {
        case .domainCreated(let id, let bypass): self = .domainCreate(domain: id, bypass: bypass)
        case .domainDestroyed(let id): self = .domainDestroy(domain: id)
        case .attached(let endpoint, let domain): self = .attach(endpoint: endpoint, domain: domain)
        case .detached(let endpoint, let domain): self = .detach(endpoint: endpoint, domain: domain)
        case .mapped(let domain, let m):
            self = .map(domain: domain, virtualStart: m.virtualStart, virtualEnd: m.virtualEnd,
                        physicalStart: m.physicalStart, flags: m.flags.rawValue)
        case .unmapped(let domain, let range): self = .unmap(domain: domain, virtualStart: range.first, virtualEnd: range.last)
        case .auxAttached, .auxDetached, .bypassChanged, .reset, .requestCompleted: return nil
        }
    }
}

extension StateChange {
    /// The domain whose mappings a MAP or UNMAP changed: its endpoints' notifier bytes decide whether the
    /// request must wait for QEMU's acknowledgement (§6 rule 2).
    public var mappingsChangedIn: Domain.ID? {
        switch self {
        case .mapped(let domain, _), .unmapped(let domain, _): domain
        default: nil
        }
    }
}

extension LogWriter {
    /// Records one change the model made (docs/frontend-protocol.md §5.4): a mirrored change is staged, a
    /// completed request commits what its changes staged (PROBE changes nothing and commits nothing), the
    /// rest is not in the log. Returns the commit's outcome for a completion, nil otherwise.
    public mutating func record(_ change: StateChange, requestAt position: UInt16) throws(LogWriterError) -> CommitOutcome? {
        if let operation = LogOperation(change) {
            try stage(operation)
            return nil
        }
        guard case .requestCompleted(let type, let status) = change else { return nil }
        if type == .probe {
            discardStaged()
            return nil
        }
        return try commit(requestAt: position, status: status.rawValue)
    }
}
