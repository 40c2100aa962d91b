/// Why a descriptor chain was refused. The chain is completed with used length 0 and the queue goes on.
public enum ChainError: Error, Hashable, Sendable {
    case indexOutOfRange
    case loop
    case nestedIndirect
    case indirectNotNegotiated
    case indirectWithNext
    case badIndirectTable
    case outsideGuestMemory
    case zeroLengthWritable
    case readableAfterWritable
    case tooLarge
    case longerThanQueue
}

/// Why a queue stopped for good (until the next reset): the ring itself cannot be trusted.
public enum RingError: Error, Hashable, Sendable {
    case ringOutsideGuestMemory
    case misalignedRing
    case availIndexJumped(by: UInt16)
    case headOutOfRange(UInt16)
}

/// A split virtqueue seen from the device side (virtio 1.x §2.7).
///
/// Ring memory is shared with the guest: every index and descriptor is read once, validated, and
/// never trusted across reads. `avail.idx` is read with acquire; `used.idx` is published with release.
final class Virtqueue {
    static let maxSize = 32_768
    static let descriptorSize = 16
    private static let flagNext: UInt16 = 1
    private static let flagWrite: UInt16 = 2
    private static let flagIndirect: UInt16 = 4
    private static let availNoInterrupt: UInt16 = 1
    private static let usedNoNotify: UInt16 = 1

    let index: Int
    var size = 0
    var descriptorAddress: UInt64 = 0
    var availAddress: UInt64 = 0
    var usedAddress: UInt64 = 0
    var addressesSet = false

    /// Next avail index to consume; SET/GET_VRING_BASE.
    var lastAvailIndex: UInt16 = 0
    /// Our copy of used.idx.
    private(set) var usedIndex: UInt16 = 0
    /// The used.idx last stored in the ring: a store that would not change it is skipped, so that a
    /// ring the front-end is rewriting (reset, teardown) never gets a stale index from us.
    private var publishedUsedIndex: UInt16 = 0
    /// Set by a device reset within the connection (RESET_DEVICE, or a guest reset seen at ring
    /// start): the next start begins at the base with used.idx equal to it, whatever the ring holds.
    var restartsFresh = false
    /// Bumped whenever the ring stops being the one the engine was reading (reset, stop, new
    /// addresses or memory): a ring error seen before the bump says nothing about the ring after it.
    private(set) var generation: UInt64 = 0
    /// A ring error seen but not yet declared: it stands only if no message waiting in the socket
    /// (a reset, a stop) explains it. The queue is not processed meanwhile.
    var suspectedError: (error: RingError, generation: UInt64)?
    /// A handled chain whose completion the device asked to keep back (`completionMustWait`); no
    /// further chain is taken from the ring until it is published.
    var waitingCompletion: (head: UInt16, length: UInt32)?
    /// The base GET_VRING_BASE last returned, to tell a guest reset from a pause at the next start.
    var lastStoppedBase: UInt16?

    var started = false
    var enabled = false
    private(set) var ringError: RingError?

    var kick: OwnedDescriptor?
    var call: OwnedDescriptor?
    var error: OwnedDescriptor?

    var eventIndex = false
    /// Whether the ring currently tells the driver not to kick (the loop is polling it).
    private(set) var kicksSuppressed = false
    var indirectDescriptors = false

    // Resolved ring pointers; nil until the ring starts with valid addresses.
    private var descriptors: UnsafeMutableRawPointer?
    private var avail: UnsafeMutableRawPointer?
    private var used: UnsafeMutableRawPointer?

    // Reused chain views, so that popping a chain does not allocate.
    private(set) var readable: [UnsafeRawBufferPointer] = []
    private(set) var writable: [UnsafeMutableRawBufferPointer] = []

    private(set) var chainsCompleted = 0
    private(set) var badChains = 0
    /// Descriptors visited by chain walks so far (wraps); the engine bounds how many one lock hold walks.
    private(set) var descriptorsWalked = 0

    init(index: Int) { self.index = index }

    var isBroken: Bool { ringError != nil }
    /// Whether chains may be taken from the ring now (started, sound, no error under suspicion).
    var isRunnable: Bool { started && ringError == nil && suspectedError == nil && waitingCompletion == nil }
    var isResolved: Bool { descriptors != nil }

    /// Back to the state after reset: stopped, disabled, no addresses, no descriptors.
    func reset() {
        size = 0
        addressesSet = false
        lastAvailIndex = 0
        usedIndex = 0
        publishedUsedIndex = 0
        restartsFresh = false
        suspectedError = nil
        waitingCompletion = nil
        lastStoppedBase = nil
        started = false
        enabled = false
        kicksSuppressed = false
        ringError = nil
        kick = nil
        call = nil
        error = nil
        unresolve()
    }

    func unresolve() {
        generation &+= 1
        descriptors = nil
        avail = nil
        used = nil
    }

    func markBroken(_ error: RingError, host: any VhostUserHost) {
        ringError = error
        unresolve()
        if let fd = self.error?.descriptor { host.signal(fd) }
    }

    /// Resolves the ring addresses through the memory table (again after any table change).
    func resolve(in memory: GuestMemory) throws(RingError) {
        unresolve()
        guard size > 0, addressesSet else { return }
        guard descriptorAddress % 16 == 0, availAddress % 2 == 0, usedAddress % 4 == 0 else { throw .misalignedRing }
        let n = UInt64(size)
        guard let d = memory.userAddress(descriptorAddress, length: 16 * n),
              let a = memory.userAddress(availAddress, length: 6 + 2 * n),
              let u = memory.userAddress(usedAddress, length: 6 + 8 * n) else { throw .ringOutsideGuestMemory }
        descriptors = d
        avail = a
        used = u
    }

    /// Where a (re)started ring continues: used.idx as the ring holds it (a resumed or migrated
    /// ring), or, after a reset, the base itself, stored into the ring together with a request for
    /// kicks, so that nothing the engine wrote before it saw the reset survives into the new ring.
    func loadUsedIndex() {
        guard let used else { return }
        if restartsFresh {
            restartsFresh = false
            usedIndex = lastAvailIndex
            RingAtomics.storeRelaxed(used, 0)  // used.flags: kicks wanted
            RingAtomics.storeRelaxed(used + 4 + 8 * size, lastAvailIndex.littleEndian)  // avail_event
            RingAtomics.storeRelease(used + 2, usedIndex.littleEndian)
        } else {
            usedIndex = UInt16(littleEndian: RingAtomics.loadRelaxed(used + 2))
        }
        publishedUsedIndex = usedIndex
    }

    /// Chains the driver has made available and we have not consumed.
    func pendingCount() throws(RingError) -> Int {
        guard let avail else { return 0 }
        let availIndex = UInt16(littleEndian: RingAtomics.loadAcquire(avail + 2))
        let pending = availIndex &- lastAvailIndex
        guard Int(pending) <= size else { throw .availIndexJumped(by: pending) }
        return Int(pending)
    }

    /// Consumes the next available head and walks its chain into `readable`/`writable`.
    /// Returns nil when none is available; throws a `RingError` when the ring is corrupt.
    func popChain(memory: GuestMemory) throws(RingError) -> (head: UInt16, error: ChainError?)? {
        guard try pendingCount() > 0, let avail else { return nil }
        let slot = Int(lastAvailIndex) % size
        let head = UInt16(littleEndian: (avail + 4 + 2 * slot).loadUnaligned(as: UInt16.self))
        guard Int(head) < size else { throw .headOutOfRange(head) }
        lastAvailIndex &+= 1
        return (head, walk(head: head, memory: memory))
    }

    private func walk(head: UInt16, memory: GuestMemory) -> ChainError? {
        readable.removeAll(keepingCapacity: true)
        writable.removeAll(keepingCapacity: true)
        guard var table = descriptors else { return .outsideGuestMemory }
        var tableSize = size
        var index = Int(head)
        var inIndirect = false
        var visited = 0
        var total: UInt64 = 0
        var seenWritable = false
        var walked = 0  // across the indirect switch, where `visited` starts again
        defer { descriptorsWalked &+= walked }
        while true {
            visited += 1
            walked += 1
            guard visited <= tableSize else { return .loop }
            // §2.7.5.3.1: the driver MUST NOT create a chain longer than the queue size; an indirect
            // table may hold more, which would let one chain cost 32 times what the ring allows.
            guard visited <= size else { return .longerThanQueue }
            guard index < tableSize else { return .indexOutOfRange }
            let entry = table + index * Self.descriptorSize
            let address = UInt64(littleEndian: entry.loadUnaligned(as: UInt64.self))
            let length = UInt32(littleEndian: entry.loadUnaligned(fromByteOffset: 8, as: UInt32.self))
            let flags = UInt16(littleEndian: entry.loadUnaligned(fromByteOffset: 12, as: UInt16.self))
            let next = UInt16(littleEndian: entry.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
            if flags & Self.flagIndirect != 0 {
                guard !inIndirect else { return .nestedIndirect }
                guard indirectDescriptors else { return .indirectNotNegotiated }
                guard flags & Self.flagNext == 0 else { return .indirectWithNext }
                guard length > 0, length % UInt32(Self.descriptorSize) == 0,
                      Int(length) / Self.descriptorSize <= Self.maxSize else { return .badIndirectTable }
                guard let indirectTable = memory.guestPhysical(address, length: UInt64(length)) else { return .outsideGuestMemory }
                table = indirectTable
                tableSize = Int(length) / Self.descriptorSize
                index = 0
                visited = 0
                inIndirect = true
                continue
            }
            let isWrite = flags & Self.flagWrite != 0
            if isWrite {
                guard length > 0 else { return .zeroLengthWritable }
                seenWritable = true
            } else if seenWritable {
                return .readableAfterWritable
            }
            total += UInt64(length)
            guard total <= UInt64(UInt32.max) else { return .tooLarge }
            if length > 0, let p = memory.guestPhysical(address, length: UInt64(length)) {
                // The usual case, a buffer inside one region: no per-piece closure. (An empty readable
                // buffer adds no piece, as before.)
                let piece = UnsafeMutableRawBufferPointer(start: p, count: Int(length))
                if isWrite { writable.append(piece) } else { readable.append(UnsafeRawBufferPointer(piece)) }
            } else {
                let inside = memory.forEachPiece(address, length: UInt64(length)) { piece in
                    if isWrite { writable.append(piece) } else { readable.append(UnsafeRawBufferPointer(piece)) }
                }
                guard inside else { return .outsideGuestMemory }
            }
            guard flags & Self.flagNext != 0 else { return nil }
            index = Int(next)
        }
    }

    /// The last popped chain's readable and writable parts.
    @inline(__always)
    func withChain<R>(_ body: (UnsafeBufferPointer<UnsafeRawBufferPointer>, UnsafeBufferPointer<UnsafeMutableRawBufferPointer>) -> R) -> R {
        readable.withUnsafeBufferPointer { r in writable.withUnsafeBufferPointer { w in body(r, w) } }
    }

    /// Writes a used element; the driver sees it at the next `publishUsed()`. Batching the used.idx
    /// store keeps a polling driver from pulling the cache line across cores once per request.
    func pushUsed(head: UInt16, length: UInt32) {
        guard let used else { return }
        let element = used + 4 + 8 * (Int(usedIndex) % size)
        element.storeBytes(of: UInt32(head).littleEndian, as: UInt32.self)
        element.storeBytes(of: length.littleEndian, toByteOffset: 4, as: UInt32.self)
        usedIndex &+= 1
        chainsCompleted += 1
    }

    /// Publishes used.idx (release: the elements are visible first), if it moved.
    func publishUsed() {
        guard let used, usedIndex != publishedUsedIndex else { return }
        publishedUsedIndex = usedIndex
        RingAtomics.storeRelease(used + 2, usedIndex.littleEndian)
    }

    func countBadChain() { badChains += 1 }

    /// Whether the driver wants an interrupt for the used entries since `previousUsedIndex`.
    func needsNotification(since previousUsedIndex: UInt16) -> Bool {
        guard let avail, usedIndex != previousUsedIndex else { return false }
        RingAtomics.fullFence()
        if eventIndex {
            let usedEvent = UInt16(littleEndian: RingAtomics.loadRelaxed(avail + 4 + 2 * size))
            // virtio 1.x §2.7.10: notify when used.idx passes used_event.
            return usedIndex &- usedEvent &- 1 < usedIndex &- previousUsedIndex
        }
        return UInt16(littleEndian: RingAtomics.loadRelaxed(avail)) & Self.availNoInterrupt == 0
    }

    /// With EVENT_IDX, asks for a kick at the next avail entry; returns true if more arrived meanwhile.
    /// While the loop polls (`kicksSuppressed`), it keeps kicks off instead, and only reports more entries.
    func armKick() throws(RingError) -> Bool {
        guard eventIndex, let used else { return try pendingCount() > 0 }
        if kicksSuppressed {
            RingAtomics.storeRelaxed(used + 4 + 8 * size, (lastAvailIndex &- 1).littleEndian)  // kept one behind
            return try pendingCount() > 0
        }
        RingAtomics.storeRelaxed(used + 4 + 8 * size, lastAvailIndex.littleEndian)
        RingAtomics.fullFence()
        return try pendingCount() > 0
    }

    /// Asks the driver not to kick while the loop polls this ring, or to kick again (virtio 1.x §2.7.10):
    /// with EVENT_IDX avail_event is set one behind the next index (no new index can pass it), without
    /// it VRING_USED_F_NO_NOTIFY is set. Returns true if entries arrived before re-enabling took effect.
    @discardableResult
    func setKicks(enabled: Bool) throws(RingError) -> Bool {
        kicksSuppressed = !enabled
        guard let used else { return false }
        if eventIndex {
            let event = enabled ? lastAvailIndex : lastAvailIndex &- 1
            RingAtomics.storeRelaxed(used + 4 + 8 * size, event.littleEndian)
        } else {
            RingAtomics.storeRelaxed(used, (enabled ? 0 : Self.usedNoNotify).littleEndian)
        }
        guard enabled else { return false }
        RingAtomics.fullFence()
        return try pendingCount() > 0
    }

    /// Whether entries are available, for polling (an acquire load of avail.idx; no validation).
    var hasAvailable: Bool {
        guard let avail else { return false }
        return UInt16(littleEndian: RingAtomics.loadAcquire(avail + 2)) != lastAvailIndex
    }

    func notify(host: any VhostUserHost) {
        if let fd = call?.descriptor { host.signal(fd) }
    }
}
