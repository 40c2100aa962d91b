import Glibc
import Synchronization
import TestSupport
import Testing
@testable import VhostUser
@testable import VhostUserCore
import VhostUserTestSupport

/// Polling in the Posix loop: the spin over a real ring on its own thread, where a polled ring must
/// suppress kicks (virtio 1.x §2.7.10) and re-enable them before the loop blocks, so that no request is
/// ever left waiting for a kick the driver was told not to send; the spin's yielding; a pause message
/// racing the spin. (The window policy and its effect turn by turn: VhostUserCoreTests' PollingTests.)
@Suite struct PollingTests {
    // §2.7.10: while the engine polls, the driver is told not to kick (EVENT_IDX: avail_event one
    // behind the next index; otherwise VIRTQ_USED_F_NO_NOTIFY), and a request published without a
    // kick is served. Each turn that ends with a kick-served request grows the window, so this holds
    // however loaded the machine is; once idle past the window, kicks are asked for again.
    @Test(arguments: [true, false])
    func polledRingServesRequestsWithoutKicks(eventIndex: Bool) throws {
        let h = try Harness(.posix, pollMaximum: 100_000_000)  // up to 100 ms
        var features = h.allFeatures
        if !eventIndex { features &= ~VirtioSpec.VIRTIO_F_EVENT_IDX }
        try h.start(features: features)
        let q = h.queues[0]
        #expect(Self.serveThreeWithoutKicks(q) == 3)
        #expect(h.engine.counters.polledTurns > 0)
        // Idle past the largest window (100 ms): the loop blocks, and only after asking for kicks again.
        #expect(waitUntil(.seconds(5)) { q.kicksWanted(eventIndex: eventIndex) }, "kicks still off once idle")
        let (used, reply) = h.roundTrip([3, 4])
        #expect(used?.length == 2 && reply == [4, 3])
    }

    /// Publishes echo requests without kicking until three were served that way (at most 40 tries; a
    /// request the window missed is kicked and must then be served); returns how many were served unkicked.
    static func serveThreeWithoutKicks(_ q: DriverQueue) -> Int {
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
        return servedWithoutKick
    }

    // docs/vhost-user.md "Event loop": past --poll-yield-us the spin yields the core between checks; it
    // still finds requests published without a kick, and a device reset keeps the setting.
    @Test func yieldingSpinStillServesRequestsWithoutKicks() throws {
        let polling = AdaptivePolling(maximumNanoseconds: 100_000_000, window: 100_000_000, yieldAfterNanoseconds: 0)
        #expect(polling.restarted == AdaptivePolling(maximumNanoseconds: 100_000_000, yieldAfterNanoseconds: 0))
        let h = try Harness(.posix, polling: polling)
        try h.start(features: h.allFeatures)
        let q = h.queues[0]
        #expect(Self.serveThreeWithoutKicks(q) == 3)
        #expect(h.engine.polling.yieldAfter == 0)
    }

    // Ring states ("Stopping a ring": GET_VRING_BASE) + §2.7.10: a pause that arrives while the loop
    // polls the ring, with kicks off, must find them back on when the ring stops, or a driver that
    // honours the suppression would never kick the resumed ring.
    //
    // Each attempt first shows that the pause really arrived while kicks were off. The engine turns
    // kicks back on before it reads any message, and a stopped ring never turns them off, so "do not
    // kick" read in the ring after GET_VRING_BASE is in the socket means the message waited there with
    // kicks off. Without EVENT_IDX that is VIRTQ_USED_F_NO_NOTIFY, set only while kicks are off. With
    // EVENT_IDX it is avail_event one behind avail.idx once the device has consumed everything, which
    // kicks-on also writes just before the device pops the last entry: so the driver first waits for
    // the call of that entry (used_event asks for it), which the device makes after its last write to
    // avail_event in that turn. Then requests keep coming, unkicked, while the message waits: the loop
    // reads it in the middle of finding work by polling, where it must turn kicks back on first.
    @Test(arguments: [true, false])
    func pauseWhilePollingLeavesKicksOn(eventIndex: Bool) throws {
        let h = try Harness(.posix, pollMaximum: 100_000_000)
        var features = h.allFeatures
        if !eventIndex { features &= ~VirtioSpec.VIRTIO_F_EVENT_IDX }
        try h.start(features: features)
        let q = h.queues[0]
        var pausedWithKicksOff = false
        var attempts = 0
        while !pausedWithKicksOff && attempts < 20 {
            attempts += 1
            // Requests 300 µs apart (the driver's own pace, not a wait for any state): each one that
            // arrives after the window, and within the maximum, doubles it, until the window covers
            // the gap and the loop finds requests by polling, kicks off.
            for i in 0..<20 {
                usleep(300)
                _ = h.roundTrip([UInt8(i)])
            }
            _ = q.wasCalled()
            q.setUsedEvent(q.usedIndex)  // EVENT_IDX: call me when the next entry is used
            let head = q.add(readable: [[1, 2]], writable: [2])  // published, not kicked
            guard q.waitForUsed(1, timeout: .milliseconds(50)).first?.head == head else {
                q.kickNow()  // the window had closed: not polling now; try again
                _ = q.waitForUsed(1)
                continue
            }
            #expect(q.waitForCall(), "the call for a used entry the driver asked to hear about")
            try h.frontend.send(.getVringBase, h.frontend.vringState(0, 0))
            let kicksOffAtPause = !q.kicksWanted(eventIndex: eventIndex)
            // Requests keep coming, never kicked, until the pause stops the ring: the loop keeps finding
            // work by polling while the message waits, and reads it in the middle of that.
            for i in 0..<1000 {
                let head = q.add(readable: [[UInt8(i & 0xff), 4]], writable: [2])
                guard q.waitForUsed(1, timeout: .milliseconds(2), spinning: true).first?.head == head else { break }
            }
            let reply = try h.frontend.receiveReply(to: .getVringBase)
            let base = UInt16(truncatingIfNeeded: reply.count == 8 ? reply.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) } : 0)
            let eventBase = UInt16(try h.frontend.getVringBase(1))
            try h.frontend.setStatus(0)
            // Kicks asked for again before the ring stopped: at the returned base (the last request may or
            // may not have been consumed), or VIRTQ_USED_F_NO_NOTIFY clear.
            let kicksOn = eventIndex ? q.availEvent == base : q.usedFlags & VirtioSpec.VIRTQ_USED_F_NO_NOTIFY == 0
            #expect(kicksOn, "kicks must be asked for again before the ring stops")
            try h.frontend.start(features: features, memory: [h.memory], queues: h.queues, bases: [base, eventBase])
            q.kickNow()  // requests published after the pause are served once the ring runs again
            #expect(waitUntil(.seconds(5)) { q.usedIndex == q.availIndex })
            _ = q.collectUsed()
            pausedWithKicksOff = kicksOffAtPause
        }
        #expect(pausedWithKicksOff, "no pause arrived while kicks were off in \(attempts) attempts")
        let (used, reply) = h.roundTrip([5, 6])
        #expect(used?.length == 2 && reply == [6, 5])
        #expect(h.device.resets == 0)
    }
}
