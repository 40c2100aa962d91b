import PASIDAllocators
import Synchronization
import Testing
@_spi(Fuzzing) @testable import VirtioIOMMU

/// A store that works, except that giving an owner's PASIDs back fails while `releaseFails` is set.
final class ReleaseFailingStore: PASIDAllocator {
    let inner: InMemoryPASIDStore
    let releaseFails = Atomic<Bool>(true)

    init() throws { inner = try InMemoryPASIDStore() }

    var width: Int { inner.width }
    func allocate(owner: String, in range: ClosedRange<PASID>?) throws(PASIDStoreError) -> PASID {
        try inner.allocate(owner: owner, in: range)
    }
    func free(_ pasid: PASID, owner: String) throws(PASIDStoreError) { try inner.free(pasid, owner: owner) }
    func releaseAll(owner: String) throws(PASIDStoreError) -> Int {
        if releaseFails.load(ordering: .relaxed) { throw .storage("disk I/O error") }
        return try inner.releaseAll(owner: owner)
    }
    func setQuota(_ quota: Int, owner: String?) throws(PASIDStoreError) { try inner.setQuota(quota, owner: owner) }
    func allocations() throws(PASIDStoreError) -> [PASIDAllocation] { try inner.allocations() }
    func statistics() throws(PASIDStoreError) -> PASIDStoreStatistics { try inner.statistics() }
}

@Suite struct PASIDReleaseFailureTests {
    // docs/pasid-extension.md P6 and issue 13 ("never drop it silently"): when the store refuses to take
    // this VM's PASIDs back on reset, the reset still completes, the failure is counted and kept (typed)
    // for the daemon, and the next reset tries again.
    @Test func failedReleaseIsCountedKeptAndRetried() throws {
        let store = try ReleaseFailingStore()
        var device = makePASIDDevice(store: store, owner: "vm-a")
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        #expect(device.allocPASID() == (.ok, 1))
        #expect(device.allocPASID() == (.ok, 2))
        #expect(device.attachPASID(plainEndpoint, 1, to: 2) == .ok)
        #expect(device.counters.pasidReleaseFailures == 0 && device.lastPASIDReleaseFailure == nil)

        device.reset()
        #expect(device.counters.pasidReleaseFailures == 1)
        #expect(device.lastPASIDReleaseFailure == PASIDReleaseFailure(error: .storage("disk I/O error"), pasids: [1, 2]))
        #expect(device.domains.isEmpty && device.heldPASIDs.isEmpty)  // the rest of the reset happened (P6)
        #expect(try store.allocations().count == 2)                    // still in the store

        store.releaseFails.store(false, ordering: .relaxed)
        device.reset()  // holds no PASID now, but the outstanding release is retried
        #expect(try store.allocations().isEmpty)
        #expect(device.counters.pasidReleaseFailures == 1)
        device.reset()  // nothing outstanding: no further call, no new failure
        #expect(device.counters.pasidReleaseFailures == 1 && device.counters.resets == 3)
    }
}
