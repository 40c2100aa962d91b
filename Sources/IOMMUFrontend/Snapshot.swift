import LittleEndianBytes

/// The STATE_PUSH snapshot (docs/frontend-protocol.md §8.2): the front-end's mirror, `bypass` and the
/// commit window, in sorted sections of fixed-size records.
public struct StateSnapshot: Hashable, Sendable {
    public struct Domain: Hashable, Sendable {
        public var id: UInt32
        public var bypass: Bool
        public init(id: UInt32, bypass: Bool) { self.id = id; self.bypass = bypass }
    }

    public struct Endpoint: Hashable, Sendable {
        public var endpoint: UInt32
        public var domain: UInt32
        public init(endpoint: UInt32, domain: UInt32) { self.endpoint = endpoint; self.domain = domain }
    }

    public struct Mapping: Hashable, Sendable {
        public var domain: UInt32
        public var flags: UInt32
        public var virtualStart: UInt64
        public var virtualEnd: UInt64
        public var physicalStart: UInt64
        public init(domain: UInt32, flags: UInt32, virtualStart: UInt64, virtualEnd: UInt64, physicalStart: UInt64) {
            self.domain = domain
            self.flags = flags
            self.virtualStart = virtualStart
            self.virtualEnd = virtualEnd
            self.physicalStart = physicalStart
        }
    }

    /// A completed request's avail position and status (the commit window, §8.3).
    public struct Commit: Hashable, Sendable {
        public var position: UInt16
        public var status: UInt8
        public init(position: UInt16, status: UInt8) { self.position = position; self.status = status }
    }

    public static let headerSize = 32
    public static let domainSize = 8
    public static let endpointSize = 8
    public static let mappingSize = 32
    public static let commitSize = 8
    public static let maxSize: UInt64 = 256 << 20

    public var epoch: UInt32
    /// The `bypass` config value.
    public var bypass: Bool
    /// Ascending `id`, each with at least one endpoint.
    public var domains: [Domain]
    /// Ascending `endpoint`: attached endpoints only.
    public var endpoints: [Endpoint]
    /// Ascending (`domain`, `virtualStart`), apart within a domain.
    public var mappings: [Mapping]
    /// Oldest first.
    public var commits: [Commit]

    public init(epoch: UInt32, bypass: Bool, domains: [Domain] = [], endpoints: [Endpoint] = [],
                mappings: [Mapping] = [], commits: [Commit] = []) {
        self.epoch = epoch
        self.bypass = bypass
        self.domains = domains
        self.endpoints = endpoints
        self.mappings = mappings
        self.commits = commits
    }

    /// The snapshot size the counts need, or nil past `maxSize` (no overflow whatever the counts).
    public static func byteCount(domains: UInt64, endpoints: UInt64, mappings: UInt64, commits: UInt64) -> UInt64? {
        // Each count is bounded before it is multiplied, so the products stay far below 2^64.
        let limit = maxSize
        guard domains <= limit, endpoints <= limit, mappings <= limit, commits <= limit else { return nil }
        let total = UInt64(headerSize) + domains * UInt64(domainSize) + endpoints * UInt64(endpointSize)
            + mappings * UInt64(mappingSize) + commits * UInt64(commitSize)
        return total <= limit ? total : nil
    }

    public var byteCount: UInt64 {
        UInt64(Self.headerSize) + UInt64(domains.count * Self.domainSize + endpoints.count * Self.endpointSize
            + mappings.count * Self.mappingSize + commits.count * Self.commitSize)
    }

    // MARK: Decoding (the back-end, §8.2 and §9.2)

    /// Decodes a snapshot with every check that needs no configuration: size and counts as `request`
    /// announced, magic, version, epoch, flags, reserved fields, order, references and the range
    /// arithmetic of every mapping. Configuration checks follow in `validate(against:)`.
    public init(decoding bytes: UnsafeRawBufferPointer, request: StatePushRequest) throws(FrontendWireError) {
        guard UInt64(bytes.count) == request.snapshotSize, bytes.count >= Self.headerSize else {
            throw .size(expected: request.snapshotSize, actual: UInt64(bytes.count))
        }
        let magic = bytes.le(UInt32.self, at: 0)
        guard magic == FrontendProtocol.snapshotMagic else { throw .magic(magic) }
        let version = bytes.le(UInt16.self, at: 4)
        guard version == FrontendProtocol.version else { throw .version(version) }
        let flags = bytes.le(UInt16.self, at: 6)
        guard flags & ~1 == 0 else { throw .reserved("flags") }
        let epoch = bytes.le(UInt32.self, at: 8)
        guard epoch == request.epoch else { throw .value("epoch", UInt64(epoch)) }
        let domainCount = bytes.le(UInt32.self, at: 12), endpointCount = bytes.le(UInt32.self, at: 16)
        let commitCount = bytes.le(UInt32.self, at: 20), mappingCount = bytes.le(UInt64.self, at: 24)
        guard domainCount == request.domainCount, endpointCount == request.endpointCount,
              commitCount == request.commitCount, mappingCount == request.mappingCount,
              let size = Self.byteCount(domains: UInt64(domainCount), endpoints: UInt64(endpointCount),
                                        mappings: mappingCount, commits: UInt64(commitCount)),
              size == UInt64(bytes.count) else {
            throw .value("counts", UInt64(bytes.count))
        }
        self.init(epoch: epoch, bypass: flags & 1 != 0)
        var offset = Self.headerSize

        domains.reserveCapacity(Int(domainCount))
        for _ in 0..<Int(domainCount) {
            let id = bytes.le(UInt32.self, at: offset), domainFlags = bytes.le(UInt32.self, at: offset + 4)
            guard domainFlags & ~1 == 0 else { throw .reserved("domain flags") }
            if let previous = domains.last, previous.id >= id { throw .order("domain \(id) after \(previous.id)") }
            domains.append(Domain(id: id, bypass: domainFlags & 1 != 0))
            offset += Self.domainSize
        }
        var held = [Bool](repeating: false, count: domains.count)

        endpoints.reserveCapacity(Int(endpointCount))
        for _ in 0..<Int(endpointCount) {
            let endpoint = bytes.le(UInt32.self, at: offset), domain = bytes.le(UInt32.self, at: offset + 4)
            guard endpoint < UInt32(FrontendProtocol.endpointCount) else { throw .value("endpoint", UInt64(endpoint)) }
            if let previous = endpoints.last, previous.endpoint >= endpoint {
                throw .order("endpoint \(endpoint) after \(previous.endpoint)")
            }
            guard let index = Self.index(of: domain, in: domains) else { throw .reference("endpoint \(endpoint) in domain \(domain)") }
            held[index] = true
            endpoints.append(Endpoint(endpoint: endpoint, domain: domain))
            offset += Self.endpointSize
        }
        if let index = held.firstIndex(of: false) { throw .reference("domain \(domains[index].id) has no endpoint") }

        mappings.reserveCapacity(Int(mappingCount))
        for _ in 0..<Int(mappingCount) {
            let mapping = Mapping(domain: bytes.le(UInt32.self, at: offset), flags: bytes.le(UInt32.self, at: offset + 4),
                                  virtualStart: bytes.le(UInt64.self, at: offset + 8),
                                  virtualEnd: bytes.le(UInt64.self, at: offset + 16),
                                  physicalStart: bytes.le(UInt64.self, at: offset + 24))
            guard mapping.flags & ~FrontendProtocol.mapFlagsMask == 0 else { throw .value("map_flags", UInt64(mapping.flags)) }
            guard mapping.virtualStart <= mapping.virtualEnd else { throw .value("virt_end", mapping.virtualEnd) }
            guard !mapping.physicalStart.addingReportingOverflow(mapping.virtualEnd - mapping.virtualStart).overflow else {
                throw .value("phys_start", mapping.physicalStart)
            }
            guard let index = Self.index(of: mapping.domain, in: domains), !domains[index].bypass else {
                throw .reference("mapping in domain \(mapping.domain)")
            }
            if let previous = mappings.last {
                if previous.domain > mapping.domain
                    || (previous.domain == mapping.domain && previous.virtualEnd >= mapping.virtualStart) {
                    throw .order("mapping 0x\(String(mapping.virtualStart, radix: 16)) in domain \(mapping.domain)")
                }
            }
            mappings.append(mapping)
            offset += Self.mappingSize
        }

        commits.reserveCapacity(Int(commitCount))
        var positions = Set<UInt16>()
        for _ in 0..<Int(commitCount) {
            let commit = Commit(position: bytes.le(UInt16.self, at: offset), status: bytes[offset + 2])
            guard commit.status <= FrontendProtocol.maxRequestStatus else { throw .value("status", UInt64(commit.status)) }
            guard bytes[offset + 3] == 0, bytes.le(UInt32.self, at: offset + 4) == 0 else { throw .reserved("commit") }
            guard positions.insert(commit.position).inserted else { throw .order("commit position \(commit.position) twice") }
            commits.append(commit)
            offset += Self.commitSize
        }
    }

    /// Binary search over the ascending domain list.
    static func index(of id: UInt32, in domains: [Domain]) -> Int? {
        var low = 0, high = domains.count
        while low < high {
            let mid = (low + high) / 2
            if domains[mid].id < id { low = mid + 1 } else { high = mid }
        }
        return low < domains.count && domains[low].id == id ? low : nil
    }

    // MARK: Configuration checks

    /// What the back-end's configuration allows (§8.2): a snapshot the guest could not have produced
    /// through requests the back-end accepts is refused.
    public struct Rules: Sendable {
        public var knownEndpoints: EndpointBitmap
        /// The mapping granule: a power of two.
        public var granule: UInt64
        public var inputRange: ClosedRange<UInt64>
        public var domainRange: ClosedRange<UInt32>
        public var maxDomains: Int
        public var maxMappings: Int
        public var maxMappingsPerDomain: Int
        /// HELLO's queue size; the commit window holds at most this many records.
        public var queueSize: UInt32
        public var capabilities: FrontendCapabilities

        public init(knownEndpoints: EndpointBitmap, granule: UInt64, inputRange: ClosedRange<UInt64> = 0...UInt64.max,
                    domainRange: ClosedRange<UInt32> = 0...UInt32.max, maxDomains: Int, maxMappings: Int,
                    maxMappingsPerDomain: Int, queueSize: UInt32, capabilities: FrontendCapabilities) {
            self.knownEndpoints = knownEndpoints
            self.granule = granule
            self.inputRange = inputRange
            self.domainRange = domainRange
            self.maxDomains = maxDomains
            self.maxMappings = maxMappings
            self.maxMappingsPerDomain = maxMappingsPerDomain
            self.queueSize = queueSize
            self.capabilities = capabilities
        }
    }

    /// Checks a decoded snapshot against the back-end's configuration. Reserved regions (D45) are the
    /// model's to check when it adopts the snapshot.
    public func validate(against rules: Rules) throws(SnapshotRefusal) {
        guard domains.count <= rules.maxDomains else { throw .tooManyDomains(domains.count) }
        guard mappings.count <= rules.maxMappings else { throw .tooManyMappings(mappings.count) }
        for domain in domains where !rules.domainRange.contains(domain.id) { throw .domainOutOfRange(domain.id) }
        for endpoint in endpoints where !rules.knownEndpoints.contains(endpoint.endpoint) {
            throw .unknownEndpoint(endpoint.endpoint)
        }
        let mask = rules.granule &- 1
        var run = 0
        for (i, mapping) in mappings.enumerated() {
            guard mapping.virtualStart & mask == 0, mapping.physicalStart & mask == 0,
                  (mapping.virtualEnd &+ 1) & mask == 0 else {
                throw .misaligned(domain: mapping.domain, virtualStart: mapping.virtualStart)
            }
            guard rules.inputRange.contains(mapping.virtualStart), rules.inputRange.contains(mapping.virtualEnd) else {
                throw .outsideInputRange(domain: mapping.domain, virtualStart: mapping.virtualStart)
            }
            run = i > 0 && mappings[i - 1].domain == mapping.domain ? run + 1 : 1
            guard run <= rules.maxMappingsPerDomain else { throw .tooManyMappings(run) }
        }
        if !rules.capabilities.contains(.commitWindow) && !commits.isEmpty { throw .commitWindowNotGranted }
        guard commits.count <= Int(rules.queueSize) else { throw .commitWindowTooLarge(commits.count) }
    }

    // MARK: Encoding (the front-end)

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Int(byteCount))
        out.appendLE(FrontendProtocol.snapshotMagic)
        out.appendLE(FrontendProtocol.version)
        out.appendLE(UInt16(bypass ? 1 : 0))
        out.appendLE(epoch)
        out.appendLE(UInt32(domains.count))
        out.appendLE(UInt32(endpoints.count))
        out.appendLE(UInt32(commits.count))
        out.appendLE(UInt64(mappings.count))
        for domain in domains { out.appendLE(domain.id); out.appendLE(UInt32(domain.bypass ? 1 : 0)) }
        for endpoint in endpoints { out.appendLE(endpoint.endpoint); out.appendLE(endpoint.domain) }
        for mapping in mappings {
            out.appendLE(mapping.domain); out.appendLE(mapping.flags)
            out.appendLE(mapping.virtualStart); out.appendLE(mapping.virtualEnd); out.appendLE(mapping.physicalStart)
        }
        for commit in commits { out.appendLE(commit.position); out.append(commit.status); out.appendZeros(5) }
        return out
    }
}

/// Why a well-formed snapshot does not fit the back-end's configuration (answered REFUSED).
public enum SnapshotRefusal: Error, Hashable, Sendable {
    case tooManyDomains(Int)
    case tooManyMappings(Int)
    case domainOutOfRange(UInt32)
    case unknownEndpoint(UInt32)
    case misaligned(domain: UInt32, virtualStart: UInt64)
    case outsideInputRange(domain: UInt32, virtualStart: UInt64)
    case commitWindowNotGranted
    case commitWindowTooLarge(Int)
}
