/// A domain: an address space shared by the endpoints attached to it.
public struct Domain: Sendable {
    public typealias ID = UInt32

    public let id: ID
    /// Created by ATTACH with `ATTACH_F_BYPASS`: identity translation, and MAP/UNMAP are refused.
    public let isBypass: Bool
    /// Attached endpoints, in attach order.
    public internal(set) var endpoints: [Endpoint.ID] = []
    /// The union of the attached endpoints' reserved regions, which MAP may not overlap (D45).
    public internal(set) var reservedRanges: [IOVARange] = []
    public internal(set) var mappings = MappingTable()

    init(id: ID, isBypass: Bool) {
        self.id = id
        self.isBypass = isBypass
    }

    func overlapsReservedRange(_ range: IOVARange) -> Bool {
        reservedRanges.contains { $0.overlaps(range) }
    }
}

/// An endpoint: a device behind the IOMMU, named by an ID that is unique for this IOMMU.
public struct Endpoint: Sendable {
    public typealias ID = UInt32

    public let id: ID
    public let reservedRegions: [ReservedRegion]
    /// The domain the endpoint is attached to, if any.
    public internal(set) var domain: Domain.ID?

    init(id: ID, reservedRegions: [ReservedRegion]) {
        self.id = id
        self.reservedRegions = reservedRegions.sorted { $0.range.first < $1.range.first }
    }
}
