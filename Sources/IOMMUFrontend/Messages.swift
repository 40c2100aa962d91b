import LittleEndianBytes

// Payloads of the four front-end requests and of HELLO's reply (docs/frontend-protocol.md §3, §4.1, §7,
// §8.2). Each decodes with every check the receiving side owes and encodes back to the same bytes.

/// HELLO (16 bytes): magic, the version range the front-end speaks, its capabilities.
public struct HelloRequest: Hashable, Sendable {
    public static let size = 16
    public var minVersion: UInt16
    public var maxVersion: UInt16
    /// Everything the front-end offers, unknown bits included (the back-end ignores them).
    public var capabilities: FrontendCapabilities

    public init(minVersion: UInt16 = FrontendProtocol.version, maxVersion: UInt16 = FrontendProtocol.version,
                capabilities: FrontendCapabilities) {
        self.minVersion = minVersion
        self.maxVersion = maxVersion
        self.capabilities = capabilities
    }

    /// The back-end's checks (§3): exact size, magic, `0 < min_version ≤ max_version`.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(FrontendWireError) {
        try expectSize(bytes, Self.size)
        let magic = bytes.le(UInt32.self, at: 0)
        guard magic == FrontendProtocol.helloMagic else { throw .magic(magic) }
        minVersion = bytes.le(UInt16.self, at: 4)
        maxVersion = bytes.le(UInt16.self, at: 6)
        guard minVersion != 0 else { throw .value("min_version", 0) }
        guard minVersion <= maxVersion else { throw .value("max_version", UInt64(maxVersion)) }
        capabilities = FrontendCapabilities(rawValue: bytes.le(UInt64.self, at: 8))
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendLE(FrontendProtocol.helloMagic)
        out.appendLE(minVersion)
        out.appendLE(maxVersion)
        out.appendLE(capabilities.rawValue)
        return out
    }

    /// The back-end's answer: the highest common version and the capabilities in force, those it
    /// `supports` among those offered. Throws `noCommonVersion` (answered UNSUPPORTED) if there is none.
    public func reply(supporting supported: FrontendCapabilities, queueSize: UInt32) throws(FrontendWireError) -> HelloReply {
        guard minVersion <= FrontendProtocol.version && FrontendProtocol.version <= maxVersion else {
            throw .noCommonVersion(min: minVersion, max: maxVersion)
        }
        return HelloReply(version: FrontendProtocol.version,
                          capabilities: capabilities.intersection(supported).intersection(.version1),
                          queueSize: queueSize)
    }
}

/// HELLO's reply (24 bytes): magic, the chosen version, the capabilities in force, the queue size.
public struct HelloReply: Hashable, Sendable {
    public static let size = 24
    public var version: UInt16
    public var capabilities: FrontendCapabilities
    /// Both virtqueues' size: a power of two in 16...1024.
    public var queueSize: UInt32

    public static let queueSizes: ClosedRange<UInt32> = 16...1024

    public init(version: UInt16, capabilities: FrontendCapabilities, queueSize: UInt32) {
        self.version = version
        self.capabilities = capabilities
        self.queueSize = queueSize
    }

    /// The front-end's checks (§9.1): exact size, magic, reserved 0, a version inside the offered range,
    /// no capability that was not offered, a power-of-two queue size in 16...1024.
    public init(decoding bytes: UnsafeRawBufferPointer, for request: HelloRequest) throws(FrontendWireError) {
        try expectSize(bytes, Self.size)
        let magic = bytes.le(UInt32.self, at: 0)
        guard magic == FrontendProtocol.helloMagic else { throw .magic(magic) }
        guard bytes.le(UInt16.self, at: 6) == 0 else { throw .reserved("reserved0") }
        guard bytes.le(UInt32.self, at: 20) == 0 else { throw .reserved("reserved1") }
        version = bytes.le(UInt16.self, at: 4)
        guard request.minVersion <= version && version <= request.maxVersion else {
            throw .value("version", UInt64(version))
        }
        capabilities = FrontendCapabilities(rawValue: bytes.le(UInt64.self, at: 8))
        guard request.capabilities.isSuperset(of: capabilities) else {
            throw .value("backend_caps", capabilities.rawValue)
        }
        queueSize = bytes.le(UInt32.self, at: 16)
        guard Self.queueSizes.contains(queueSize) && queueSize.nonzeroBitCount == 1 else {
            throw .value("queue_size", UInt64(queueSize))
        }
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendLE(FrontendProtocol.helloMagic)
        out.appendLE(version)
        out.appendLE(UInt16(0))
        out.appendLE(capabilities.rawValue)
        out.appendLE(queueSize)
        out.appendLE(UInt32(0))
        return out
    }
}

/// SET_REGION (24 bytes): the region's size, the session's epoch, flags (0), the first entry index.
/// Three descriptors come with it: the region memfd, the doorbell eventfd, the ack eventfd.
public struct SetRegionRequest: Hashable, Sendable {
    public static let size = 24
    /// Region memfd, doorbell and ack eventfds; with FAULT_RING also the fault eventfd (§10.1).
    public static let descriptorCount = 3
    public static func descriptorCount(_ capabilities: FrontendCapabilities) -> Int {
        capabilities.contains(.faultRing) ? descriptorCount + 1 : descriptorCount
    }
    public var regionSize: UInt64
    public var epoch: UInt32
    public var startIndex: UInt64

    public init(regionSize: UInt64, epoch: UInt32, startIndex: UInt64) {
        self.regionSize = regionSize
        self.epoch = epoch
        self.startIndex = startIndex
    }

    /// The back-end's payload checks (§9.2): exact size, flags 0, `start_index` < 2^63, a region size in
    /// 4096...64 MiB. The descriptor's own size and seals are the caller's to check against `regionSize`.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(FrontendWireError) {
        try expectSize(bytes, Self.size)
        regionSize = bytes.le(UInt64.self, at: 0)
        epoch = bytes.le(UInt32.self, at: 8)
        guard bytes.le(UInt32.self, at: 12) == 0 else { throw .reserved("flags") }
        startIndex = bytes.le(UInt64.self, at: 16)
        guard startIndex < RegionLayout.indexLimit else { throw .value("start_index", startIndex) }
        guard regionSize >= UInt64(RegionLayout.headerSize) && regionSize <= RegionLayout.maxRegionSize else {
            throw .value("region_size", regionSize)
        }
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendLE(regionSize)
        out.appendLE(epoch)
        out.appendLE(UInt32(0))
        out.appendLE(startIndex)
        return out
    }
}

/// STATE_PUSH (40 bytes): the snapshot's size, the session's epoch, flags (0), the record counts.
/// One descriptor comes with it: the sealed snapshot memfd.
public struct StatePushRequest: Hashable, Sendable {
    public static let size = 40
    public static let descriptorCount = 1
    public var snapshotSize: UInt64
    public var epoch: UInt32
    public var domainCount: UInt32
    public var endpointCount: UInt32
    public var mappingCount: UInt64
    public var commitCount: UInt32

    public init(snapshotSize: UInt64, epoch: UInt32, domainCount: UInt32, endpointCount: UInt32,
                mappingCount: UInt64, commitCount: UInt32) {
        self.snapshotSize = snapshotSize
        self.epoch = epoch
        self.domainCount = domainCount
        self.endpointCount = endpointCount
        self.mappingCount = mappingCount
        self.commitCount = commitCount
    }

    /// The request describing `snapshot`.
    public init(for snapshot: StateSnapshot) {
        self.init(snapshotSize: snapshot.byteCount, epoch: snapshot.epoch, domainCount: UInt32(snapshot.domains.count),
                  endpointCount: UInt32(snapshot.endpoints.count), mappingCount: UInt64(snapshot.mappings.count),
                  commitCount: UInt32(snapshot.commits.count))
    }

    /// The back-end's payload checks (§8.2, §9.2): exact size, flags and reserved 0, and a
    /// `snapshot_size` that is exactly what the counts need and at most 256 MiB.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(FrontendWireError) {
        try expectSize(bytes, Self.size)
        snapshotSize = bytes.le(UInt64.self, at: 0)
        epoch = bytes.le(UInt32.self, at: 8)
        guard bytes.le(UInt32.self, at: 12) == 0 else { throw .reserved("flags") }
        domainCount = bytes.le(UInt32.self, at: 16)
        endpointCount = bytes.le(UInt32.self, at: 20)
        mappingCount = bytes.le(UInt64.self, at: 24)
        commitCount = bytes.le(UInt32.self, at: 32)
        guard bytes.le(UInt32.self, at: 36) == 0 else { throw .reserved("reserved") }
        guard let needed = StateSnapshot.byteCount(domains: UInt64(domainCount), endpoints: UInt64(endpointCount),
                                                   mappings: mappingCount, commits: UInt64(commitCount)),
              needed == snapshotSize else {
            throw .value("snapshot_size", snapshotSize)
        }
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendLE(snapshotSize)
        out.appendLE(epoch)
        out.appendLE(UInt32(0))
        out.appendLE(domainCount)
        out.appendLE(endpointCount)
        out.appendLE(mappingCount)
        out.appendLE(commitCount)
        out.appendLE(UInt32(0))
        return out
    }
}

/// RESET (16 bytes): the new epoch, the kind of reset, the `bypass` value after it, the first index.
public struct ResetRequest: Hashable, Sendable {
    public static let size = 16

    public enum Kind: UInt8, Hashable, Sendable {
        /// The guest reset the device (status 0): `bypass` keeps its value (D5).
        case device = 1
        /// The machine reset: `bypass` returns to its boot value.
        case system = 2
    }

    public var epoch: UInt32
    public var kind: Kind
    public var bypass: Bool
    /// The front-end's `applied`; the back-end rewinds `tail` to it.
    public var startIndex: UInt64

    public init(epoch: UInt32, kind: Kind, bypass: Bool, startIndex: UInt64) {
        self.epoch = epoch
        self.kind = kind
        self.bypass = bypass
        self.startIndex = startIndex
    }

    /// The back-end's payload checks (§7): exact size, a known kind, `bypass` 0 or 1, reserved 0,
    /// `start_index` < 2^63. That the epoch is new and `start_index ≤ tail` is `LogWriter.reset`'s check.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(FrontendWireError) {
        try expectSize(bytes, Self.size)
        epoch = bytes.le(UInt32.self, at: 0)
        let kindByte = bytes[4]
        guard let kind = Kind(rawValue: kindByte) else { throw .value("kind", UInt64(kindByte)) }
        self.kind = kind
        let bypassByte = bytes[5]
        guard bypassByte <= 1 else { throw .value("bypass", UInt64(bypassByte)) }
        bypass = bypassByte == 1
        guard bytes.le(UInt16.self, at: 6) == 0 else { throw .reserved("reserved") }
        startIndex = bytes.le(UInt64.self, at: 8)
        guard startIndex < RegionLayout.indexLimit else { throw .value("start_index", startIndex) }
    }

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendLE(epoch)
        out.append(kind.rawValue)
        out.append(bypass ? 1 : 0)
        out.appendLE(UInt16(0))
        out.appendLE(startIndex)
        return out
    }
}
