/// The kind of access a consumer asks to translate.
public struct Access: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let read = Access(rawValue: 1 << 0)
    public static let write = Access(rawValue: 1 << 1)
}

/// Why a translation produced no segments.
public enum TranslationError: Error, Hashable, Sendable {
    /// No such endpoint: nothing is reported to the guest, since a fault must name a valid endpoint (D49).
    case unknownEndpoint(Endpoint.ID)
    /// A zero length, or a range that runs past 2^64−1.
    case invalidRange
    /// The access is denied; the same fault was queued for the guest's event queue.
    case fault(Fault)
}

extension IOMMUModel {
    /// Whether an endpoint that is not attached to any domain is in bypass (§5.13.6, bypass rules).
    public var unattachedEndpointsBypass: Bool {
        (configuration.features.contains(.bypassConfig) && bypass) || negotiatedFeatures.contains(.bypass)
    }

    /// Translates `length` bytes at `iova` for an endpoint's DMA, across adjacent mappings.
    ///
    /// Bypass gives the identity. An attached endpoint needs a mapping with the permission for every
    /// byte (D28: no write without WRITE; reads need READ); the MSI window of the endpoint is
    /// translated 1:1. A denied access is queued as a fault for the event queue and thrown.
    ///
    /// With a `pasid`, the traffic resolves through the endpoint's aux domain for that PASID; without
    /// one, a fault with reason DOMAIN (PASID extension, rule 7).
    public mutating func translate(endpoint id: Endpoint.ID, pasid: UInt32? = nil, iova: UInt64, length: UInt64,
                                   access: Access) throws(TranslationError) -> Segments {
        // The IOTLB answers a range inside one recently used mapping with the permission asked for.
        let pasidKey = TranslationCache.key(pasid)
        if let cached = translationCache.lookup(endpoint: id, pasidKey: pasidKey, address: iova),
           length > 0, length - 1 <= cached.virtualEnd - iova, Self.denied(access, by: cached.flags).isEmpty {
            return Segments(Segment(address: cached.physicalAddress(of: iova), length: length))
        }
        guard let endpointIndex = endpoints.index(forKey: id) else { throw .unknownEndpoint(id) }
        guard let range = IOVARange(start: iova, length: length) else { throw .invalidRange }
        // The fault names the PASID only when the driver negotiated the extension (D47 otherwise).
        let reportedPASID = negotiatedFeatures.contains(.pasid) ? pasid : nil
        let domainIndex: Dictionary<Domain.ID, Domain>.Index
        if let pasid {
            guard let domainID = endpoints.values[endpointIndex].auxDomains[pasid],
                  let aux = domains.index(forKey: domainID) else {
                throw .fault(raise(.domain, access: access, endpoint: id, address: iova, pasid: reportedPASID))
            }
            domainIndex = aux
        } else {
            let identity = Segments(Segment(address: iova, length: length))
            guard let domainID = endpoints.values[endpointIndex].domain, let primary = domains.index(forKey: domainID) else {
                if unattachedEndpointsBypass { return identity }
                throw .fault(raise(.domain, access: access, endpoint: id, address: iova))  // D10
            }
            if domains.values[primary].isBypass { return identity }
            if endpoints.values[endpointIndex].reservedRegions.contains(where: { $0.kind == .msi && $0.range.contains(range) }) {
                return identity
            }
            domainIndex = primary
        }
        var segments = Segments()
        var address = range.first
        while true {
            guard let mapping = domains.values[domainIndex].mappings.mapping(containing: address) else {
                throw .fault(raise(.mapping, access: access, endpoint: id, address: address, pasid: reportedPASID))
            }
            let denied = Self.denied(access, by: mapping.flags)
            guard denied.isEmpty else {
                throw .fault(raise(.mapping, flags: denied, endpoint: id, address: address, pasid: reportedPASID))
            }
            if address == range.first { translationCache.insert(mapping, endpoint: id, pasidKey: pasidKey, address: iova) }
            let last = min(mapping.virtualEnd, range.last)
            let count = last - address + 1  // ≤ length, so it fits
            segments.appendMerging(Segment(address: mapping.physicalAddress(of: address), length: count))
            if last == range.last { return segments }
            address = last + 1
        }
    }

    /// The permissions an access needs that a mapping lacks (D28: no write without WRITE; reads need READ).
    @inline(__always)
    static func denied(_ access: Access, by flags: MapFlags) -> Fault.Flags {
        var denied: Fault.Flags = []
        if access.contains(.read) && !flags.contains(.read) { denied.insert(.read) }
        if access.contains(.write) && !flags.contains(.write) { denied.insert(.write) }
        return denied
    }

    private mutating func raise(_ reason: Fault.Reason, access: Access, endpoint: Endpoint.ID, address: UInt64,
                                pasid: UInt32? = nil) -> Fault {
        var flags: Fault.Flags = []
        if access.contains(.read) { flags.insert(.read) }
        if access.contains(.write) { flags.insert(.write) }
        return raise(reason, flags: flags, endpoint: endpoint, address: address, pasid: pasid)
    }

    private mutating func raise(_ reason: Fault.Reason, flags: Fault.Flags, endpoint: Endpoint.ID, address: UInt64,
                                pasid: UInt32? = nil) -> Fault {
        let fault = Fault(reason: reason, flags: flags.union(.address), endpoint: endpoint, address: address, pasid: pasid)
        faults.append(fault)
        counters.faultsRaised += 1
        return fault
    }

    /// Queues a fault that a consumer found itself (QEMU's front-end refusing a DMA from its mirror of
    /// the mappings) for the event queue, as `translate` queues its own. Returns false and queues nothing
    /// for an endpoint the device does not have (D49: a fault names a valid endpoint).
    public mutating func report(_ fault: Fault) -> Bool {
        guard endpoints[fault.endpoint] != nil else { return false }
        faults.append(fault)
        counters.faultsRaised += 1
        return true
    }

    /// Writes the oldest pending fault into an event buffer the driver posted.
    /// Returns the used length (24), 0 when the buffer cannot hold a whole record (D51: never split;
    /// the fault stays queued), or nil when no fault is pending (the buffer should stay posted).
    public mutating func deliverFault(into writable: WritableParts) -> Int? {
        guard let fault = faults.first else { return nil }
        guard writable.totalCount >= Fault.eventSize else { return 0 }
        _ = faults.popFirst()
        fault.encoded.withUnsafeBytes { writable.scatter($0, at: 0) }
        counters.faultsDelivered += 1
        return Fault.eventSize
    }

    /// Removes and returns the oldest pending fault without a buffer (for consumers and tests).
    public mutating func popFault() -> Fault? {
        guard let fault = faults.popFirst() else { return nil }
        counters.faultsDelivered += 1
        return fault
    }
}
