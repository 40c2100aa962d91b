/// The fault ring (docs/frontend-protocol.md §10, capability FAULT_RING): the front-end appends a
/// `FaultRecord` for each DMA it refuses and signals the fault eventfd; the back-end takes them and
/// reports them on the guest's event queue. Single producer (the front-end, under its mirror lock),
/// single consumer (the back-end's loop). Both ends are bounded: a full ring drops the new record and
/// counts it in `fault_dropped`, so a guest that floods faults costs a fixed amount of memory.
public enum FaultRing {
    /// Offsets in the header (§4.2): `fault_tail` and `fault_dropped` (front-end) share a cache line,
    /// `fault_head` (back-end) has its own.
    public static let tailOffset = 192
    public static let droppedOffset = 200
    public static let headOffset = 256
    /// Record slots a front-end may give the ring: a power of two in this range.
    public static let entryRange: ClosedRange<UInt32> = 16...4096
    /// What QEMU's front-end uses.
    public static let defaultEntries: UInt32 = 256
}

/// Why the fault ring cannot be read any more: the front-end moved `fault_tail` where no producer
/// could have (§10.3). The session ends, as for a log violation.
public enum FaultRingViolation: Error, Hashable, Sendable, CustomStringConvertible {
    case tail(tail: UInt64, head: UInt64)

    public var description: String {
        switch self {
        case .tail(let tail, let head): "fault_tail \(tail) is outside [head \(head), head + fault_entries]"
        }
    }
}

/// The back-end's end of the fault ring.
public struct FaultRingReader {
    public let memory: any RegionMemory
    public let layout: RegionLayout
    public private(set) var head: UInt64
    /// Records dropped for failing their checks or for a stale epoch.
    public private(set) var refusedRecords = 0
    /// Records handed on.
    public private(set) var takenRecords = 0
    /// The epoch a record must carry: SET_REGION's, then each RESET's.
    public var epoch: UInt32

    /// Starts at the front-end's current `fault_tail` (§10.3: what was written before this session is not
    /// this session's) and publishes that as `fault_head`.
    public init(memory: any RegionMemory, layout: RegionLayout) throws(FrontendWireError) {
        precondition(layout.faultEntries > 0, "the fault ring is not part of this layout")
        let tail = memory.loadAcquire(at: FaultRing.tailOffset)
        guard tail < RegionLayout.indexLimit else { throw .value("fault_tail", tail) }
        self.memory = memory
        self.layout = layout
        self.head = tail
        self.epoch = layout.epoch
        memory.storeRelease(tail, at: FaultRing.headOffset)
    }

    /// The front-end's count of records it could not write because the ring was full (read once).
    public var droppedByFrontend: UInt64 { memory.loadAcquire(at: FaultRing.droppedOffset) }

    /// Takes every record below `fault_tail` (at most `fault_entries`, so the work per call is bounded),
    /// hands each valid one of the current epoch to `body`, and frees the slots by storing `fault_head`.
    @discardableResult
    public mutating func drain(_ body: (FaultRecord) -> Void) throws(FaultRingViolation) -> Int {
        let tail = memory.loadAcquire(at: FaultRing.tailOffset)
        guard tail >= head, tail - head <= UInt64(layout.faultEntries) else { throw .tail(tail: tail, head: head) }
        var bytes = [UInt8](repeating: 0, count: FaultRecord.size)
        var taken = 0
        while head < tail {
            let index = head
            bytes.withUnsafeMutableBytes { memory.copyBytes(at: layout.faultRecordOffset(index), into: $0) }
            let record = try? bytes.withUnsafeBytes { raw throws(FrontendWireError) in try FaultRecord(decoding: raw, index: index) }
            if let record, record.epoch == epoch {
                body(record)
                taken += 1
            } else {
                refusedRecords += 1
            }
            head = index + 1
        }
        takenRecords += taken
        memory.storeRelease(head, at: FaultRing.headOffset)
        return taken
    }
}

/// The front-end's end of the fault ring, as QEMU's patch 0005 implements it; the reference front-end
/// (`MirrorReader`'s user in tests) and the fuzzer write with it.
public struct FaultRingWriter {
    public let memory: any RegionMemory
    public let layout: RegionLayout
    public private(set) var tail: UInt64
    public private(set) var dropped: UInt64 = 0

    /// Before SET_REGION: `fault_tail` = `startTail` (the back-end starts there).
    public init(memory: any RegionMemory, layout: RegionLayout, startTail: UInt64 = 0) {
        precondition(layout.faultEntries > 0, "the fault ring is not part of this layout")
        self.memory = memory
        self.layout = layout
        self.tail = startTail
        memory.storeRelease(startTail, at: FaultRing.tailOffset)
        memory.storeRelease(0, at: FaultRing.droppedOffset)
    }

    /// Appends a record, or drops and counts it when the ring is full (or `fault_head` is not one the
    /// back-end could have written). Returns whether it was written.
    @discardableResult
    public mutating func append(_ record: FaultRecord) -> Bool {
        let head = memory.loadAcquire(at: FaultRing.headOffset)
        guard head <= tail, tail - head < UInt64(layout.faultEntries) else {
            dropped += 1
            memory.storeRelease(dropped, at: FaultRing.droppedOffset)
            return false
        }
        record.encoded(index: tail).withUnsafeBytes { memory.storeBytes($0, at: layout.faultRecordOffset(tail)) }
        tail += 1
        memory.storeRelease(tail, at: FaultRing.tailOffset)
        return true
    }
}
