import PASIDAllocators

/// The virtio-iommu device model (virtio 1.4 §5.13): requests in, replies and faults out.
///
/// A value type with no system calls: the transport hands it descriptor-chain views and tells it the
/// negotiated features; whoever shares it between threads wraps it in a lock.
public struct IOMMUModel: Sendable {
    public let configuration: Configuration
    /// Device features the driver accepted (a subset of `configuration.features`).
    public private(set) var negotiatedFeatures: Features = []
    /// The `bypass` config field: unattached endpoints are in bypass while it is true and F_BYPASS_CONFIG is offered.
    public private(set) var bypass: Bool
    public internal(set) var endpoints: [Endpoint.ID: Endpoint]
    public internal(set) var domains: [Domain.ID: Domain] = [:]
    /// Mappings across all domains.
    public internal(set) var mappingCount = 0
    public internal(set) var counters = Counters()
    var faults: FaultQueue
    /// Recently used translations (an IOTLB); see `TranslationCache` for when it empties.
    var translationCache = TranslationCache()
    /// The host-wide PASID allocator and this VM's name in it (PASID extension).
    let pasidStore: (any PASIDAllocator)?
    public let owner: String
    /// PASIDs this VM holds, allocated through this device.
    public internal(set) var heldPASIDs: Set<PASID> = []
    /// The last failure to give this VM's PASIDs back to the store on reset (each is counted in
    /// `counters.pasidReleaseFailures`); nil if none has failed.
    public private(set) var lastPASIDReleaseFailure: PASIDReleaseFailure?
    /// A release failed and has not succeeded since: the next reset tries again even if no PASID is held.
    private var pasidReleaseOutstanding = false
    /// State changes not yet drained, or nil while recording is off (StateChange.swift).
    var recordedChanges: [StateChange]?

    /// The largest readable snapshot a request needs (PROBE: 72 bytes).
    public static let maxRequestSize = 72

    /// How far a writable part may exceed what its reply owes and still be answered. An answer writes
    /// every byte up to the tail (used length = the whole part, virtio §2.7.8.2), so this bounds the
    /// bytes one request writes. 64 KiB = `Configuration.maxProbeSize`: a driver that uses one reply
    /// buffer, sized for the largest PROBE, for every request is still answered.
    public static let maxWritableSlack = Int(Configuration.maxProbeSize)

    /// Bytes of the writable part that the reply of `type` owes, by its layout: the tail, after
    /// PROBE's `properties[probe_size]` or ALLOC_PASID's `pasid` and reserved word.
    static func owedWritableSize(_ type: RequestType, probeSize: UInt32) -> Int {
        switch type {
        case .probe: Int(probeSize) + requestTailSize
        case .allocPASID: AllocPASIDRequest.writableSize
        case .attach, .detach, .map, .unmap, .attachPASID, .detachPASID, .freePASID: requestTailSize
        }
    }

    public init(configuration: Configuration, pasidStore: (any PASIDAllocator)? = nil, owner: String = "")
        throws(ConfigurationError) {
        try configuration.validate()
        if configuration.features.contains(.pasid) && pasidStore == nil { throw .pasidWithoutStore }
        self.pasidStore = pasidStore
        self.owner = owner
        self.configuration = configuration
        self.bypass = configuration.bypass
        self.faults = FaultQueue(capacity: configuration.limits.maxPendingFaults)
        var endpoints: [Endpoint.ID: Endpoint] = [:]
        endpoints.reserveCapacity(configuration.endpoints.count)
        for (id, regions) in configuration.endpoints {
            endpoints[id] = Endpoint(id: id, reservedRegions: regions, pasidBits: configuration.pasidWidths[id] ?? 0)
        }
        self.endpoints = endpoints
    }

    /// The mapping granule: the least significant set bit of `page_size_mask`.
    public var granule: UInt64 { configuration.granule }

    // MARK: Features and config space

    /// Records what the driver accepted; bits the device did not offer are ignored.
    public mutating func negotiate(_ features: Features) {
        translationCache.invalidateAll()
        negotiatedFeatures = features.intersection(configuration.features)
    }

    /// The config space as the driver reads it; fields of features not offered read as 0.
    public var configSpace: ConfigSpace {
        let offered = configuration.features
        var space = ConfigSpace()
        space.pageSizeMask = configuration.pageSizeMask
        if offered.contains(.inputRange) {
            space.inputRangeStart = configuration.inputRange.first
            space.inputRangeEnd = configuration.inputRange.last
        }
        if offered.contains(.domainRange) {
            space.domainRangeStart = configuration.domainRange.lowerBound
            space.domainRangeEnd = configuration.domainRange.upperBound
        }
        if offered.contains(.probe) { space.probeSize = configuration.probeSize }
        if offered.contains(.bypassConfig) { space.bypass = bypass ? 1 : 0 }
        return space
    }

    /// Applies a driver's config write. Only `bypass` is writable (§5.13.4.1), only with
    /// F_BYPASS_CONFIG negotiated, and only as 0 or 1; other bytes may be rewritten unchanged,
    /// because some transports send the whole config space on every write.
    public mutating func writeConfig(offset: Int, bytes: [UInt8]) throws(ConfigWriteError) {
        guard offset >= 0, offset <= ConfigSpace.size, bytes.count <= ConfigSpace.size - offset else {
            throw .outOfBounds(offset: offset, count: bytes.count)
        }
        let current = configSpace.bytes
        var newBypass: UInt8?
        for (i, byte) in bytes.enumerated() {
            let at = offset + i
            if at == ConfigSpace.bypassOffset && configuration.features.contains(.bypassConfig) {
                newBypass = byte
            } else if byte != current[at] {
                throw .readOnly(offset: at)
            }
        }
        guard let value = newBypass, value != current[ConfigSpace.bypassOffset] else { return }
        guard negotiatedFeatures.contains(.bypassConfig) else { throw .bypassNotNegotiated }
        guard value <= 1 else { throw .invalidBypass(value) }  // D6
        let newValue = value == 1
        bypass = newValue
        record(.bypassChanged(newValue))
    }

    /// A system reset as the transport sees it: `bypass` goes back to the value the front-end holds for
    /// the boot state (D5: restored to its initial value on system reset). Only with F_BYPASS_CONFIG.
    public mutating func restoreBypass(_ value: Bool) {
        guard configuration.features.contains(.bypassConfig), value != bypass else { return }
        translationCache.invalidateAll()
        bypass = value
        record(.bypassChanged(value))
    }

    // MARK: Reset

    /// Device reset: no endpoint stays attached, no domain or mapping survives, pending faults are
    /// dropped, and this VM's PASIDs go back to the store. `bypass` keeps its value (D5), and the
    /// negotiated features belong to the transport.
    public mutating func reset() {
        counters.resets += 1
        translationCache.invalidateAll()
        domains.removeAll()
        for id in endpoints.keys where endpoints[id]!.domain != nil || !endpoints[id]!.auxDomains.isEmpty {
            endpoints[id]!.domain = nil
            endpoints[id]!.auxDomains.removeAll()
        }
        mappingCount = 0
        faults.removeAll()
        record(.reset)
        if !heldPASIDs.isEmpty || pasidReleaseOutstanding, let pasidStore {
            do throws(PASIDStoreError) {
                try pasidStore.releaseAll(owner: owner)
                pasidReleaseOutstanding = false
            } catch {
                // The store may still list them under `owner`: say so, and try again on the next reset.
                counters.pasidReleaseFailures += 1
                lastPASIDReleaseFailure = PASIDReleaseFailure(error: error, pasids: heldPASIDs.sorted())
                pasidReleaseOutstanding = true
            }
            heldPASIDs.removeAll()
        }
    }

    // MARK: Requests

    /// Handles one request chain: reads the request, applies it, writes the reply.
    /// Returns the used length: 0 when nothing was written (D8, D36, no room for the tail, or a writable
    /// part more than `maxWritableSlack` bytes larger than the reply owes); otherwise the whole writable
    /// part, whose unused bytes are zeroed and whose last 4 bytes are the tail.
    public mutating func handle(readable: ReadableParts, writable: WritableParts) -> Int {
        let writableCount = writable.totalCount
        guard writableCount >= requestTailSize else {
            counters.unanswered += 1
            return 0
        }
        // Read here, not in the closure: a non-mutating call on `self` there copied the whole device.
        let features = negotiatedFeatures
        let probeSize = configuration.probeSize
        return withUnsafeTemporaryAllocation(byteCount: Self.maxRequestSize, alignment: 8) { snapshot in
            let snapshot = UnsafeMutableRawBufferPointer(snapshot)
            let length = readable.gather(into: snapshot)
            guard length >= requestHeadSize,
                  let type = RequestType(rawValue: snapshot[0]), Self.isEnabled(type, features) else {
                counters.unanswered += 1
                return 0
            }
            // Answering writes the whole part, so a part far beyond what the reply owes is refused
            // before the request runs. No overflow: writableCount ≥ 4 and the owed size is small.
            guard writableCount - Self.owedWritableSize(type, probeSize: probeSize) <= Self.maxWritableSlack else {
                counters.unanswered += 1
                counters.oversizedWritableParts += 1
                return 0
            }
            // Every path that returns 0 is above; nothing has been written so far (D8, D36, §5.13.6.1).
            let body = UnsafeRawBufferPointer(rebasing: snapshot[0..<length])
            let tailOffset = writableCount - requestTailSize
            var written = 0  // reply bytes at the start of the writable part
            let status: Status
            if length < type.readableSize {
                status = .invalid
            } else {
                switch type {
                case .attach: status = execute(AttachRequest(body))
                case .detach: status = execute(DetachRequest(body))
                case .map: status = execute(MapRequest(body))
                case .unmap: status = execute(UnmapRequest(body))
                case .probe: (status, written) = execute(ProbeRequest(body), writable: writable, room: tailOffset)
                case .attachPASID: status = executeAttach(PASIDAttachmentRequest(body))
                case .detachPASID: status = executeDetach(PASIDAttachmentRequest(body))
                case .allocPASID: (status, written) = execute(AllocPASIDRequest(body), writable: writable, room: tailOffset)
                case .freePASID: status = execute(FreePASIDRequest(body))
                }
            }
            counters.record(type, status)
            record(.requestCompleted(type, status))
            writable.zero(from: written, count: tailOffset - written)
            var tail: UInt32 = UInt32(status.rawValue).littleEndian  // tail.reserved = 0 (D9)
            withUnsafeBytes(of: &tail) { writable.scatter($0, at: tailOffset) }
            return writableCount
        }
    }

    /// Whether a request type is understood under the negotiated features; others are unrecognized (D8).
    static func isEnabled(_ type: RequestType, _ negotiatedFeatures: Features) -> Bool {
        switch type {
        case .attach, .detach: true
        case .map, .unmap: negotiatedFeatures.contains(.mapUnmap)
        case .probe: negotiatedFeatures.contains(.probe)  // D36
        case .attachPASID, .detachPASID, .allocPASID, .freePASID: negotiatedFeatures.contains(.pasid)
        }
    }

    /// ATTACH (§5.13.6.3): validated completely before the endpoint leaves its old domain,
    /// so a rejected ATTACH changes nothing.
    public mutating func execute(_ request: AttachRequest) -> Status {
        guard request.reserved == 0 else { return .invalid }  // D11
        let allowedFlags = negotiatedFeatures.contains(.bypassConfig) ? AttachRequest.flagBypass : 0
        guard request.flags & ~allowedFlags == 0 else { return .invalid }  // D12
        guard let endpoint = endpoints[request.endpoint] else { return .noEntry }  // D13
        if negotiatedFeatures.contains(.domainRange) && !configuration.domainRange.contains(request.domain) {
            return .range
        }
        // While aux domains hang off the endpoint, its primary cannot move (aux users go first).
        if !endpoint.auxDomains.isEmpty && endpoint.domain != request.domain { return .unsupported }
        let wantsBypass = request.flags & AttachRequest.flagBypass != 0
        if let existing = domains[request.domain] {
            guard existing.isBypass == wantsBypass else { return .invalid }  // D15
            if endpoint.domain == request.domain { return .ok }  // already there: nothing to do
            for region in endpoint.reservedRegions where existing.mappings.overlaps(region.range) {
                return .unsupported  // D17
            }
        } else {
            // A move that empties the old domain frees a slot for the new one — unless aux attachments of
            // other endpoints still hold it (found by FuzzRequests).
            let freesOne = endpoint.domain.map {
                domains[$0].map { $0.endpoints.count == 1 && $0.auxEndpoints.isEmpty } ?? false
            } ?? false
            guard domains.count - (freesOne ? 1 : 0) < configuration.limits.maxDomains else { return .noMemory }
        }
        if let old = endpoint.domain { detach(endpoint: endpoint.id, from: old) }  // D16 (empties the IOTLB)
        if domains[request.domain] == nil {
            domains[request.domain] = Domain(id: request.domain, isBypass: wantsBypass)
            record(.domainCreated(request.domain, bypass: wantsBypass))
        }
        domains[request.domain]!.attachPrimary(endpoint)
        endpoints[endpoint.id]!.domain = request.domain
        record(.attached(endpoint: endpoint.id, domain: request.domain))
        return .ok  // D18
    }

    /// DETACH (§5.13.6.4). `reserved` is ignored (D19).
    public mutating func execute(_ request: DetachRequest) -> Status {
        guard let endpoint = endpoints[request.endpoint] else { return .noEntry }  // D20
        guard endpoint.domain == request.domain, domains[request.domain] != nil else { return .invalid }  // D21
        guard endpoint.auxDomains.isEmpty else { return .invalid }  // PASID extension: aux users go first
        detach(endpoint: endpoint.id, from: request.domain)  // D22
        return .ok
    }

    /// MAP (§5.13.6.5). The domain is changed in place: reading a `Domain` out of the dictionary
    /// would copy it (a retain per table), which dominated the cost of a request.
    public mutating func execute(_ request: MapRequest) -> Status {
        let flags = MapFlags(rawValue: request.flags)
        var allowed: MapFlags = [.read, .write]
        if negotiatedFeatures.contains(.mmio) { allowed.insert(.mmio) }
        guard allowed.contains(flags) else { return .invalid }  // D25; MMIO needs F_MMIO
        guard let index = domains.index(forKey: request.domain) else { return .noEntry }  // D26
        let mask = granule - 1
        let inputRange = configuration.inputRange
        let limits = configuration.limits
        let totalFull = mappingCount >= limits.maxMappingsTotal
        let status = Self.map(request, flags: flags, into: &domains.values[index], mask: mask, inputRange: inputRange,
                              perDomainLimit: limits.maxMappingsPerDomain, totalFull: totalFull)
        if status == .ok {
            mappingCount += 1
            record(.mapped(domain: request.domain, Mapping(virtualStart: request.virtualStart, virtualEnd: request.virtualEnd,
                                                           physicalStart: request.physicalStart, flags: flags)))
        }
        return status
    }

    private static func map(_ request: MapRequest, flags: MapFlags, into domain: inout Domain, mask: UInt64,
                            inputRange: IOVARange, perDomainLimit: Int, totalFull: Bool) -> Status {
        guard !domain.isBypass else { return .invalid }  // D27
        guard request.virtualStart & mask == 0, request.physicalStart & mask == 0,
              (request.virtualEnd &+ 1) & mask == 0 else { return .range }  // D23
        guard let range = IOVARange(first: request.virtualStart, last: request.virtualEnd) else { return .invalid }
        guard inputRange.contains(range) else { return .range }
        guard !request.physicalStart.addingReportingOverflow(range.lengthMinusOne).overflow else { return .range }
        guard !domain.overlapsReservedRange(range) else { return .invalid }  // D45
        guard !domain.mappings.overlaps(range) else { return .invalid }  // D24
        guard domain.mappings.count < perDomainLimit, !totalFull else { return .noMemory }
        domain.mappings.insert(
            Mapping(virtualStart: range.first, virtualEnd: range.last, physicalStart: request.physicalStart, flags: flags))
        return .ok
    }

    /// UNMAP (§5.13.6.6): removes every mapping inside the range, or nothing if one would be split.
    public mutating func execute(_ request: UnmapRequest) -> Status {
        guard request.reserved == 0 else { return .invalid }  // D29: reject, and unmap nothing
        guard let index = domains.index(forKey: request.domain) else { return .noEntry }  // D30
        let (status, removed) = Self.unmap(request, from: &domains.values[index])
        if removed > 0 {
            mappingCount -= removed
            translationCache.invalidateAll()
            // removed > 0: the range is ordered.
            record(.unmapped(domain: request.domain, range: IOVARange(first: request.virtualStart, last: request.virtualEnd)!))
        }
        return status
    }

    private static func unmap(_ request: UnmapRequest, from domain: inout Domain) -> (Status, removed: Int) {
        guard !domain.isBypass else { return (.invalid, 0) }  // D31
        guard let range = IOVARange(first: request.virtualStart, last: request.virtualEnd) else { return (.invalid, 0) }
        // Exactly one mapping's bounds: nothing else can start inside it or be split by it.
        if domain.mappings.remove(exactly: range) != nil { return (.ok, 1) }
        guard !domain.mappings.wouldSplit(range) else { return (.range, 0) }  // D32
        return (.ok, domain.mappings.removeAll(startingIn: range))  // D33
    }

    /// PROBE (§5.13.6.7): writes the endpoint's RESV_MEM properties at the start of the writable part.
    /// Returns the status and the bytes written before the tail (the rest is zero-filled, D41).
    mutating func execute(_ request: ProbeRequest, writable: WritableParts, room: Int) -> (Status, Int) {
        guard let endpoint = endpoints[request.endpoint] else { return (.noEntry, 0) }  // D35
        guard room >= Int(configuration.probeSize) else { return (.invalid, 0) }  // D40
        var properties = probeProperties(of: endpoint)
        if negotiatedFeatures.contains(.pasid) && endpoint.pasidBits > 0 {
            let offset = properties.count
            properties += [UInt8](repeating: 0, count: PASIDProperty.size)
            properties.withUnsafeMutableBytes { PASIDProperty.write(bits: endpoint.pasidBits, into: $0, at: offset) }
        }
        properties.withUnsafeBytes { writable.scatter($0, at: 0) }
        return (.ok, properties.count)
    }

    /// The PROBE properties of an endpoint: one RESV_MEM per reserved region (D37–D39, D42).
    func probeProperties(of endpoint: Endpoint) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: endpoint.reservedRegions.count * ResvMemProperty.size)
        bytes.withUnsafeMutableBytes { buffer in
            for (i, region) in endpoint.reservedRegions.enumerated() {
                ResvMemProperty.write(region, into: buffer, at: i * ResvMemProperty.size)
            }
        }
        return bytes
    }

    // MARK: Domain membership

    /// Removes an endpoint from a domain; the domain and its mappings go with its last endpoint.
    mutating func detach(endpoint id: Endpoint.ID, from domainID: Domain.ID) {
        translationCache.invalidateAll()
        endpoints[id]?.domain = nil
        guard let endpoint = endpoints[id], domains[domainID] != nil else { return }
        domains[domainID]!.detachPrimary(endpoint)
        record(.detached(endpoint: id, domain: domainID))
        dropIfUnheld(domainID)
    }

    /// Removes a domain, and its mappings, once no primary or aux attachment holds it.
    mutating func dropIfUnheld(_ domainID: Domain.ID) {
        guard let domain = domains[domainID], !domain.isHeld else { return }
        translationCache.invalidateAll()
        mappingCount -= domain.mappings.count
        domains[domainID] = nil
        record(.domainDestroyed(domainID))
    }

    // MARK: Statistics

    /// Faults waiting for an event buffer.
    public var pendingFaultCount: Int { faults.count }
    /// Faults dropped because the pending queue was full.
    public var droppedFaultCount: Int { faults.dropped }
}

extension IOMMUModel {
    /// Handles a request given as bytes, with a writable part of `writableSize` bytes;
    /// returns the used length and the writable part as the driver would see it.
    public mutating func handle(request: [UInt8], writableSize: Int) -> (usedLength: Int, reply: [UInt8]) {
        var reply = [UInt8](repeating: 0xAA, count: max(0, writableSize))  // 0xAA shows unwritten bytes
        let used = request.withUnsafeBytes { readable in
            reply.withUnsafeMutableBytes { writable in
                [readable].withUnsafeBufferPointer { r in
                    [writable].withUnsafeBufferPointer { w in handle(readable: r, writable: w) }
                }
            }
        }
        return (used, reply)
    }
}
