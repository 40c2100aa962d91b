import Testing

@testable import VhostUserCore
import VhostUserTestSupport

/// Resets and rings that the front-end rewrites (vhost-user.rst RESET_DEVICE, SET_STATUS and ring
/// states; virtio 1.x §2.4 device reset, §2.7 split rings), on the engine's own turn order.
@Suite struct ResetTests {
    /// Opens the polling window with requests 20 µs apart, so that the next turn reads the rings
    /// before it reads the front-end's messages.
    private func openWindow(_ h: Harness) {
        let q = h.queues[0]
        for i in 0..<5 {
            h.driver.host.advance(by: .microseconds(20))
            q.add(readable: [[UInt8(i)]], writable: [1])
            q.kickNow()
            h.driver.step()
            _ = q.collectUsed()
        }
    }

    // Nothing obliges a front-end to wait for RESET_DEVICE's reply before it rewrites its rings
    // (vhost-user.rst), so a turn may read the rewritten ring (avail index back at 0, §2.7.13.3 would
    // call that a jump past the queue size) before the message. The message explains it: no ring
    // error, the reset happens, and the restarted ring answers its first request in slot 0.
    @Test func ringRewrittenBeforeTheResetIsReadIsExplained() throws {
        let h = try Harness(.embedded, pollMaximum: 100_000)
        try h.start()
        let q = h.queues[0]
        openWindow(h)
        #expect(h.engine.polling.window > 0)
        try h.frontend.send(.resetDevice)  // waiting, unread, as the loop polls
        for queue in h.queues { queue.rewriteForRestart() }
        h.driver.host.advance(by: .microseconds(20))
        h.driver.step()
        #expect(h.engine.counters.ringErrorsExplained == 1)
        #expect(h.engine.counters.ringErrors == 0, "a rewritten ring during a reset is not a ring error")
        #expect(h.device.resets == 1)
        #expect(!q.errorSignalled())
        #expect(h.engine.deviceStatus & DeviceStatus.needsReset == 0)
        try h.frontend.start(features: h.allFeatures, memory: [h.memory], queues: h.queues)
        let head = q.add(readable: [[7, 8, 9]], writable: [3])
        q.kickNow()
        #expect(q.waitForUsed(1) == [DriverQueue.Used(head: head, length: 3)])
        #expect(q.reply(of: head) == [9, 8, 7])
        #expect(q.usedIndex == 1)
    }

    // The control: the same jump with no message waiting is a corrupt ring (§2.7.13.3: the driver
    // MUST NOT make more than the queue size available). The queue stops, DEVICE_NEEDS_RESET is set,
    // and RESET_DEVICE brings back a fresh device.
    @Test(arguments: [true, false])
    func corruptRingStopsTheQueueUntilReset(polling: Bool) throws {
        let h = try Harness(.embedded, pollMaximum: polling ? 100_000 : 0)
        try h.start()
        let q = h.queues[0]
        if polling { openWindow(h) }
        q.setAvailIndex(q.availIndex &+ 1000)
        q.kickNow()
        #expect(q.waitForError(), "the error eventfd is signalled when the queue stops")
        #expect(h.engine.counters.ringErrors == 1 && h.engine.counters.ringErrorsExplained == 0)
        #expect(h.engine.deviceStatus & DeviceStatus.needsReset != 0)
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
        let h = try Harness(.embedded, pollMaximum: polling ? 100_000 : 0)
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
