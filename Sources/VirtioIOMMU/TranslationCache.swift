/// An IOTLB: recently used translations, so that a consumer translating the same mappings again
/// skips the endpoint, domain and tree look-ups.
///
/// Entries hold whole mappings and are tagged with a generation. Any change that can remove or
/// redirect a translation (an UNMAP that removes something, an endpoint leaving a domain — DETACH or
/// ATTACH elsewhere, both through `Device.detach` — a domain dropped, PASID attach changes, reset,
/// feature negotiation) bumps the generation, which empties the cache in O(1). An ATTACH of an
/// unattached endpoint needs none: nothing is cached for it. MAP never invalidates: a new mapping
/// cannot overlap a cached one (D24). Misses are not cached.
struct TranslationCache: Sendable {
    struct Entry: Sendable {
        var generation: UInt64 = 0  // 0: never valid
        var endpoint: Endpoint.ID = 0
        var pasidKey: UInt64 = 0
        var mapping = Mapping(virtualStart: 1, virtualEnd: 0, physicalStart: 0, flags: [])
    }

    static let slots = 64
    private var entries = [Entry](repeating: Entry(), count: TranslationCache.slots)
    private(set) var generation: UInt64 = 1

    /// Translations without a PASID and with each PASID are cached apart.
    static func key(_ pasid: UInt32?) -> UInt64 { pasid.map { UInt64($0) + 1 } ?? 0 }

    private static func slot(endpoint: Endpoint.ID, pasidKey: UInt64, address: UInt64) -> Int {
        let mixed = (address >> 12) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(endpoint) &* 0xC2B2_AE3D_27D4_EB4F ^ pasidKey
        return Int(truncatingIfNeeded: mixed >> 58)  // top 6 bits: 64 slots
    }

    /// The cached mapping that covers `address` for this endpoint and PASID, if any.
    @inline(__always)
    func lookup(endpoint: Endpoint.ID, pasidKey: UInt64, address: UInt64) -> Mapping? {
        let entry = entries[Self.slot(endpoint: endpoint, pasidKey: pasidKey, address: address)]
        guard entry.generation == generation, entry.endpoint == endpoint, entry.pasidKey == pasidKey,
              entry.mapping.virtualStart <= address, address <= entry.mapping.virtualEnd else { return nil }
        return entry.mapping
    }

    mutating func insert(_ mapping: Mapping, endpoint: Endpoint.ID, pasidKey: UInt64, address: UInt64) {
        entries[Self.slot(endpoint: endpoint, pasidKey: pasidKey, address: address)] =
            Entry(generation: generation, endpoint: endpoint, pasidKey: pasidKey, mapping: mapping)
    }

    mutating func invalidateAll() { generation &+= 1 }

    /// The live entries, for the invariant checks.
    var validEntries: [Entry] { entries.filter { $0.generation == generation } }
}
