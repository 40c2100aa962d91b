import Testing

@testable import VhostUserCore
import VhostUserTestSupport

/// Bounded work per turn (issue 13 §2): however many chains the guest makes available at once, one
/// device call (one lock hold in the daemon) takes at most `lockBatchChains` of them, so the control
/// socket never waits behind a whole ring; and a front-end message sent meanwhile is answered.
@Suite struct TurnBoundsTests {
    @Test func oneDeviceCallTakesABoundedBatch() throws {
        let h = try Harness(.embedded, queueSize: 1024)
        try h.start()
        let q = h.queues[0]
        let heads = (0..<1000).map { i in q.add(readable: [[UInt8(i & 0xff), 1]], writable: [2], indirect: true, publish: false) }
        q.publish(heads)
        q.kickNow()
        let used = q.waitForUsed(1000)
        #expect(used.count == 1000)
        #expect(used.map(\.head) == heads, "§2.7.8: chains complete in the order they were made available")
        #expect(h.device.mostChainsPerCall == VhostUserEngine.lockBatchChains)
    }

    // §2.7.5.3.1: a driver MUST NOT create a chain longer than the queue size. An indirect table may
    // hold up to 32,768 entries; a chain longer than the ring is refused (used length 0, nothing
    // written), which bounds what one chain costs to walk. One exactly as long as the ring is served.
    @Test func chainsLongerThanTheQueueAreRefused() throws {
        let h = try Harness(.embedded, queueSize: 256)
        try h.start()
        let q = h.queues[0]
        let longest = q.add(readable: (0..<255).map { [UInt8($0)] }, writable: [255], indirect: true)
        q.kickNow()
        #expect(q.waitForUsed(1) == [DriverQueue.Used(head: longest, length: 255)])
        #expect(q.reply(of: longest) == (0..<255).reversed().map { UInt8($0) })
        let tooLong = q.add(readable: (0..<256).map { [UInt8($0)] }, writable: [256], indirect: true)
        q.kickNow()
        #expect(q.waitForUsed(1) == [DriverQueue.Used(head: tooLong, length: 0)])
        #expect(q.reply(of: tooLong) == [UInt8](repeating: 0xAA, count: 256), "nothing written")
        #expect(h.engine.counters.badChains == 1 && h.engine.counters.ringErrors == 0)
        let (used, reply) = h.roundTrip([1, 2])
        #expect(used?.length == 2 && reply == [2, 1])
    }

    // A guest that sends nothing but bad chains (§2.7.5.3.1: here, chains longer than the queue) gets
    // each one completed with used length 0, but only the first 20 are logged in the minute; the rest
    // are counted, so the log cannot grow with what the guest sends.
    @Test func badChainFloodLogsABoundedNumberOfWarnings() throws {
        let h = try Harness(.embedded, queueSize: 256)
        try h.start()
        let q = h.queues[0]
        for _ in 0..<5 {
            for _ in 0..<20 { q.add(readable: (0..<256).map { [UInt8($0)] }, writable: [4], indirect: true) }
            q.kickNow()
            #expect(q.waitForUsed(20).allSatisfy { $0.length == 0 })
        }
        #expect(h.engine.counters.badChains == 100)
        #expect(h.engine.counters.warningsSuppressed == 80)
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
