import Testing

@testable import VhostUserCore
import VhostUserTestSupport

/// Completions a device keeps back until another process acknowledged the request's effect
/// (docs/frontend-protocol.md §6 rules 1 and 6): the used entry waits, no later chain is taken from
/// the ring (head-of-line), an acknowledgement on a watched eventfd releases them in ring order, and
/// GET_VRING_BASE completes a waiting request so that the front-end finds every request it took done.
@Suite struct WaitingCompletionTests {
    /// A started device with waits on, and two requests in one kick: the first waits, the second follows it.
    static func twoRequestsTheFirstWaiting() throws -> (Harness, first: UInt16, second: UInt16) {
        let h = try Harness(.embedded)
        h.device.enableWaits()
        try h.start()
        let q = h.queues[0]
        let first = q.add(readable: [[EchoDevice.waitMarker, 1]], writable: [2], publish: false)
        let second = q.add(readable: [[2, 3]], writable: [2], publish: false)
        q.publish([first, second])
        q.kickNow()
        #expect(q.waitForKickConsumed())
        try h.frontend.sync()
        return (h, first, second)
    }

    @Test func aWaitingCompletionHoldsItsRingUntilAcknowledged() throws {
        let (h, first, second) = try Self.twoRequestsTheFirstWaiting()
        let q = h.queues[0]
        #expect(q.usedIndex == 0, "the waiting completion is not published")
        #expect(h.device.processed == 1, "no chain after the waiting one is taken (head-of-line)")
        h.device.acknowledge()
        #expect(q.waitForUsed(2) == [DriverQueue.Used(head: first, length: 2), DriverQueue.Used(head: second, length: 2)])
        #expect(q.reply(of: first) == [1, EchoDevice.waitMarker] && q.reply(of: second) == [3, 2])
        #expect(q.waitForCall(), "the driver is called for the released completions")
    }

    @Test func getVringBaseCompletesAWaitingRequest() throws {
        let (h, first, second) = try Self.twoRequestsTheFirstWaiting()
        let q = h.queues[0]
        let bases = try h.frontend.stop(queues: h.queues)
        #expect(bases[0] == 1, "only the waiting request was taken")
        #expect(q.collectUsed() == [DriverQueue.Used(head: first, length: 2)], "completed before the ring stopped")
        #expect(h.device.forcedCompletions == 1)
        // The ring resumes at the untaken request.
        try h.frontend.start(features: h.allFeatures, memory: [h.memory], queues: h.queues, bases: bases.map { UInt16($0) })
        #expect(q.waitForUsed(1) == [DriverQueue.Used(head: second, length: 2)])
    }

    // The watch list is the device's, read again after a reset: acknowledgements still arrive.
    @Test func watchedDescriptorsSurviveAReset() throws {
        let h = try Harness(.embedded)
        h.device.enableWaits()
        try h.start()
        try h.frontend.send(.resetDevice)
        for queue in h.queues { queue.rewriteForRestart() }
        try h.frontend.start(features: h.allFeatures, memory: [h.memory], queues: h.queues)
        let q = h.queues[0]
        let head = q.add(readable: [[EchoDevice.waitMarker, 9]], writable: [2])
        q.kickNow()
        #expect(q.waitForKickConsumed())
        try h.frontend.sync()
        #expect(q.usedIndex == 0)
        h.device.acknowledge()
        #expect(q.waitForUsed(1) == [DriverQueue.Used(head: head, length: 2)])
    }

    // docs/vhost-user.md "How a device plugs in" (`watchedDescriptors`): watched only while a front-end is
    // connected; a new connection watches them again.
    @Test func deviceDescriptorsAreWatchedOnlyWhileConnected() throws {
        let h = try Harness(.embedded)
        try h.start()
        func watched() -> Bool { h.driver.host.watched.contains { $0.descriptor == h.device.acknowledgement } }
        #expect(watched())
        h.frontend.disconnect()
        #expect(!watched(), "no front-end: nothing to serve what it would report")
        h.driver.connect()
        #expect(watched())
    }
}
