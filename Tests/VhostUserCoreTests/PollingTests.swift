import Synchronization
import Testing

@testable import VhostUserCore
import VhostUserTestSupport

/// Bounded adaptive polling, deterministic: the window policy on its own, then the engine on the embedded
/// driver, whose clock moves only when the test says (the Posix spin, its yielding and its races with
/// messages are in VhostUserTests' PollingTests).
@Suite struct PollingTests {
    // Spec: docs/vhost-user.md "Event loop", bounded adaptive polling: the window policy.
    @Test func windowGrowsWhileWorkArrivesJustAfterItAndShrinksWhenIdle() {
        var polling = AdaptivePolling(maximumNanoseconds: 100_000)
        #expect(polling.window == 0)
        polling.record(waited: 20_000)   // work 20 µs after we started waiting: start polling
        #expect(polling.window == 4_000)
        for _ in 0..<3 { polling.record(waited: 20_000) }
        #expect(polling.window == 32_000)  // 8k, 16k, 32k: now covers the gap
        polling.record(waited: 20_000)
        #expect(polling.window == 32_000)  // inside the window: unchanged
        polling.record(waited: 5_000_000)  // idle for 5 ms: poll less
        #expect(polling.window == 16_000)
        for _ in 0..<3 { polling.record(waited: 5_000_000) }
        #expect(polling.window == 0)       // 8k, 4k, then below the initial window: off
        for _ in 0..<10 { polling.record(waited: 90_000) }
        #expect(polling.window == 100_000) // never beyond the maximum
    }

    // Spec: docs/vhost-user.md "Event loop": --poll-max-us 0 never polls.
    @Test func offWhenTheMaximumIsZero() {
        var polling = AdaptivePolling(maximumNanoseconds: 0)
        for _ in 0..<5 { polling.record(waited: 1_000) }
        #expect(polling.window == 0)
    }

    // docs/vhost-user.md "Event loop" + virtio 1.4 §2.7.10: the window follows the gaps between requests
    // on the engine's clock. Requests 20 µs apart open it (4, 8, 16, 32 µs); with it open, a request the
    // driver publishes without kicking is found by polling. Idle long past the maximum, the window closes:
    // an unkicked request then waits (nothing polls), kicks are asked for, and the kick serves it.
    @Test(arguments: [true, false])
    func windowFollowsTheGapsAndPollingServesUnkickedRequests(eventIndex: Bool) throws {
        let h = try Harness(.embedded, pollMaximum: 100_000)  // 100 µs
        var features = h.allFeatures
        if !eventIndex { features &= ~VirtioSpec.VIRTIO_F_EVENT_IDX }
        try h.start(features: features)
        let q = h.queues[0]
        for (i, expected) in [UInt64(4_000), 8_000, 16_000, 32_000, 32_000].enumerated() {
            h.driver.host.advance(by: .microseconds(20))
            let head = q.add(readable: [[UInt8(i), 1]], writable: [2])
            q.kickNow()
            h.driver.step()
            #expect(q.collectUsed().map(\.head) == [head])
            #expect(h.engine.polling.window == expected, "request \(i)")
        }
        let polledBefore = h.engine.counters.polledTurns
        h.driver.host.advance(by: .microseconds(20))
        let unkicked = q.add(readable: [[9, 8]], writable: [2])
        h.driver.step()
        #expect(q.collectUsed().map(\.head) == [unkicked], "found by polling, no kick")
        #expect(q.reply(of: unkicked) == [8, 9])
        #expect(h.engine.counters.polledTurns == polledBefore + 1)
        #expect(q.kicksWanted(eventIndex: eventIndex), "kicks are back on once the turn checks its descriptors")
        // Idle 5 ms, four times: 32 → 16 → 8 → 4 → closed.
        for _ in 0..<4 {
            h.driver.host.advance(by: .milliseconds(5))
            h.driver.step()
        }
        #expect(h.engine.polling.window == 0)
        let previous = q.availIndex
        let late = q.add(readable: [[7]], writable: [1])
        h.driver.step()
        #expect(q.collectUsed().isEmpty, "with the window closed nothing polls: the request waits for its kick")
        #expect(q.deviceWantsKick(since: previous, eventIndex: eventIndex), "the device asks for the kick")
        q.kickNow()
        h.driver.step()
        #expect(q.collectUsed().map(\.head) == [late])
    }
}
