import LittleEndianBytes

/// The flags of a log entry (docs/frontend-protocol.md §5.3), as on the wire.
public struct LogEntryFlags: OptionSet, Hashable, Sendable {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    /// The last entry of a request or LOCAL group; carries `req_pos` and `status`.
    public static let last = LogEntryFlags(rawValue: 1 << 0)
    /// The back-end waits for `acked` to pass the request (informational for the front-end).
    public static let sync = LogEntryFlags(rawValue: 1 << 1)
    /// DOMAIN_CREATE only: an identity domain. `LogEntry` keeps it in `LogOperation.domainCreate`.
    public static let bypass = LogEntryFlags(rawValue: 1 << 2)
    /// A change the back-end made of its own (§6.1).
    public static let local = LogEntryFlags(rawValue: 1 << 3)

    public static let known: LogEntryFlags = [.last, .sync, .bypass, .local]
}

/// What an entry does to the mirror (§5.2).
public enum LogOperation: Hashable, Sendable {
    case domainCreate(domain: UInt32, bypass: Bool)
    /// The domain goes, with its mappings; it has no endpoint left.
    case domainDestroy(domain: UInt32)
    case attach(endpoint: UInt32, domain: UInt32)
    case detach(endpoint: UInt32, domain: UInt32)
    case map(domain: UInt32, virtualStart: UInt64, virtualEnd: UInt64, physicalStart: UInt64, flags: UInt32)
    /// Removes every mapping inside `virtualStart...virtualEnd`.
    case unmap(domain: UInt32, virtualStart: UInt64, virtualEnd: UInt64)
    /// A request that changed nothing the mirror holds; always LAST.
    case commit

    /// The wire `op` value.
    public var code: UInt16 {
        switch self {
        case .domainCreate: 1
        case .domainDestroy: 2
        case .attach: 3
        case .detach: 4
        case .map: 5
        case .unmap: 6
        case .commit: 7
        }
    }

    /// Flags this op may carry besides LAST (§5.2).
    var allowedFlags: LogEntryFlags {
        switch self {
        case .domainCreate: [.bypass, .last, .local]
        case .domainDestroy: [.last, .local]
        case .attach, .detach, .map, .unmap: [.sync, .last, .local]
        case .commit: [.last]
        }
    }

    /// ATTACH and DETACH switch address spaces in the front-end's main loop: always acknowledged (§6 rule 3).
    public var alwaysSynchronous: Bool {
        switch self {
        case .attach, .detach: true
        default: false
        }
    }

    /// The domain the op names, if any.
    public var domain: UInt32? {
        switch self {
        case .domainCreate(let d, _), .domainDestroy(let d), .attach(_, let d), .detach(_, let d),
             .map(let d, _, _, _, _), .unmap(let d, _, _): d
        case .commit: nil
        }
    }
}

/// One 64-byte log entry (§5.1).
public struct LogEntry: Hashable, Sendable {
    public static let size = 64
    /// At most this many entries per request (§5.4).
    public static let maxPerRequest = 8

    /// Low 32 bits of the entry's index.
    public var indexLow: UInt32
    public var operation: LogOperation
    /// LAST, SYNC and LOCAL; BYPASS lives in `operation`.
    public var flags: LogEntryFlags
    /// LAST only: the request's avail-ring position.
    public var requestPosition: UInt16
    /// LAST only: the virtio-iommu status the request completes with.
    public var status: UInt8
    public var epoch: UInt32

    public init(indexLow: UInt32, operation: LogOperation, flags: LogEntryFlags = [], requestPosition: UInt16 = 0,
                status: UInt8 = 0, epoch: UInt32) {
        self.indexLow = indexLow
        self.operation = operation
        self.flags = flags.subtracting(.bypass)
        self.requestPosition = requestPosition
        self.status = status
        self.epoch = epoch
    }

    /// Decodes a copied entry with every check that needs no mirror state (§5, §9.1): a known op,
    /// known flags allowed for that op, COMMIT with LAST, the fields the op does not use zero,
    /// `req_pos`/`status` only on LAST entries without LOCAL, `status` ≤ 8, `map_flags` ⊆ 7, ordered
    /// ranges, a physical end within 64 bits, endpoint IDs below 65536, reserved bytes zero.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(FrontendWireError) {
        try expectSize(bytes, Self.size)
        let code = bytes.le(UInt16.self, at: 4)
        let wireFlags = LogEntryFlags(rawValue: bytes.le(UInt16.self, at: 6))
        guard LogEntryFlags.known.isSuperset(of: wireFlags) else { throw .reserved("flags") }
        let domain = bytes.le(UInt32.self, at: 8)
        let endpoint = bytes.le(UInt32.self, at: 12)
        let virtualStart = bytes.le(UInt64.self, at: 16)
        let virtualEnd = bytes.le(UInt64.self, at: 24)
        let physicalStart = bytes.le(UInt64.self, at: 32)
        let mapFlags = bytes.le(UInt32.self, at: 40)
        // Which of endpoint, range, phys, map_flags the op uses; the rest must be zero.
        let uses: (endpoint: Bool, range: Bool, mapping: Bool)
        let operation: LogOperation
        switch code {
        case 1:
            operation = .domainCreate(domain: domain, bypass: wireFlags.contains(.bypass))
            uses = (false, false, false)
        case 2: operation = .domainDestroy(domain: domain); uses = (false, false, false)
        case 3: operation = .attach(endpoint: endpoint, domain: domain); uses = (true, false, false)
        case 4: operation = .detach(endpoint: endpoint, domain: domain); uses = (true, false, false)
        case 5:
            operation = .map(domain: domain, virtualStart: virtualStart, virtualEnd: virtualEnd,
                             physicalStart: physicalStart, flags: mapFlags)
            uses = (false, true, true)
        case 6:
            operation = .unmap(domain: domain, virtualStart: virtualStart, virtualEnd: virtualEnd)
            uses = (false, true, false)
        case 7:
            operation = .commit
            uses = (false, false, false)
            guard domain == 0 else { throw .value("domain", UInt64(domain)) }
        default: throw .value("op", UInt64(code))
        }
        guard operation.allowedFlags.isSuperset(of: wireFlags) else { throw .value("flags", UInt64(wireFlags.rawValue)) }
        if case .commit = operation, !wireFlags.contains(.last) { throw .value("flags", UInt64(wireFlags.rawValue)) }
        if !uses.endpoint && endpoint != 0 { throw .value("endpoint", UInt64(endpoint)) }
        if uses.endpoint && endpoint >= UInt32(FrontendProtocol.endpointCount) { throw .value("endpoint", UInt64(endpoint)) }
        if !uses.range && (virtualStart != 0 || virtualEnd != 0) { throw .value("virt_start", virtualStart | virtualEnd) }
        if uses.range && virtualEnd < virtualStart { throw .value("virt_end", virtualEnd) }
        if !uses.mapping && (physicalStart != 0 || mapFlags != 0) { throw .value("phys_start", physicalStart) }
        if uses.mapping {
            guard mapFlags & ~FrontendProtocol.mapFlagsMask == 0 else { throw .value("map_flags", UInt64(mapFlags)) }
            guard !physicalStart.addingReportingOverflow(virtualEnd - virtualStart).overflow else {
                throw .value("phys_start", physicalStart)
            }
        }
        let position = bytes.le(UInt16.self, at: 44)
        let status = bytes[46]
        let carriesResult = wireFlags.contains(.last) && !wireFlags.contains(.local)
        if !carriesResult && (position != 0 || status != 0) { throw .value("req_pos", UInt64(position) | UInt64(status) << 16) }
        guard status <= FrontendProtocol.maxRequestStatus else { throw .value("status", UInt64(status)) }
        guard bytes[47] == 0 else { throw .reserved("reserved0") }
        guard bytes.isZero(52..<64) else { throw .reserved("reserved1") }
        self.init(indexLow: bytes.le(UInt32.self, at: 0), operation: operation, flags: wireFlags,
                  requestPosition: position, status: status, epoch: bytes.le(UInt32.self, at: 48))
    }

    /// Writes the 64 wire bytes into `out` (at least 64 bytes).
    public func encode(into out: UnsafeMutableRawBufferPointer) {
        var wireFlags = flags.subtracting(.bypass)
        var domain: UInt32 = 0, endpoint: UInt32 = 0
        var virtualStart: UInt64 = 0, virtualEnd: UInt64 = 0, physicalStart: UInt64 = 0, mapFlags: UInt32 = 0
        switch operation {
        case .domainCreate(let d, let bypass):
            domain = d
            if bypass { wireFlags.insert(.bypass) }
        case .domainDestroy(let d): domain = d
        case .attach(let e, let d), .detach(let e, let d): (endpoint, domain) = (e, d)
        case .map(let d, let s, let e, let p, let f): (domain, virtualStart, virtualEnd, physicalStart, mapFlags) = (d, s, e, p, f)
        case .unmap(let d, let s, let e): (domain, virtualStart, virtualEnd) = (d, s, e)
        case .commit: break
        }
        out.storeLE(indexLow, at: 0)
        out.storeLE(operation.code, at: 4)
        out.storeLE(wireFlags.rawValue, at: 6)
        out.storeLE(domain, at: 8)
        out.storeLE(endpoint, at: 12)
        out.storeLE(virtualStart, at: 16)
        out.storeLE(virtualEnd, at: 24)
        out.storeLE(physicalStart, at: 32)
        out.storeLE(mapFlags, at: 40)
        out.storeLE(requestPosition, at: 44)
        out[46] = status
        out[47] = 0
        out.storeLE(epoch, at: 48)
        out.storeLE(UInt32(0), at: 52)
        out.storeLE(UInt64(0), at: 56)
    }

    public var encoded: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.withUnsafeMutableBytes { encode(into: $0) }
        return out
    }
}
