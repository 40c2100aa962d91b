import PASIDAllocators

/// The PASID extension (docs/pasid-extension.md): aux domains per (endpoint, PASID), and PASIDs
/// from the host-wide store, owned by this VM.
extension IOMMUModel {
    /// The PASIDs an endpoint can use: 1 ..< 2^bits (0 is traffic without a PASID).
    static func pasidRange(bits: Int) -> ClosedRange<PASID>? {
        bits > 0 ? 1...PASID((UInt64(1) << bits) - 1) : nil
    }

    /// ATTACH_PASID: checks in the documented order; the first failure decides and nothing changes.
    mutating func executeAttach(_ request: PASIDAttachmentRequest) -> Status {
        guard request.flags == 0, request.reserved == 0 else { return .invalid }
        guard let endpoint = endpoints[request.endpoint] else { return .noEntry }
        guard let usable = Self.pasidRange(bits: endpoint.pasidBits) else { return .unsupported }
        guard usable.contains(request.pasid) else { return .range }
        guard heldPASIDs.contains(request.pasid) else { return .noEntry }
        guard endpoint.domain != nil else { return .unsupported }
        if negotiatedFeatures.contains(.domainRange) && !configuration.domainRange.contains(request.domain) {
            return .range
        }
        if let existing = domains[request.domain] {
            guard !existing.isBypass else { return .invalid }
            // Rule 1: an aux domain has one system-wide PASID, the same on every endpoint.
            if let auxPASID = existing.auxPASID, auxPASID != request.pasid { return .invalid }
        }
        if let current = endpoint.auxDomains[request.pasid] {
            return current == request.domain ? .ok : .invalid
        }
        if domains[request.domain] == nil {
            guard domains.count < configuration.limits.maxDomains else { return .noMemory }
            domains[request.domain] = Domain(id: request.domain, isBypass: false)
            record(.domainCreated(request.domain, bypass: false))
        }
        translationCache.invalidateAll()
        domains[request.domain]!.auxEndpoints.insert(endpoint.id)
        domains[request.domain]!.auxPASID = request.pasid
        endpoints[endpoint.id]!.auxDomains[request.pasid] = request.domain
        record(.auxAttached(endpoint: endpoint.id, pasid: request.pasid, domain: request.domain))
        return .ok
    }

    /// DETACH_PASID: removes one (endpoint, PASID) attachment.
    mutating func executeDetach(_ request: PASIDAttachmentRequest) -> Status {
        guard request.flags == 0, request.reserved == 0 else { return .invalid }
        guard let endpoint = endpoints[request.endpoint] else { return .noEntry }
        guard endpoint.auxDomains[request.pasid] == request.domain, domains[request.domain] != nil else { return .invalid }
        translationCache.invalidateAll()
        endpoints[endpoint.id]!.auxDomains[request.pasid] = nil
        domains[request.domain]!.auxEndpoints.remove(endpoint.id)
        if domains[request.domain]!.auxEndpoints.isEmpty { domains[request.domain]!.auxPASID = nil }
        record(.auxDetached(endpoint: endpoint.id, pasid: request.pasid, domain: request.domain))
        dropIfUnheld(request.domain)
        return .ok
    }

    /// ALLOC_PASID: a PASID from the host-wide store, owned by this VM, written before the tail.
    /// Returns the status and the bytes written before the tail (pasid and its reserved word).
    mutating func execute(_ request: AllocPASIDRequest, writable: WritableParts, room: Int) -> (Status, Int) {
        guard request.reserved == 0 else { return (.invalid, 0) }
        guard room >= AllocPASIDRequest.writableSize - requestTailSize else { return (.invalid, 0) }
        guard let store = pasidStore else { return (.deviceError, 0) }
        let range: ClosedRange<PASID>?
        switch (request.min, request.max) {
        case (0, 0): range = nil
        case (0, _): return (.range, 0)
        case let (low, high) where low > high || !store.space.contains(high): return (.range, 0)
        case let (low, high): range = low...high
        }
        let status: Status
        var pasid: PASID = 0
        do {
            pasid = try store.allocate(owner: owner, in: range)
            heldPASIDs.insert(pasid)
            status = .ok
        } catch .exhausted, .quotaExceeded {
            status = .noMemory
        } catch .invalidRange {
            status = .range
        } catch {
            status = .deviceError
        }
        var reply: (UInt32, UInt32) = (pasid.littleEndian, 0)
        withUnsafeBytes(of: &reply) { writable.scatter($0, at: 0) }
        return (status, 8)
    }

    /// FREE_PASID: gives one of this VM's PASIDs back, once nothing is attached under it.
    mutating func execute(_ request: FreePASIDRequest) -> Status {
        guard request.reserved.allSatisfy({ $0 == 0 }) else { return .invalid }
        guard heldPASIDs.contains(request.pasid) else { return .noEntry }
        // Rule 1 makes a PASID name at most one aux domain: attachments under it exist iff that domain does.
        guard !domains.values.contains(where: { $0.auxPASID == request.pasid }) else { return .invalid }
        do {
            try pasidStore?.free(request.pasid, owner: owner)
        } catch .notHeld {
            // The store no longer has it (an administrator released it): it is ours no more either.
        } catch {
            return .deviceError
        }
        heldPASIDs.remove(request.pasid)
        return .ok
    }
}

/// A reset could not give this VM's PASIDs back to the host-wide store.
public struct PASIDReleaseFailure: Error, Hashable, Sendable {
    /// What the store threw from `releaseAll(owner:)`.
    public let error: PASIDStoreError
    /// The PASIDs the device held then, ascending; the device forgot them, but the store may still list
    /// them under this VM's owner until a later release succeeds.
    public let pasids: [PASID]
}
