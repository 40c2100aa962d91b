import PASIDStore

/// A domain: an address space shared by the endpoints attached to it.
public struct Domain: Sendable {
    public typealias ID = UInt32

    public let id: ID
    /// Created by ATTACH with `ATTACH_F_BYPASS`: identity translation, and MAP/UNMAP are refused.
    public let isBypass: Bool
    /// Endpoints attached with this as their primary domain, in attach order.
    public internal(set) var endpoints: [Endpoint.ID] = []
    /// Endpoints attached with this as an aux domain (PASID extension), and its one system-wide PASID.
    public internal(set) var auxEndpoints: [Endpoint.ID] = []
    public internal(set) var auxPASID: PASID?
    /// The union of the attached endpoints' reserved regions, which MAP may not overlap (D45).
    public internal(set) var reservedRanges: [IOVARange] = []
    public internal(set) var mappings = MappingTable()

    init(id: ID, isBypass: Bool) {
        self.id = id
        self.isBypass = isBypass
    }

    /// A domain lives while any primary or aux attachment holds it.
    var isHeld: Bool { !endpoints.isEmpty || !auxEndpoints.isEmpty }

    func overlapsReservedRange(_ range: IOVARange) -> Bool {
        reservedRanges.contains { $0.overlaps(range) }
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
