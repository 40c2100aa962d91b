import Glibc
import Synchronization
import Testing
@testable import VhostUser
import VhostUserTestSupport

/// Bounded adaptive polling: the window policy on its own (deterministic), then the engine over a
/// real ring, where a polled ring must suppress kicks (virtio 1.x §2.7.10) and re-enable them before
/// the loop blocks, so that no request is ever left waiting for a kick the driver was told not to send.
@Suite struct PollingTests {
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

    @Test func offWhenTheMaximumIsZero() {
        var polling = AdaptivePolling(maximumNanoseconds: 0)
        for _ in 0..<5 { polling.record(waited: 1_000) }
        #expect(polling.window == 0)
    }

    // §2.7.10: while the engine polls, the driver is told not to kick (EVENT_IDX: avail_event one
    // behind the next index; otherwise VRING_USED_F_NO_NOTIFY), and a request published without a
    // kick is served. Each turn that ends with a kick-served request grows the window, so this holds
    // however loaded the machine is; once idle past the window, kicks are asked for again.
    @Test(arguments: [true, false])
    func polledRingServesRequestsWithoutKicks(eventIndex: Bool) throws {
        let h = try Harness(pollMaximum: 100_000_000)  // up to 100 ms
        var features = h.allFeatures
        if !eventIndex { features &= ~TransportFeatures.eventIndex }
        try h.start(features: features)
        let q = h.queues[0]
        var servedWithoutKick = 0
        for i in 0..<40 where servedWithoutKick < 3 {
            let head = q.add(readable: [[UInt8(i), 1]], writable: [2])
            if q.waitForUsed(1, timeout: .milliseconds(50)).first?.head == head {
                servedWithoutKick += 1
                #expect(q.reply(of: head) == [1, UInt8(i)])
            } else {
                q.kickNow()  // the window had closed: the kick path serves it
                #expect(q.waitForUsed(1).first?.head == head)
            }
        }
        #expect(servedWithoutKick == 3)
        #expect(h.backend.statistics.polledTurns > 0)
        // Idle past the largest window: the loop blocks, and only after asking for kicks again.
        usleep(300_000)
        if eventIndex {
            #expect(q.availEvent == q.availIndex)
        } else {
            #expect(q.usedFlags & 1 == 0)
        }
        let (used, reply) = h.roundTrip([3, 4])
        #expect(used?.length == 2 && reply == [4, 3])
    }

    // Ring states + §2.7.10: a pause (GET_VRING_BASE) that arrives while polling keeps finding work
    // (kicks off) must find them back on, or a driver that honours avail_event would never kick the
    // resumed ring. Requests keep flowing, unkicked, from another thread while the pause is sent.
    @Test func pauseWhilePollingLeavesKicksOn() throws {
        let h = try Harness(pollMaximum: 100_000_000)
        try h.start()
        let q = h.queues[0]
        for i in 0..<100 { _ = h.roundTrip([UInt8(i & 0xff)]) }  // back to back: the loop polls
        let stop = Atomic<Bool>(false)
        let box = UncheckedBox(value: q)
        let traffic = OSThread {
            var i: UInt8 = 0
            while !stop.load(ordering: .acquiring) {
                box.value.add(readable: [[i, 1]], writable: [2])  // published, never kicked
                _ = box.value.waitForUsed(1, timeout: .milliseconds(5), spinning: true)
                i &+= 1
            }
        }
        usleep(50_000)
        let bases = try h.frontend.stop(queues: h.queues, enableMessages: false)  // GET_VRING_BASE alone
        stop.store(true, ordering: .releasing)
        traffic.join()
        #expect(h.backend.statistics.polledTurns > 0)  // polling was engaged when the pause came
        #expect(q.availEvent == UInt16(bases[0]), "kicks must be asked for again before the ring stops")
        try h.frontend.start(features: h.allFeatures, memory: [h.memory], queues: h.queues, bases: bases.map { UInt16($0) })
        q.kickNow()  // requests published after the pause are served once the ring runs again
        let deadline = ContinuousClock.now + .seconds(5)
        while q.usedIndex != q.availIndex && ContinuousClock.now < deadline { usleep(100) }
        _ = q.collectUsed()
        let (used, reply) = h.roundTrip([5, 6])
        #expect(used?.length == 2 && reply == [6, 5])
        #expect(h.device.resets == 0)
    }
}
