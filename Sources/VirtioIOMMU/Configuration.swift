/// Limits that bound what one guest can make the device hold; exceeding one gives NOMEM.
public struct Limits: Sendable, Hashable {
    public var maxDomains: Int
    public var maxMappingsPerDomain: Int
    public var maxMappingsTotal: Int
    /// Fault records held while the guest posts no event buffer; the oldest is dropped on overflow.
    public var maxPendingFaults: Int

    public init(maxDomains: Int = 65_536, maxMappingsPerDomain: Int = 1 << 20,
                maxMappingsTotal: Int = 1 << 21, maxPendingFaults: Int = 256) {
        self.maxDomains = maxDomains
        self.maxMappingsPerDomain = maxMappingsPerDomain
        self.maxMappingsTotal = maxMappingsTotal
        self.maxPendingFaults = maxPendingFaults
    }
}

/// Everything fixed when the device is built: its endpoints, config-space values, features and limits.
public struct Configuration: Sendable {
    /// Endpoint IDs that exist, each with its reserved regions.
    public var endpoints: [UInt32: [ReservedRegion]]
    /// Bit 0 set is byte granularity; the least significant set bit is the mapping granule.
    public var pageSizeMask: UInt64
    public var inputRange: IOVARange
    public var domainRange: ClosedRange<UInt32>
    /// Bytes of the PROBE properties area.
    public var probeSize: UInt32
    /// The `bypass` config value after power-on (D5 recommends 1); a device reset keeps the current value.
    public var bypass: Bool
    /// Device feature bits offered to the driver.
    public var features: Features
    public var limits: Limits
    /// PASID width of each endpoint that supports PASIDs (PASID extension); absent means 0, none.
    public var pasidWidths: [UInt32: Int] = [:]

    public init(endpoints: [UInt32: [ReservedRegion]],
                pageSizeMask: UInt64 = ~0xfff,
                inputRange: IOVARange = .all,
                domainRange: ClosedRange<UInt32> = 0...UInt32.max,
                probeSize: UInt32 = 512,
                bypass: Bool = true,
                features: Features = .standard,
                limits: Limits = Limits()) {
        self.endpoints = endpoints
        self.pageSizeMask = pageSizeMask
        self.inputRange = inputRange
        self.domainRange = domainRange
        self.probeSize = probeSize
        self.bypass = bypass
        self.features = features
        self.limits = limits
    }

    /// The mapping granule: the least significant set bit of `pageSizeMask`.
    public var granule: UInt64 { pageSizeMask & (~pageSizeMask &+ 1) }

    /// The largest `probe_size` accepted, so that one PROBE reply stays small.
    public static let maxProbeSize: UInt32 = 64 * 1024

    /// Checks the rules the spec places on a device's own configuration.
    public func validate() throws(ConfigurationError) {
        if pageSizeMask == 0 { throw .emptyPageSizeMask }  // D4
        if !Features.all.contains(features) { throw .unknownFeatures(features.subtracting(.all).rawValue) }
        if !features.contains(.mapUnmap) { throw .mapUnmapNotOffered }  // D1
        if features.contains(.bypass) && features.contains(.bypassConfig) { throw .bothBypassFeatures }  // D3
        if !features.contains(.inputRange) && inputRange != .all { throw .rangeWithoutFeature }
        if !features.contains(.domainRange) && domainRange != 0...UInt32.max { throw .rangeWithoutFeature }
        if probeSize > Self.maxProbeSize { throw .probeSizeTooLarge(probeSize) }
        if limits.maxDomains < 1 || limits.maxMappingsPerDomain < 1 || limits.maxMappingsTotal < 1
            || limits.maxPendingFaults < 1 {
            throw .invalidLimit
        }
        for (endpoint, regions) in endpoints {
            if regions.filter({ $0.kind == .msi }).count > 1 { throw .multipleMSIRegions(endpoint: endpoint) }  // D43
            for i in regions.indices {
                for j in regions.indices where j > i && regions[i].range.overlaps(regions[j].range) {
                    throw .overlappingRegions(endpoint: endpoint)  // D44
                }
            }
            let pasidProperty = features.contains(.pasid) && (pasidWidths[endpoint] ?? 0) > 0 ? PASIDProperty.size : 0
            let needed = regions.count * ResvMemProperty.size + pasidProperty
            if features.contains(.probe) && needed > Int(probeSize) {
                throw .probeSizeTooSmall(endpoint: endpoint, needed: needed)
            }
        }
        for (endpoint, width) in pasidWidths {
            guard endpoints[endpoint] != nil, (0...20).contains(width) else { throw .invalidPASIDWidth(endpoint: endpoint) }
        }
    }
}

/// Why a `Configuration` cannot describe a spec-conforming device.
public enum ConfigurationError: Error, Equatable, CustomStringConvertible {
    case emptyPageSizeMask
    case unknownFeatures(UInt64)
    case mapUnmapNotOffered
    case bothBypassFeatures
    case probeSizeTooLarge(UInt32)
    case rangeWithoutFeature
    case invalidLimit
    case multipleMSIRegions(endpoint: UInt32)
    case overlappingRegions(endpoint: UInt32)
    case probeSizeTooSmall(endpoint: UInt32, needed: Int)
    case invalidPASIDWidth(endpoint: UInt32)
    case pasidWithoutStore

    public var description: String {
        switch self {
        case .emptyPageSizeMask: "page_size_mask must have at least one bit set"
        case .unknownFeatures(let bits): "unknown feature bits 0x\(String(bits, radix: 16))"
        case .mapUnmapNotOffered: "VIRTIO_IOMMU_F_MAP_UNMAP must be offered"
        case .bothBypassFeatures: "F_BYPASS and F_BYPASS_CONFIG must not be offered together"
        case .probeSizeTooLarge(let size): "probe_size \(size) exceeds \(Configuration.maxProbeSize)"
        case .rangeWithoutFeature: "a restricted input or domain range needs F_INPUT_RANGE or F_DOMAIN_RANGE"
        case .invalidLimit: "every limit must be at least 1"
        case .multipleMSIRegions(let endpoint): "endpoint \(endpoint) has more than one MSI region"
        case .overlappingRegions(let endpoint): "endpoint \(endpoint) has overlapping reserved regions"
        case .probeSizeTooSmall(let endpoint, let needed): "probe_size too small for endpoint \(endpoint): needs \(needed) bytes"
        case .invalidPASIDWidth(let endpoint): "PASID width of endpoint \(endpoint) must be 0...20, for a configured endpoint"
        case .pasidWithoutStore: "F_PASID needs a PASID store"
        }
    }
}
