import LittleEndianBytes

/// The shared region as either side sees it: bytes plus the three memory-ordering operations the
/// protocol needs (docs/frontend-protocol.md §6). The daemon implements it over its `mmap` of the
/// memfd with real atomics; tests and the fuzzer use `InMemoryRegion`.
///
/// A class protocol: the writer and the reader hold it as one existential reference, which costs one
/// indirect call per memory operation and keeps their own code concrete (a generic writer called from
/// another module ran unspecialized, twice as slow). Offsets passed in are always inside `byteCount`
/// (computed from a validated `RegionLayout`); 64-bit values are little-endian and 8-byte aligned.
public protocol RegionMemory: AnyObject {
    var byteCount: Int { get }
    /// Copies `destination.count` bytes at `offset` (a plain read).
    func copyBytes(at offset: Int, into destination: UnsafeMutableRawBufferPointer)
    /// Writes `source` at `offset` (plain stores).
    func storeBytes(_ source: UnsafeRawBufferPointer, at offset: Int)
    /// A 64-bit load with acquire ordering.
    func loadAcquire(at offset: Int) -> UInt64
    /// A 64-bit store with release ordering.
    func storeRelease(_ value: UInt64, at offset: Int)
    /// One byte, read once.
    func loadByte(at offset: Int) -> UInt8
    /// A sequentially consistent fence (C11 `atomic_thread_fence(memory_order_seq_cst)`).
    func fullFence()
}

/// A region in ordinary process memory, for tests and the fuzzer: one thread at a time uses it, so the
/// ordering operations are plain loads and stores. Bounds are checked (a trap is a bug of the caller).
public final class InMemoryRegion: RegionMemory {
    public let bytes: UnsafeMutableRawBufferPointer

    public init(byteCount: Int) {
        bytes = .allocate(byteCount: byteCount, alignment: 64)
        bytes.initializeMemory(as: UInt8.self, repeating: 0)
    }

    deinit { bytes.deallocate() }

    public var byteCount: Int { bytes.count }

    public func copyBytes(at offset: Int, into destination: UnsafeMutableRawBufferPointer) {
        precondition(offset >= 0 && destination.count <= bytes.count - offset)
        destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + destination.count]))
    }

    public func storeBytes(_ source: UnsafeRawBufferPointer, at offset: Int) {
        precondition(offset >= 0 && source.count <= bytes.count - offset)
        UnsafeMutableRawBufferPointer(rebasing: bytes[offset..<offset + source.count]).copyMemory(from: source)
    }

    public func loadAcquire(at offset: Int) -> UInt64 {
        precondition(offset >= 0 && offset <= bytes.count - 8)
        return UnsafeRawBufferPointer(bytes).le(UInt64.self, at: offset)
    }

    public func storeRelease(_ value: UInt64, at offset: Int) {
        precondition(offset >= 0 && offset <= bytes.count - 8)
        bytes.storeLE(value, at: offset)
    }

    public func loadByte(at offset: Int) -> UInt8 { bytes[offset] }

    public func fullFence() {}

    /// Writes one byte (tests: notifier bytes, corrupting entries).
    public func storeByte(_ value: UInt8, at offset: Int) { bytes[offset] = value }
}

/// Where the region's parts are (§4.2): the header fields the front-end writes, and the areas.
public struct RegionLayout: Hashable, Sendable {
    public static let headerSize = 4096
    public static let maxRegionSize: UInt64 = 64 << 20
    public static let logEntryRange: ClosedRange<UInt32> = 64...(1 << 19)
    public static let defaultLogEntries: UInt32 = 65536
    public static let endpointBitmapSize = FrontendProtocol.endpointCount / 8
    public static let notifierSize = FrontendProtocol.endpointCount
    public static let areaAlignment: UInt64 = 64
    /// Indices stay below 2^63, so that adding to one never overflows (§4.1).
    public static let indexLimit: UInt64 = 1 << 63

    /// Offsets of the fields that change: `tail` (back-end), `applied` and `acked` (front-end).
    public static let tailOffset = 64
    public static let appliedOffset = 128
    public static let ackedOffset = 136
    /// Bytes of the header that hold its configuration, the only part the back-end reads (once).
    public static let configurationSize = 64

    public var regionSize: UInt64
    public var epoch: UInt32
    public var logEntries: UInt32
    public var logOffset: UInt64
    public var endpointBitmapOffset: UInt64
    public var notifierOffset: UInt64
    /// The fault ring (§10): both 0 unless FAULT_RING is in force.
    public var faultOffset: UInt64
    public var faultEntries: UInt32

    public init(regionSize: UInt64, epoch: UInt32, logEntries: UInt32, logOffset: UInt64,
                endpointBitmapOffset: UInt64, notifierOffset: UInt64, faultOffset: UInt64 = 0, faultEntries: UInt32 = 0) {
        self.regionSize = regionSize
        self.epoch = epoch
        self.logEntries = logEntries
        self.logOffset = logOffset
        self.endpointBitmapOffset = endpointBitmapOffset
        self.notifierOffset = notifierOffset
        self.faultOffset = faultOffset
        self.faultEntries = faultEntries
    }

    /// The front-end's default arrangement (§4.2): bitmap, notifier bytes, the log, then the fault ring
    /// when `faultEntries` is not 0.
    public static func standard(epoch: UInt32, logEntries: UInt32 = defaultLogEntries, faultEntries: UInt32 = 0) -> RegionLayout {
        let bitmap = UInt64(headerSize)
        let notifier = bitmap + UInt64(endpointBitmapSize)
        let log = notifier + UInt64(notifierSize)
        let fault = log + UInt64(logEntries) * UInt64(LogEntry.size)
        return RegionLayout(regionSize: fault + UInt64(faultEntries) * UInt64(FaultRecord.size), epoch: epoch,
                            logEntries: logEntries, logOffset: log, endpointBitmapOffset: bitmap, notifierOffset: notifier,
                            faultOffset: faultEntries == 0 ? 0 : fault, faultEntries: faultEntries)
    }

    /// Decodes and checks the header's first 64 bytes, copied once by the back-end (§9.2), for a
    /// region of `regionSize` bytes announced by SET_REGION with `epoch`. With `faultRing` (the
    /// capability is in force) the fault fields describe the ring; without, they must be 0.
    public init(decodingHeader bytes: UnsafeRawBufferPointer, regionSize: UInt64, epoch: UInt32,
                faultRing: Bool = false) throws(FrontendWireError) {
        try expectSize(bytes, Self.configurationSize)
        let magic = bytes.le(UInt32.self, at: 0)
        guard magic == FrontendProtocol.regionMagic else { throw .magic(magic) }
        let version = bytes.le(UInt16.self, at: 4)
        guard version == FrontendProtocol.version else { throw .version(version) }
        let headerSize = bytes.le(UInt16.self, at: 6)
        guard Int(headerSize) == Self.headerSize else { throw .value("header_size", UInt64(headerSize)) }
        let headerEpoch = bytes.le(UInt32.self, at: 8)
        guard headerEpoch == epoch else { throw .value("epoch", UInt64(headerEpoch)) }
        let faultOffset = bytes.le(UInt64.self, at: 40), faultEntries = bytes.le(UInt32.self, at: 48)
        if !faultRing {
            guard faultOffset == 0 else { throw .value("fault_off", faultOffset) }
            guard faultEntries == 0 else { throw .value("fault_entries", UInt64(faultEntries)) }
        } else {
            guard FaultRing.entryRange.contains(faultEntries) && faultEntries.nonzeroBitCount == 1 else {
                throw .value("fault_entries", UInt64(faultEntries))
            }
        }
        guard bytes.isZero(52..<64) else { throw .reserved("reserved0") }
        self.init(regionSize: regionSize, epoch: epoch, logEntries: bytes.le(UInt32.self, at: 12),
                  logOffset: bytes.le(UInt64.self, at: 16), endpointBitmapOffset: bytes.le(UInt64.self, at: 24),
                  notifierOffset: bytes.le(UInt64.self, at: 32), faultOffset: faultOffset, faultEntries: faultEntries)
        try validate()
    }

    /// The layout rules (§4.2): region size, log size, and areas aligned, inside the region, after the
    /// header and apart. No arithmetic here can overflow whatever the values.
    public func validate() throws(FrontendWireError) {
        guard regionSize >= UInt64(Self.headerSize) && regionSize <= Self.maxRegionSize else {
            throw .value("region_size", regionSize)
        }
        guard Self.logEntryRange.contains(logEntries) && logEntries.nonzeroBitCount == 1 else {
            throw .value("log_entries", UInt64(logEntries))
        }
        var areas: [(String, UInt64, UInt64)] = [
            ("log", logOffset, UInt64(logEntries) * UInt64(LogEntry.size)),
            ("endpoint bitmap", endpointBitmapOffset, UInt64(Self.endpointBitmapSize)),
            ("notifier bytes", notifierOffset, UInt64(Self.notifierSize)),
        ]
        if faultEntries != 0 { areas.append(("fault ring", faultOffset, UInt64(faultEntries) * UInt64(FaultRecord.size))) }
        for (name, offset, size) in areas {
            guard offset % Self.areaAlignment == 0 else { throw .layout("\(name) at 0x\(String(offset, radix: 16)) is not aligned") }
            guard offset >= UInt64(Self.headerSize) else { throw .layout("\(name) overlaps the header") }
            guard offset <= regionSize && size <= regionSize - offset else { throw .layout("\(name) runs past the region") }
        }
        for i in areas.indices {
            for j in areas.indices where j > i {
                let (a, b) = (areas[i], areas[j])
                // Both lie inside the region (checked above), so the ends do not overflow.
                if a.1 < b.1 + b.2 && b.1 < a.1 + a.2 { throw .layout("\(a.0) overlaps \(b.0)") }
            }
        }
    }

    /// The header's first 64 bytes as the front-end writes them.
    public var encodedHeader: [UInt8] {
        var out: [UInt8] = []
        out.appendLE(FrontendProtocol.regionMagic)
        out.appendLE(FrontendProtocol.version)
        out.appendLE(UInt16(Self.headerSize))
        out.appendLE(epoch)
        out.appendLE(logEntries)
        out.appendLE(logOffset)
        out.appendLE(endpointBitmapOffset)
        out.appendLE(notifierOffset)
        out.appendLE(faultOffset)
        out.appendLE(faultEntries)
        out.appendZeros(12)
        return out
    }

    /// The byte offset of the slot holding entry `index`.
    @inlinable public func entryOffset(_ index: UInt64) -> Int {
        Int(logOffset) + Int(index & UInt64(logEntries - 1)) * LogEntry.size
    }

    /// The byte offset of the fault ring's slot for record `index` (only with a fault ring).
    @inlinable public func faultRecordOffset(_ index: UInt64) -> Int {
        Int(faultOffset) + Int(index & UInt64(faultEntries - 1)) * FaultRecord.size
    }

    /// The byte offset of endpoint `id`'s notifier byte (`id` < 65536).
    @inlinable public func notifierOffset(of id: UInt32) -> Int { Int(notifierOffset) + Int(id) }
}

/// The endpoint bitmap (§4.2): bit r set ⇔ the back-end serves endpoint ID r (segment 0).
public struct EndpointBitmap: Hashable, Sendable {
    public private(set) var words: [UInt64]

    public init() { words = [UInt64](repeating: 0, count: FrontendProtocol.endpointCount / 64) }

    /// The bitmap of `endpoints`; nil if one is ≥ 65536 (the back-end then refuses SET_REGION, §4.1).
    public init?(endpoints: some Sequence<UInt32>) {
        self.init()
        for id in endpoints {
            guard id < UInt32(FrontendProtocol.endpointCount) else { return nil }
            words[Int(id >> 6)] |= 1 << UInt64(id & 63)
        }
    }

    public func contains(_ id: UInt32) -> Bool {
        id < UInt32(FrontendProtocol.endpointCount) && words[Int(id >> 6)] & (1 << UInt64(id & 63)) != 0
    }

    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }

    /// Byte r/8, bit r mod 8, as 8192 bytes.
    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(RegionLayout.endpointBitmapSize)
        for word in words { out.appendLE(word) }
        return out
    }

    /// The back-end writes it before answering SET_REGION.
    public func write(to memory: some RegionMemory, layout: RegionLayout) {
        encoded.withUnsafeBytes { memory.storeBytes($0, at: Int(layout.endpointBitmapOffset)) }
    }

    /// The front-end copies it once, after SET_REGION's OK.
    public init(reading memory: some RegionMemory, layout: RegionLayout) {
        self.init()
        var bytes = [UInt8](repeating: 0, count: RegionLayout.endpointBitmapSize)
        bytes.withUnsafeMutableBytes { memory.copyBytes(at: Int(layout.endpointBitmapOffset), into: $0) }
        bytes.withUnsafeBytes { raw in
            for i in words.indices { words[i] = raw.le(UInt64.self, at: i * 8) }
        }
    }
}
