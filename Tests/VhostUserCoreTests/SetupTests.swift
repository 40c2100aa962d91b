import Testing

@testable import VhostUserCore
import VhostUserEmbedded
import VhostUserTestSupport

/// Memory-table, ring-setup and back-end-channel messages (the listening socket: VhostUserTests).
@Suite struct SetupTests {
    // Spec: vhost-user.rst VHOST_USER_SET_BACKEND_REQ_FD and VHOST_USER_BACKEND_CONFIG_CHANGE_MSG: the
    // message goes on the channel the front-end gave last, a replaced channel is closed, and a request
    // without its descriptor is refused and changes nothing (the Posix socket side: PosixTransportTests).
    @Test func backendChannelCarriesConfigChange() throws {
        let h = try Harness(.embedded)
        try h.frontend.setProtocolFeatures(.supported)
        let host = h.driver.host
        let first = EmbeddedChannel(), second = EmbeddedChannel()
        #expect(try h.frontend.sendAcked(.setBackendReqFD, fds: [host.open(.channel(first)).rawValue]))
        #expect(host.engineHeld.count == 1)
        #expect(try h.frontend.sendAcked(.setBackendReqFD, fds: [host.open(.channel(second)).rawValue]))
        #expect(host.engineHeld.count == 1, "the replaced channel is closed")
        #expect(try h.frontend.sendAcked(.setBackendReqFD) == false)
        h.engine.notifyConfigChange()
        h.driver.run()
        #expect(first.messages.isEmpty)
        #expect(second.messages == [MessageHeader(request: BackendRequest.configChange.rawValue, flags: MessageHeader.version, size: 0).bytes])
    }

    // Spec: vhost-user.rst VHOST_USER_SET_MEM_TABLE; docs/vhost-user.md "Validation before dispatch" (3).
    @Test func memoryTableMessages() throws {
        let h = try Harness(.embedded)
        try h.frontend.initialize(queues: h.queues)
        #expect(try h.frontend.setMemTable([h.memory]))
        // Two regions that overlap are refused, and the old table stays.
        let twin = try SharedMemory(size: 4096, guestPhysicalAddress: h.memory.guestPhysicalAddress, side: h.side)
        #expect(try h.frontend.setMemTable([h.memory, twin]) == false)
        // A region of size 0, or one that wraps around 2^64.
        var zero = [1, 0, 0, 0, 0, 0, 0, 0] + h.memory.regionDescription
        zero.replaceSubrange(16..<24, with: [UInt8](repeating: 0, count: 8))
        #expect(try h.frontend.sendAcked(.setMemTable, zero, fds: [h.memory.descriptor.rawValue]) == false)
        var wrap = [1, 0, 0, 0, 0, 0, 0, 0] + h.memory.regionDescription
        wrap.replaceSubrange(8..<16, with: TestFrontend.bytes(UInt64.max - 10))
        #expect(try h.frontend.sendAcked(.setMemTable, wrap, fds: [h.memory.descriptor.rawValue]) == false)
        // Nine regions are more than SET_MEM_TABLE carries.
        let nine = [9, 0, 0, 0, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 9 * 32)
        #expect(try h.frontend.sendAcked(.setMemTable, nine) == false)
        // The table in place still works end to end.
        try h.frontend.start(features: h.allFeatures, memory: [h.memory], queues: h.queues)
        #expect(h.roundTrip([1, 2]).1 == [2, 1])
    }

    // Spec: virtio 1.4 §2.7 (ring alignment); docs/vhost-user.md "Rings": misaligned ring memory stops the queue.
    @Test func misalignedRingStopsTheQueue() throws {
        let h = try Harness(.embedded)
        try h.frontend.initialize(queues: h.queues)
        try h.frontend.setFeatures(h.allFeatures)
        try h.frontend.setMemTable([h.memory])
        let q = h.queues[0]
        try h.frontend.setVringNum(0, q.size)
        try h.frontend.setVringBase(0, 0)
        let a = q.userAddresses
        try h.frontend.setVringAddr(0, descriptors: a.descriptors + 8, used: a.used, avail: a.avail)
        try h.frontend.setVringFD(.setVringKick, 0, q.kick.rawValue)
        try h.frontend.setVringEnable(0, true)
        q.add(readable: [[1]], writable: [1])
        q.kickNow()
        #expect(q.waitForError())  // vhost-user.rst: the error eventfd of the stopped ring is signalled
        #expect(try h.frontend.getStatus() & DeviceStatus.needsReset != 0)  // (a round trip: the turn has ended)
        #expect(h.engine.counters.ringErrors == 1)
    }

    // Spec: docs/vhost-user.md "Validation before dispatch" (3) and vhost-user.rst VHOST_USER_SET_VRING_CALL (no-descriptor flag).
    @Test func ringMessagesNeedAStoppedRing() throws {
        let h = try Harness(.embedded)
        try h.start()
        _ = h.roundTrip([1])
        #expect(try h.frontend.sendAcked(.setVringNum, h.frontend.vringState(0, 128)) == false)
        #expect(try h.frontend.sendAcked(.setVringBase, h.frontend.vringState(0, 3)) == false)
        try h.frontend.send(.getVringBase, h.frontend.vringState(7, 0))
        #expect(try h.frontend.receiveReply(to: .getVringBase).isEmpty)  // no queue 7
        // SET_VRING_CALL with the "no descriptor" flag: the driver is not called, nothing breaks.
        try h.frontend.setVringFD(.setVringCall, 0, nil)
        try h.frontend.sync()  // every earlier message is handled, and the first round trip's call made
        _ = h.queues[0].wasCalled()  // consume the call of the first round trip
        #expect(h.roundTrip([1, 2]).1 == [2, 1])
        try h.frontend.sync()  // a call for that round trip, had there been one, would have been made by now
        #expect(!h.queues[0].wasCalled())
    }

    // Spec: vhost-user.rst VHOST_USER_RESET_OWNER (deprecated: ignored).
    @Test func resetOwnerIsIgnored() throws {
        let h = try Harness(.embedded)
        try h.start()
        #expect(try h.frontend.sendAcked(.resetOwner))
        #expect(h.roundTrip([3, 4]).1 == [4, 3])
    }
}
