import Testing

@testable import VhostUserCore
import VhostUserTestSupport

/// Split virtqueues driven in memory through the embedded driver (virtio 1.x §2.7; vhost-user.rst
/// "Ring states").
@Suite struct QueueTests {
    // Spec: virtio 1.4 §2.7 (split virtqueues): a chain in, its used element and a call out.
    @Test func roundTripThroughTheRing() throws {
        let h = try Harness(.embedded)
        try h.start()
        let (used, reply) = h.roundTrip([1, 2, 3, 4, 5])
        #expect(used?.length == 5)
        #expect(reply == [5, 4, 3, 2, 1])
        #expect(h.queues[0].waitForCall())  // §2.7.7/§2.7.10: no suppression asked, so the driver is called
    }

    // §2.7.5.3: chains split over several buffers, readable before writable.
    @Test func multiBufferChains() throws {
        let h = try Harness(.embedded)
        try h.start()
        let head = h.queues[0].add(readable: [[1, 2], [3], [4, 5, 6]], writable: [2, 2, 2])
        h.queues[0].kickNow()
        #expect(h.queues[0].waitForUsed(1).first?.length == 6)
        #expect(h.queues[0].reply(of: head) == [6, 5, 4, 3, 2, 1])
    }

    // §2.7.5.3.1: indirect descriptors.
    @Test func indirectChains() throws {
        let h = try Harness(.embedded)
        try h.start()
        let head = h.queues[0].add(readable: [[7, 8], [9]], writable: [3], indirect: true)
        h.queues[0].kickNow()
        #expect(h.queues[0].waitForUsed(1).first?.length == 3)
        #expect(h.queues[0].reply(of: head) == [9, 8, 7])
    }

    // Without INDIRECT_DESC negotiated, an indirect chain is bad: used length 0, queue keeps running.
    // Spec: virtio 1.4 §2.7.5.3.1: indirect descriptors only with VIRTIO_F_INDIRECT_DESC; docs/vhost-user.md "Rings".
    @Test func indirectWithoutFeature() throws {
        let h = try Harness(.embedded)
        try h.start(features: h.allFeatures & ~VirtioSpec.VIRTIO_F_INDIRECT_DESC)
        h.queues[0].add(readable: [[1]], writable: [1], indirect: true)
        h.queues[0].kickNow()
        #expect(h.queues[0].waitForUsed(1).first?.length == 0)
        #expect(h.roundTrip([1, 2]).1 == [2, 1])
        #expect(h.engine.counters.badChains == 1)
    }

    /// Publishes a chain made of raw descriptors (for malformed chains).
    func publishRaw(_ q: DriverQueue, _ descriptors: [(Int, DriverQueue.Descriptor)], head: UInt16) {
        for (index, d) in descriptors { q.writeDescriptor(index, d) }
        q.publish(head)
        q.kickNow()
    }

    // Malformed chains complete with used length 0 and the queue keeps running.
    // Spec: virtio 1.4 §2.7.5.2, §2.7.5.3.1 (descriptor rules); docs/vhost-user.md "Rings": a bad chain completes with used length 0.
    @Test func malformedChains() throws {
        let h = try Harness(.embedded)
        try h.start()
        let q = h.queues[0]
        let buffer = h.memory.allocate(64)
        let outside = h.memory.guestPhysicalAddress + UInt64(h.memory.size)
        let W = DriverQueue.flagWrite, N = DriverQueue.flagNext, I = DriverQueue.flagIndirect
        let cases: [[(Int, DriverQueue.Descriptor)]] = [
            // A loop: 200 → 201 → 200.
            [(200, .init(address: buffer, length: 4, flags: N, next: 201)), (201, .init(address: buffer, length: 4, flags: N, next: 200))],
            // next beyond the queue.
            [(200, .init(address: buffer, length: 4, flags: N, next: 999))],
            // Address outside guest memory, and one that wraps around 2^64.
            [(200, .init(address: outside, length: 4, flags: W))],
            [(200, .init(address: .max - 1, length: 4, flags: W))],
            // Writable part of length 0; readable after writable.
            [(200, .init(address: buffer, length: 4, flags: N, next: 201)), (201, .init(address: buffer, length: 0, flags: W))],
            [(200, .init(address: buffer, length: 4, flags: W | N, next: 201)), (201, .init(address: buffer, length: 4, flags: 0))],
            // Indirect with NEXT, a table of bad length, a table outside memory.
            [(200, .init(address: buffer, length: 16, flags: I | N, next: 201)), (201, .init(address: buffer, length: 4, flags: W))],
            [(200, .init(address: buffer, length: 15, flags: I))],
            [(200, .init(address: outside, length: 16, flags: I))],
        ]
        for (i, chain) in cases.enumerated() {
            publishRaw(q, chain, head: 200)
            let used = q.waitForUsed(1)
            #expect(used == [DriverQueue.Used(head: 200, length: 0)], "case \(i)")
        }
        // A nested indirect table.
        let inner = h.memory.allocate(16)
        q.writeDescriptor(0, .init(address: buffer, length: 16, flags: I), table: inner)
        publishRaw(q, [(200, .init(address: inner, length: 16, flags: I))], head: 200)
        #expect(q.waitForUsed(1) == [DriverQueue.Used(head: 200, length: 0)])
        #expect(h.engine.counters.badChains == cases.count + 1)
        #expect(h.roundTrip([1, 2, 3]).1 == [3, 2, 1])
        #expect(h.device.processed == 1)  // no bad chain reached the device
    }

    // §2.7.13: 256 chains queued before one kick complete in order.
    @Test func manyChainsOneKick() throws {
        let h = try Harness(.embedded, queueSize: 256)
        try h.start()
        let q = h.queues[0]
        var heads: [UInt16] = []
        // Linux uses one indirect descriptor per request when INDIRECT_DESC is negotiated.
        for i in 0..<256 { heads.append(q.add(readable: [[UInt8(i & 0xff), 0]], writable: [2], indirect: true)) }
        #expect(q.freeCount == 0)
        q.kickNow()
        let used = q.waitForUsed(256)
        #expect(used.map(\.head) == heads)
        #expect(used.allSatisfy { $0.length == 2 })
        #expect(h.device.processed == 256)
    }

    // §2.7.10: with EVENT_IDX the driver is called only when used.idx passes used_event,
    // and the device publishes avail_event so the driver knows when to kick.
    @Test func eventIndexSuppression() throws {
        let h = try Harness(.embedded)
        try h.start()
        let q = h.queues[0]
        q.setUsedEvent(5)  // "call me once the 6th entry is used"
        for _ in 0..<3 { _ = h.roundTrip([1]) }
        try h.frontend.sync()  // every call owed for those three has been made by now
        #expect(!q.wasCalled())
        #expect(q.availEvent == q.availIndex)
        for _ in 0..<3 { _ = h.roundTrip([1]) }
        #expect(q.waitForCall())
    }

    // §2.7.7: without EVENT_IDX, VIRTQ_AVAIL_F_NO_INTERRUPT suppresses the call.
    @Test func noInterruptFlag() throws {
        let h = try Harness(.embedded)
        try h.start(features: h.allFeatures & ~VirtioSpec.VIRTIO_F_EVENT_IDX)
        h.queues[0].setAvailFlags(VirtioSpec.VIRTQ_AVAIL_F_NO_INTERRUPT)
        _ = h.roundTrip([1])
        try h.frontend.sync()  // a call for that entry would have been made by now
        #expect(!h.queues[0].wasCalled())
        h.queues[0].setAvailFlags(0)
        _ = h.roundTrip([1])
        #expect(h.queues[0].waitForCall())
    }

    // Ring states (vhost-user.rst): a started but disabled ring must cause no side effects. Completing a
    // virtio-iommu request or event buffer with length 0 is one (a failed request, an "unknown fault"
    // in the guest's log), and QEMU signals each kick eventfd before it enables the ring; so a disabled
    // ring is left as it is, and enabling it serves what is pending.
    @Test func disabledRingsAreLeftAloneUntilEnabled() throws {
        let h = try Harness(.embedded)
        try h.frontend.initialize(queues: h.queues)
        try h.frontend.setFeatures(h.allFeatures)
        try h.frontend.setMemTable([h.memory])
        for q in h.queues {
            try h.frontend.setVringNum(q.index, q.size)
            try h.frontend.setVringBase(q.index, 0)
            let a = q.userAddresses
            try h.frontend.setVringAddr(q.index, descriptors: a.descriptors, used: a.used, avail: a.avail)
            try h.frontend.setVringFD(.setVringKick, q.index, q.kick.rawValue)
        }
        let request = h.queues[0].add(readable: [[1, 2]], writable: [2])
        let eventBuffer = h.queues[1].add(readable: [], writable: [8])
        h.device.post([7])
        for q in h.queues { q.kickNow() }
        for q in h.queues { #expect(q.waitForKickConsumed()) }
        try h.frontend.sync()
        #expect(h.queues[0].usedIndex == 0 && h.queues[1].usedIndex == 0, "nothing taken from a disabled ring")
        #expect(h.device.processed == 0)
        try h.frontend.setVringEnable(0, true)
        #expect(h.queues[0].waitForUsed(1) == [DriverQueue.Used(head: request, length: 2)])
        #expect(h.queues[0].reply(of: request) == [2, 1])
        try h.frontend.setVringEnable(1, true)
        #expect(h.queues[1].waitForUsed(1) == [DriverQueue.Used(head: eventBuffer, length: 1)])
        #expect(h.queues[1].reply(of: eventBuffer).first == 7)
    }

    // Ring states: without VHOST_USER_F_PROTOCOL_FEATURES there is no SET_VRING_ENABLE; rings start enabled.
    @Test func withoutProtocolFeaturesRingsAreEnabled() throws {
        let h = try Harness(.embedded)
        try h.start(features: h.allFeatures & ~VhostUserSpec.VHOST_USER_F_PROTOCOL_FEATURES)
        #expect(h.roundTrip([5, 6]).1 == [6, 5])
        #expect(h.device.processed == 1)
    }

    // GET_VRING_BASE stops the ring and returns the next avail index; a stopped ring is not processed.
    // Spec: vhost-user.rst "Ring states": a stopped ring is not processed.
    @Test func getVringBaseMidStream() throws {
        let h = try Harness(.embedded)
        try h.start()
        let q = h.queues[0]
        for _ in 0..<5 { _ = h.roundTrip([1]) }
        #expect(try h.frontend.getVringBase(0) == 5)
        q.add(readable: [[1]], writable: [1])
        q.kickNow()
        // A barrier after that kick: an event delivered on queue 1. The loop handles the kicks of a turn
        // before it services on-demand queues, and this kick came first, so once the event is used any
        // handling of the kick is over.
        h.queues[1].add(readable: [], writable: [8])
        h.queues[1].kickNow()  // starts the event queue
        h.device.post([9])
        h.engine.waker.wake()
        #expect(h.queues[1].waitForUsed(1).first?.length == 1)
        #expect(q.collectUsed().isEmpty)
        #expect(h.device.processed == 5 + 1)  // the five round trips and the event
    }

    // A pause (stop, then start at the same bases) keeps device state; chains made available
    // while stopped are handled when the ring is enabled again.
    // Spec: vhost-user.rst "Ring states"; docs/vhost-user.md "When the device is reset" (a pause is not a reset).
    @Test func pauseKeepsState() throws {
        let h = try Harness(.embedded)
        try h.start()
        _ = h.roundTrip([1])
        let bases = try h.frontend.stop(queues: h.queues)
        #expect(bases == [1, 0])
        h.queues[0].add(readable: [[4, 2]], writable: [2])
        try h.frontend.start(features: h.allFeatures, memory: [h.memory], queues: h.queues,
                             bases: bases.map { UInt16($0) })
        #expect(h.queues[0].waitForUsed(1).first?.length == 2)
        #expect(h.device.resets == 0)
        #expect(h.engine.counters.guestResetsDetected == 0)
    }

    // QEMU's generic device sends no RESET_DEVICE: a restart at a different base is a guest reset.
    // Spec: docs/vhost-user.md "When the device is reset".
    @Test func guestResetDetectedFromBase() throws {
        let h = try Harness(.embedded)
        try h.start()
        _ = h.roundTrip([1])
        h.device.post([1])
        try h.frontend.stop(queues: h.queues)
        let fresh = try (0..<2).map { try DriverQueue(memory: h.memory, index: $0, size: 256) }
        try h.frontend.start(features: h.allFeatures, memory: [h.memory], queues: fresh)
        #expect(h.device.resets == 1)
        #expect(h.engine.counters.guestResetsDetected == 1)
        fresh[0].add(readable: [[1, 2]], writable: [2])
        fresh[0].kickNow()
        #expect(fresh[0].waitForUsed(1).first?.length == 2)
    }

    // Spec: vhost-user.rst VHOST_USER_RESET_DEVICE.
    @Test func resetDeviceMessage() throws {
        let h = try Harness(.embedded)
        try h.start()
        #expect(try h.frontend.sendAcked(.resetDevice))
        #expect(h.device.resets == 1)
        #expect(try h.frontend.getStatus() == 0)
    }

    // An unrecoverable ring error stops the queue, signals its error eventfd and sets DEVICE_NEEDS_RESET.
    // Spec: docs/vhost-user.md "Rings" (a ring that cannot be trusted stops) and vhost-user.rst VHOST_USER_SET_VRING_ERR.
    @Test(arguments: [true, false])
    func ringErrorsStopTheQueue(jump: Bool) throws {
        let h = try Harness(.embedded)
        try h.start()
        let q = h.queues[0]
        if jump {
            q.setAvailIndex(q.availIndex &+ 300)  // moves by more than the queue size
        } else {
            q.add(readable: [[1]], writable: [1], publish: false)
            let slot = h.memory.pointer(q.availRing + 4 + UInt64(2 * (Int(q.availIndex) % q.size)))
            slot.storeBytes(of: UInt16(999).littleEndian, as: UInt16.self)  // head beyond the queue
            q.setAvailIndex(q.availIndex &+ 1)
        }
        q.kickNow()
        #expect(q.waitForError())  // vhost-user.rst: the error eventfd of the stopped ring is signalled
        #expect(try h.frontend.getStatus() & DeviceStatus.needsReset != 0)
        #expect(h.engine.counters.ringErrors == 1)
        #expect(q.usedIndex == 0)
        // The other queue and the connection still work.
        #expect(try h.frontend.getFeatures() != 0)
    }

    // On-demand queues: posted buffers wait until the device has something to write; a wake-up from
    // another thread delivers it.
    // Spec: docs/vhost-user.md "How a device plugs in": .onDemand queues take chains only while the device has work.
    @Test func onDemandQueue() throws {
        let h = try Harness(.embedded)
        try h.start()
        let events = h.queues[1]
        for _ in 0..<4 { events.add(readable: [], writable: [8]) }
        events.kickNow()
        #expect(events.waitForKickConsumed())
        try h.frontend.sync()  // the kick's turn is over
        #expect(events.collectUsed().isEmpty)
        h.device.post([1, 2, 3])
        h.engine.waker.wake()
        let used = events.waitForUsed(1)
        #expect(used.first?.length == 3)
        #expect(events.reply(of: used.first!.head).prefix(3) == [1, 2, 3])
        #expect(events.waitForCall())
        // Two more, then nothing is consumed beyond what was pending.
        h.device.post([4]); h.device.post([5])
        h.engine.waker.wake()
        #expect(events.waitForUsed(2).count == 2)
        try h.frontend.sync()  // the turn that used those two is over: it would have used any others by now
        #expect(events.collectUsed().isEmpty)
    }

    // Memory table changes while rings run: a new region is usable, removing the ring's region stops the ring.
    // Spec: vhost-user.rst VHOST_USER_ADD_MEM_REG / REM_MEM_REG; docs/vhost-user.md "Guest memory".
    @Test func memoryRegionsChangeWhileRunning() throws {
        let h = try Harness(.embedded)
        try h.start()
        let extra = try SharedMemory(size: 1 << 20, guestPhysicalAddress: 0x2_0000_0000, side: h.side)
        #expect(try h.frontend.addMemoryRegion(extra))
        #expect(try h.frontend.addMemoryRegion(extra) == false)  // overlaps itself
        // A chain whose buffers live in the new region.
        let input = extra.allocate(4), output = extra.allocate(4)
        extra.write([1, 2, 3, 4], at: input)
        let q = h.queues[0]
        q.writeDescriptor(100, .init(address: input, length: 4, flags: DriverQueue.flagNext, next: 101))
        q.writeDescriptor(101, .init(address: output, length: 4, flags: DriverQueue.flagWrite))
        q.publish(100)
        q.kickNow()
        #expect(q.waitForUsed(1).first?.length == 4)
        #expect(extra.read(4, at: output) == [4, 3, 2, 1])
        #expect(try h.frontend.removeMemoryRegion(extra))
        #expect(try h.frontend.removeMemoryRegion(extra) == false)
        // Now the same chain points outside guest memory: a bad chain, not a crash.
        q.publish(100)
        q.kickNow()
        #expect(q.waitForUsed(1).first?.length == 0)
        // Removing the ring's own region stops the ring.
        #expect(try h.frontend.removeMemoryRegion(h.memory))
        #expect(try h.frontend.getStatus() & DeviceStatus.needsReset != 0)
    }

    // Spec: docs/vhost-user.md "Validation before dispatch" (3).
    @Test func queueSetupValidation() throws {
        let h = try Harness(.embedded)
        try h.frontend.initialize(queues: h.queues)
        #expect(try h.frontend.sendAcked(.setVringNum, h.frontend.vringState(0, 100)) == false)   // not a power of 2
        #expect(try h.frontend.sendAcked(.setVringNum, h.frontend.vringState(0, 2048)) == false)  // above the device's max
        #expect(try h.frontend.sendAcked(.setVringNum, h.frontend.vringState(5, 256)) == false)   // no such queue
        #expect(try h.frontend.sendAcked(.setVringBase, h.frontend.vringState(0, 0x10000)) == false)
        #expect(try h.frontend.sendAcked(.setVringKick, TestFrontend.bytes(UInt64(1) << 9), fds: [h.queues[0].kick.rawValue]) == false)
        #expect(try h.frontend.sendAcked(.setVringNum, h.frontend.vringState(0, 256)))
    }
}
