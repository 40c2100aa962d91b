import Glibc
import SystemPackage

/// Entry points for the fuzz targets: the message stream and descriptor-chain walking without a
/// socket or a thread, on the same code paths the event loop uses.
@_spi(Fuzzing)
extension VhostUserBackend {
    /// Feeds stream bytes with the descriptors that came with them, as the socket reader would.
    /// A fatal protocol error ends the "connection" exactly as a disconnect does.
    public func fuzzFeed(_ bytes: UnsafeRawBufferPointer, descriptors: [CInt]) {
        do {
            try decoder.feed(bytes, descriptors: descriptors) { message in handle(message) }
        } catch {
            fuzzDisconnect()
        }
        output.removeAll(keepingCapacity: true)
        outputOffset = 0
        for queue in queues where queue.started { process(queue) }
        settleSuspectedRings()
    }

    /// Ends the "connection" exactly as the event loop does on a disconnect.
    public func fuzzDisconnect() { disconnectCleanup() }
}

/// Walks the chains of a split ring laid out in fuzzed guest memory.
@_spi(Fuzzing)
public enum ChainFuzzing {
    /// `memory` becomes guest RAM at guest-physical (and user) address `base`; the ring of `size`
    /// entries sits at the given user addresses. Every available chain is popped and completed.
    /// Returns the number of chains handled, or -1 when the ring was refused.
    public static func run(memory bytes: [UInt8], base: UInt64, size: Int, descriptors: UInt64, avail: UInt64,
                           used: UInt64, lastAvail: UInt16, indirect: Bool, eventIndex: Bool) -> Int {
        guard !bytes.isEmpty, let fd = try? SystemCall.memfd(name: "fuzz-ram", size: bytes.count) else { return -1 }
        _ = bytes.withUnsafeBytes { Glibc.pwrite(fd.rawValue, $0.baseAddress, $0.count, 0) }
        guard let region = try? MemoryRegion(guestPhysicalAddress: base, size: UInt64(bytes.count), userAddress: base,
                                             mmapOffset: 0, descriptor: OwnedFileDescriptor(fd)) else { return -1 }
        var memory = GuestMemory()
        guard (try? memory.add(region)) != nil else { return -1 }
        let queue = Virtqueue(index: 0)
        guard size > 0, size & (size - 1) == 0, size <= Virtqueue.maxSize else { return -1 }
        queue.size = size
        queue.descriptorAddress = descriptors
        queue.availAddress = avail
        queue.usedAddress = used
        queue.addressesSet = true
        queue.indirectDescriptors = indirect
        queue.eventIndex = eventIndex
        queue.lastAvailIndex = lastAvail
        guard (try? queue.resolve(in: memory)) != nil else { return -1 }
        queue.loadUsedIndex()
        var handled = 0
        do {
            while handled < 4 * size, let (head, error) = try queue.popChain(memory: memory) {
                // Touch every byte the chain exposes, as a device would.
                var sum: UInt8 = 0
                for part in queue.readable { for byte in part { sum &+= byte } }
                for part in queue.writable where !part.isEmpty { part[part.count - 1] = sum }
                queue.pushUsed(head: head, length: error == nil ? UInt32(clamping: queue.writable.reduce(0) { $0 + $1.count }) : 0)
                queue.publishUsed()
                handled += 1
            }
            _ = try queue.armKick()
            _ = queue.needsNotification(since: 0)
        } catch {
            return handled
        }
        return handled
    }
}
