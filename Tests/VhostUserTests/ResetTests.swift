import Testing
@testable import VhostUser
@testable import VhostUserCore
import VhostUserTestSupport

/// The reset race on the Posix loop with real threads (vhost-user.rst RESET_DEVICE; virtio 1.x §2.4,
/// §2.7): nothing obliges a front-end to wait for a reply to RESET_DEVICE before it rewrites its rings,
/// so the loop, spinning on the rings, may read the rewritten ring before the message. That ring must
/// not stop the queue, and the restarted device must behave exactly like a fresh one. The same logic
/// on the engine's own turn order, deterministically, and the corrupt-ring control: VhostUserCoreTests.
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
}
