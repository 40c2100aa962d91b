import Glibc
import SystemPackage
import TestSupport
import VhostUser

/// The driver side of a split virtqueue in shared memory, as the Linux virtio core drives it:
/// descriptors from a free list, avail.idx published with release, used ring polled.
public final class DriverQueue: @unchecked Sendable {
    public struct Used: Hashable, Sendable {
        public var head: UInt16
        public var length: UInt32
        public init(head: UInt16, length: UInt32) { self.head = head; self.length = length }
    }

    public struct Descriptor: Sendable {
        public var address: UInt64
        public var length: UInt32
        public var flags: UInt16
        public var next: UInt16
        public init(address: UInt64, length: UInt32, flags: UInt16, next: UInt16 = 0) {
            self.address = address; self.length = length; self.flags = flags; self.next = next
        }
    }

    public static let flagNext: UInt16 = 1
    public static let flagWrite: UInt16 = 2
    public static let flagIndirect: UInt16 = 4

    public let memory: SharedMemory
    public let index: Int
    public let size: Int
    public let descriptorTable: UInt64
    public let availRing: UInt64
    public let usedRing: UInt64
    public let kick: Doorbell
    public let call: Doorbell
    public let errorDescriptor: Doorbell

    public private(set) var availIndex: UInt16 = 0
    public private(set) var lastSeenUsed: UInt16 = 0
    private var freeHeads: [UInt16]
    /// The writable buffers of each outstanding chain, to read replies back.
    private var writableBuffers: [UInt16: [(UInt64, Int)]] = [:]
    private var chainLengths: [UInt16: Int] = [:]

    public init(memory: SharedMemory, index: Int, size: Int) throws {
        self.memory = memory
        self.index = index
        self.size = size
        descriptorTable = memory.allocate(16 * size, alignment: 16)
        availRing = memory.allocate(6 + 2 * size, alignment: 2)
        usedRing = memory.allocate(6 + 8 * size, alignment: 4)
        memory.pointer(descriptorTable).initializeMemory(as: UInt8.self, repeating: 0, count: 16 * size)
        memory.pointer(availRing).initializeMemory(as: UInt8.self, repeating: 0, count: 6 + 2 * size)
        memory.pointer(usedRing).initializeMemory(as: UInt8.self, repeating: 0, count: 6 + 8 * size)
        kick = try Doorbell(side: memory.side)
        call = try Doorbell(side: memory.side)
        errorDescriptor = try Doorbell(side: memory.side)
        freeHeads = (0..<UInt16(size)).reversed().map { $0 }
    }

    public var freeCount: Int { freeHeads.count }

    /// The vring-address payload fields (user addresses): descriptor table, used ring, avail ring.
    public var userAddresses: (descriptors: UInt64, used: UInt64, avail: UInt64) {
        (memory.userAddress(of: descriptorTable), memory.userAddress(of: usedRing), memory.userAddress(of: availRing))
    }

    public func writeDescriptor(_ index: Int, _ d: Descriptor, table: UInt64? = nil) {
        let p = memory.pointer((table ?? descriptorTable) + UInt64(16 * index))
        p.storeBytes(of: d.address.littleEndian, as: UInt64.self)
        p.storeBytes(of: d.length.littleEndian, toByteOffset: 8, as: UInt32.self)
        p.storeBytes(of: d.flags.littleEndian, toByteOffset: 12, as: UInt16.self)
        p.storeBytes(of: d.next.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    /// Builds a chain of readable buffers then writable ones (sizes), publishes it; returns its head.
    @discardableResult
    public func add(readable: [[UInt8]], writable: [Int], indirect: Bool = false, publish: Bool = true) -> UInt16 {
        var parts: [Descriptor] = []
        var writableParts: [(UInt64, Int)] = []
        for bytes in readable {
            let address = memory.allocate(max(bytes.count, 1))
            memory.write(bytes, at: address)
            parts.append(Descriptor(address: address, length: UInt32(bytes.count), flags: 0))
        }
        for count in writable {
            let address = memory.allocate(max(count, 1))
            memory.pointer(address).initializeMemory(as: UInt8.self, repeating: 0xAA, count: count)
            parts.append(Descriptor(address: address, length: UInt32(count), flags: Self.flagWrite))
            writableParts.append((address, count))
        }
        return add(parts: parts, writableParts: writableParts, indirect: indirect, publish: publish)
    }

    /// Links descriptors the caller laid out itself (buffers it placed, perhaps shared between
    /// chains) into one chain, in a table of its own when `indirect`; returns its head.
    @discardableResult
    public func add(parts: [Descriptor], writableParts: [(UInt64, Int)] = [], indirect: Bool = false,
                    publish: Bool = true) -> UInt16 {
        let head: UInt16
        if indirect {
            let table = memory.allocate(16 * parts.count)
            for (i, var part) in parts.enumerated() {
                if i + 1 < parts.count { part.flags |= Self.flagNext; part.next = UInt16(i + 1) }
                writeDescriptor(i, part, table: table)
            }
            head = freeHeads.removeLast()
            writeDescriptor(Int(head), Descriptor(address: table, length: UInt32(16 * parts.count), flags: Self.flagIndirect))
            chainLengths[head] = 1
        } else {
            let heads = (0..<parts.count).map { _ in freeHeads.removeLast() }
            for (i, var part) in parts.enumerated() {
                if i + 1 < parts.count { part.flags |= Self.flagNext; part.next = heads[i + 1] }
                writeDescriptor(Int(heads[i]), part)
            }
            head = heads[0]
            chainLengths[head] = parts.count
            for h in heads.dropFirst() { chainLengths[h] = 0 }
        }
        writableBuffers[head] = writableParts
        if publish { self.publish(head) }
        return head
    }

    /// Puts `head` in the avail ring and publishes the new avail.idx (release).
    public func publish(_ head: UInt16) {
        let slot = memory.pointer(availRing + 4 + UInt64(2 * (Int(availIndex) % size)))
        slot.storeBytes(of: head.littleEndian, as: UInt16.self)
        availIndex &+= 1
        RingAtomics.storeRelease(memory.pointer(availRing + 2), availIndex.littleEndian)
    }

    /// Puts every head in the avail ring and publishes avail.idx once, so the device sees them together.
    public func publish(_ heads: [UInt16]) {
        for head in heads {
            let slot = memory.pointer(availRing + 4 + UInt64(2 * (Int(availIndex) % size)))
            slot.storeBytes(of: head.littleEndian, as: UInt16.self)
            availIndex &+= 1
        }
        RingAtomics.storeRelease(memory.pointer(availRing + 2), availIndex.littleEndian)
    }

    /// Sets avail.idx directly (to test a corrupt ring).
    public func setAvailIndex(_ value: UInt16) {
        availIndex = value
        RingAtomics.storeRelease(memory.pointer(availRing + 2), value.littleEndian)
    }

    /// Rewrites the ring in place as a driver restarting after a device reset does: every
    /// descriptor free, avail and used rings zeroed (indices back to 0), no reply outstanding.
    public func rewriteForRestart() {
        memory.pointer(descriptorTable).initializeMemory(as: UInt8.self, repeating: 0, count: 16 * size)
        memory.pointer(availRing).initializeMemory(as: UInt8.self, repeating: 0, count: 6 + 2 * size)
        memory.pointer(usedRing).initializeMemory(as: UInt8.self, repeating: 0, count: 6 + 8 * size)
        availIndex = 0
        lastSeenUsed = 0
        freeHeads = (0..<UInt16(size)).reversed().map { $0 }
        writableBuffers = [:]
        chainLengths = [:]
    }

    public func setAvailFlags(_ flags: UInt16) { memory.pointer(availRing).storeBytes(of: flags.littleEndian, as: UInt16.self) }
    public func setUsedEvent(_ value: UInt16) {
        memory.pointer(availRing + 4 + UInt64(2 * size)).storeBytes(of: value.littleEndian, as: UInt16.self)
    }
    public var availEvent: UInt16 {
        UInt16(littleEndian: RingAtomics.loadAcquire(memory.pointer(usedRing + 4 + UInt64(8 * size))))
    }
    /// used.flags as the device last wrote it (bit 0: VIRTQ_USED_F_NO_NOTIFY).
    public var usedFlags: UInt16 { UInt16(littleEndian: RingAtomics.loadAcquire(memory.pointer(usedRing))) }
    public var usedIndex: UInt16 { UInt16(littleEndian: RingAtomics.loadAcquire(memory.pointer(usedRing + 2))) }

    public func kickNow() { kick.signal() }

    /// Whether the ring asks the driver to kick for the next entry it adds (§2.7.10), every entry so far
    /// consumed: with EVENT_IDX avail_event is avail.idx (one behind: no new index passes it), otherwise
    /// VIRTQ_USED_F_NO_NOTIFY is clear.
    public func kicksWanted(eventIndex: Bool) -> Bool {
        eventIndex ? availEvent == availIndex : usedFlags & VirtioSpec.VIRTQ_USED_F_NO_NOTIFY == 0
    }

    /// Whether the device asks for a kick now that avail.idx moved on from `previous` (virtio 1.4
    /// §2.7.10, what Linux's virtqueue_kick_prepare checks): with VIRTIO_F_EVENT_IDX when the new
    /// entries pass avail_event, otherwise unless the device set VIRTQ_USED_F_NO_NOTIFY.
    public func deviceWantsKick(since previous: UInt16, eventIndex: Bool) -> Bool {
        RingAtomics.fullFence()  // virtio_mb: the avail.idx store is visible before avail_event or flags are read
        if eventIndex { return availIndex &- availEvent &- 1 < availIndex &- previous }
        return usedFlags & VirtioSpec.VIRTQ_USED_F_NO_NOTIFY == 0
    }

    /// Waits until the back-end has read this queue's kick eventfd (it reads it before it handles the
    /// kick, on its loop thread); false if the kick is still unread after `timeout`. A message sent after
    /// this returns is handled only once that kick's turn of the ring is over.
    public func waitForKickConsumed(timeout: Duration = .seconds(5)) -> Bool {
        // Embedded: once the engine has nothing left to do, nothing more can read the kick.
        if case .embedded = memory.side {
            memory.side.settle()
            return !kick.isSignalled
        }
        // Reading an eventfd leaves no trace to wait on: look at its count every 50 µs.
        return waitUntil(timeout, every: .microseconds(50)) { !kick.isSignalled }
    }

    /// Kicks only if the device asks for it (`deviceWantsKick`), as a driver does; returns whether it kicked.
    @discardableResult
    public func kickIfWanted(since previous: UInt16, eventIndex: Bool) -> Bool {
        guard deviceWantsKick(since: previous, eventIndex: eventIndex) else { return false }
        kickNow()
        return true
    }

    /// Used entries that appeared since the last call; their descriptors return to the free list.
    public func collectUsed() -> [Used] {
        var result: [Used] = []
        let now = usedIndex
        while lastSeenUsed != now {
            let element = memory.pointer(usedRing + 4 + UInt64(8 * (Int(lastSeenUsed) % size)))
            let head = UInt16(truncatingIfNeeded: UInt32(littleEndian: element.loadUnaligned(as: UInt32.self)))
            let length = UInt32(littleEndian: element.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            result.append(Used(head: head, length: length))
            lastSeenUsed &+= 1
            release(head)
        }
        return result
    }

    private func release(_ head: UInt16) {
        guard let count = chainLengths[head] else { return }
        var index = head
        for i in 0..<max(count, 1) {
            freeHeads.append(index)
            chainLengths[index] = nil
            if i + 1 < count {
                let p = memory.pointer(descriptorTable + UInt64(16 * Int(index)))
                index = UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 14, as: UInt16.self))
            }
        }
    }

    /// Polls the used ring (as the Linux driver spins) until `count` entries arrived or `timeout` passes.
    /// With `spinning`, it never sleeps (as the driver does; for benchmarks); otherwise it naps 50 µs
    /// between polls after the first thousand, to leave the CPU to the back-end in tests.
    public func waitForUsed(_ count: Int, timeout: Duration = .seconds(5), spinning: Bool = false) -> [Used] {
        if case .embedded = memory.side {
            memory.side.settle()
            return collectUsed()
        }
        var result: [Used] = []
        let clock = ContinuousClock()
        let deadline = clock.now + timeout
        var spins = 0
        while result.count < count && clock.now < deadline {
            result += collectUsed()
            spins += 1
            if result.count < count && spins > 1000 && !spinning { usleep(50) }
        }
        return result
    }

    /// The writable bytes of a completed chain, concatenated.
    public func reply(of head: UInt16) -> [UInt8] {
        (writableBuffers[head] ?? []).flatMap { memory.read($0.1, at: $0.0) }
    }

    /// Whether the back-end has signalled the call eventfd by now (consumes the signal). The engine
    /// publishes used.idx before it signals, so right after a used entry appears this may still be
    /// false: a test that expects a call uses `waitForCall`, and one that expects none first ends the
    /// back-end's turn with a message round trip (see `TestFrontend.sync`).
    public func wasCalled() -> Bool { call.drain() > 0 }

    /// Waits (poll(2) on the call eventfd, no sleeping) until the back-end signals it or `timeout`
    /// passes; true if it was signalled (the signal is consumed).
    public func waitForCall(timeout: Duration = .seconds(5)) -> Bool { call.waitForSignal(timeout: timeout) }

    /// Waits until the back-end signals the error eventfd or `timeout` passes (the signal is consumed).
    public func waitForError(timeout: Duration = .seconds(5)) -> Bool { errorDescriptor.waitForSignal(timeout: timeout) }

    public func errorSignalled() -> Bool { errorDescriptor.drain() > 0 }
}
