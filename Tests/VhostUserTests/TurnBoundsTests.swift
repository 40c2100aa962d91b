import Testing
@testable import VhostUser
import VhostUserTestSupport

/// Bounded work per turn (issue 13 §2): however many chains the guest makes available at once, one
/// device call (one lock hold in the daemon) takes at most `lockBatchChains` of them, so the control
/// socket never waits behind a whole ring; and a front-end message sent meanwhile is answered.
@Suite struct TurnBoundsTests {
    @Test func oneDeviceCallTakesABoundedBatch() throws {
        let h = try Harness(queueSize: 1024)
        try h.start()
        let q = h.queues[0]
        let heads = (0..<1000).map { i in q.add(readable: [[UInt8(i & 0xff), 1]], writable: [2], indirect: true, publish: false) }
        q.publish(heads)
        q.kickNow()
        let used = q.waitForUsed(1000)
        #expect(used.count == 1000)
        #expect(used.map(\.head) == heads, "§2.7.8: chains complete in the order they were made available")
        #expect(h.device.mostChainsPerCall == VhostUserBackend.lockBatchChains)
    }

    @Test func warningsFromInputAreRateLimited() {
        var limiter = LogRateLimiter(burst: 3, window: .seconds(10))
        let start = ContinuousClock.now
        let admitted = (0..<10).map { _ in limiter.admit(at: start).admitted }
        #expect(admitted == [true, true, true] + Array(repeating: false, count: 7))
        #expect(limiter.takeExpiredSuppressions(at: start + .seconds(1)) == nil, "the window is still open")
        // The next window: the first warning carries the count of those dropped before it.
        let next = limiter.admit(at: start + .seconds(11))
        #expect(next.admitted && next.suppressedBefore == 7)
        #expect(limiter.totalSuppressed == 7)
        for _ in 0..<5 { _ = limiter.admit(at: start + .seconds(12)) }
        #expect(limiter.takeExpiredSuppressions(at: start + .seconds(25)) == 3)
        #expect(limiter.takeExpiredSuppressions(at: start + .seconds(26)) == nil, "reported once")
    }
}
