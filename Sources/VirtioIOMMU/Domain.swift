import PASIDAllocators

/// A domain: an address space shared by the endpoints attached to it.
public struct Domain: Sendable {
    public typealias ID = UInt32

    public let id: ID
    /// Created by ATTACH with `ATTACH_F_BYPASS`: identity translation, and MAP/UNMAP are refused.
    public let isBypass: Bool
    /// Endpoints attached with this as their primary domain. A set: with 65,536 endpoints in one domain,
    /// removing one from an array cost O(n) per DETACH (sort it where order matters, e.g. for output).
    public internal(set) var endpoints: Set<Endpoint.ID> = []
    /// Endpoints attached with this as an aux domain (PASID extension), and its one system-wide PASID.
    public internal(set) var auxEndpoints: Set<Endpoint.ID> = []
    public internal(set) var auxPASID: PASID?
    /// The union of the primary endpoints' reserved regions, which MAP may not overlap (D45). Only
    /// primary attachments count: an endpoint's regions, its MSI window among them, belong to its traffic
    /// without a PASID (docs/pasid-extension.md §1).
    public internal(set) var reservedRanges = ReservedRangeSet()
    public internal(set) var mappings = MappingTable()

    init(id: ID, isBypass: Bool) {
        self.id = id
        self.isBypass = isBypass
    }

    /// A domain lives while any primary or aux attachment holds it.
    var isHeld: Bool { !endpoints.isEmpty || !auxEndpoints.isEmpty }

    /// D45, in O(log n) of the distinct reserved ranges.
    func overlapsReservedRange(_ range: IOVARange) -> Bool {
        reservedRanges.overlaps(range)
    }

    /// Adds a primary attachment and counts its reserved regions in.
    mutating func attachPrimary(_ endpoint: Endpoint) {
        guard endpoints.insert(endpoint.id).inserted else { return }
        for region in endpoint.reservedRegions { reservedRanges.insert(region.range) }
    }

    /// Removes a primary attachment and counts its reserved regions out.
    mutating func detachPrimary(_ endpoint: Endpoint) {
        guard endpoints.remove(endpoint.id) != nil else { return }
        for region in endpoint.reservedRegions { reservedRanges.remove(region.range) }
    }
}

/// An endpoint: a device behind the IOMMU, named by an ID that is unique for this IOMMU.
public struct Endpoint: Sendable {
    public typealias ID = UInt32

    public let id: ID
    public let reservedRegions: [ReservedRegion]
    /// PASID width the endpoint supports (0: none), from the configuration.
    public let pasidBits: Int
    /// The primary domain: traffic without a PASID.
    public internal(set) var domain: Domain.ID?
    /// Aux domains, one per PASID.
    public internal(set) var auxDomains: [PASID: Domain.ID] = [:]

    init(id: ID, reservedRegions: [ReservedRegion], pasidBits: Int = 0) {
        self.id = id
        // Keep the caller's array (often shared by many endpoints) when it is already in order.
        let sorted = zip(reservedRegions, reservedRegions.dropFirst()).allSatisfy { $0.range.first <= $1.range.first }
        self.reservedRegions = sorted ? reservedRegions : reservedRegions.sorted { $0.range.first < $1.range.first }
        self.pasidBits = pasidBits
    }
}
