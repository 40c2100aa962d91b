import Testing
@testable import VhostUser
@testable import VhostUserCore
import VhostUserTestSupport

/// Resets and rings that the front-end rewrites (vhost-user.rst, RESET_DEVICE and ring states;
/// virtio 1.x §2.4 device reset, §2.7 split rings). Nothing obliges a front-end to wait for a reply
/// to RESET_DEVICE before it rewrites its rings, so the loop may read the rewritten ring (avail and
/// used indices back at 0) before it reads the message. That ring must not stop the queue, and the
/// restarted device must behave exactly like a fresh one.
@Suite struct ResetTests {
    /// Polling on (the loop reads the rings between socket checks) or off.
    @Test(arguments: [(true, true), (true, false), (false, true)])
    func resetDeviceWithRingsRewrittenAtOnceRestartsCleanly(polling: Bool, eventIndex: Bool) throws {
        // Polling: the window starts (and, with requests closer than it, stays) at 100 ms, so the loop
        // is spinning on the rings when the reset comes: what a busy guest makes it do.
        let h = try Harness(.posix, polling: AdaptivePolling(maximumNanoseconds: polling ? 100_000_000 : 0,
                                                     window: polling ? 100_000_000 : 0))
        var features = h.allFeatures
        if !eventIndex { features &= ~TransportFeatures.eventIndex }
        try h.start(features: features)
        let q = h.queues[0]
        var raced = false
        // The race (ring rewritten, RESET_DEVICE still unread) depends on where the loop is; each
        // round is a full reset and restart, checked on its own, until the race has been hit.
        for round in 0..<50 where !raced || round < 2 {
            for i in 0..<40 { _ = h.roundTrip([UInt8(i), UInt8(round)]) }  // back to back: the loop polls
            let explainedBefore = h.engine.counters.ringErrorsExplained
            let resetsBefore = h.device.resets
            try h.frontend.send(.resetDevice)  // no reply awaited, as a front-end may do
            for queue in h.queues { queue.rewriteForRestart() }
            try h.frontend.start(features: features, memory: [h.memory], queues: h.queues)
            // The first request after the restart is answered in slot 0 with its own head and length.
            let head = q.add(readable: [[7, 8, 9]], writable: [3])
            q.kickNow()
            let used = q.waitForUsed(1)
            try #require(used.count == 1, "round \(round): \(used.count) used entries for one request")
            #expect(used[0] == DriverQueue.Used(head: head, length: 3), "round \(round)")
            #expect(q.reply(of: head) == [9, 8, 7])
            #expect(q.usedIndex == 1)
            #expect(h.device.resets == resetsBefore + 1)
            #expect(h.engine.deviceStatus & DeviceStatus.needsReset == 0)
            #expect(!q.errorSignalled())
            if h.engine.counters.ringErrorsExplained > explainedBefore { raced = true }
        }
        #expect(h.engine.counters.ringErrors == 0, "a rewritten ring during a reset is not a ring error")
        if polling {
            #expect(raced, "the loop never read a rewritten ring before the reset: the test did not test the race")
        }
    }

    // A ring that really is corrupt (avail.idx beyond the ring size, §2.7.13.3: the driver MUST NOT
    // make more than the queue size available) still stops the queue, with no message to explain it.
    @Test(arguments: [true, false])
    func corruptRingStillStopsTheQueue(polling: Bool) throws {
        let h = try Harness(.posix, pollMaximum: polling ? 100_000_000 : 0)
        try h.start()
        let q = h.queues[0]
        for i in 0..<20 { _ = h.roundTrip([UInt8(i)]) }
        q.setAvailIndex(q.availIndex &+ 1000)
        q.kickNow()
        #expect(q.waitForError(), "the error eventfd is signalled when the queue stops")
        #expect(h.engine.counters.ringErrors == 1)
        #expect(h.engine.deviceStatus & DeviceStatus.needsReset != 0)
        // RESET_DEVICE brings it back as a fresh device.
        try h.frontend.send(.resetDevice)
        for queue in h.queues { queue.rewriteForRestart() }
        try h.frontend.start(features: h.allFeatures, memory: [h.memory], queues: h.queues)
        let (used, reply) = h.roundTrip([1, 2])
        #expect(used?.length == 2 && reply == [2, 1])
        #expect(h.engine.deviceStatus & DeviceStatus.needsReset == 0)
    }

    // vhost-user.rst: SET_STATUS 0 is how QEMU stops the device (VM pause, the stop before migration);
    // it is not a reset, and the device keeps its state across it, polling or not.
    @Test(arguments: [true, false])
    func setStatusZeroIsNotAReset(polling: Bool) throws {
        let h = try Harness(.posix, pollMaximum: polling ? 100_000_000 : 0)
        try h.start()
        for i in 0..<20 { _ = h.roundTrip([UInt8(i)]) }
        let bases = try h.frontend.stop(queues: h.queues)  // disable, GET_VRING_BASE, SET_STATUS 0
        try h.frontend.start(features: h.allFeatures, memory: [h.memory], queues: h.queues, bases: bases.map { UInt16($0) })
        let (used, reply) = h.roundTrip([3, 4])
        #expect(used?.length == 2 && reply == [4, 3])
        #expect(h.device.resets == 0)
        #expect(h.engine.counters.guestResetsDetected == 0)
    }
}
