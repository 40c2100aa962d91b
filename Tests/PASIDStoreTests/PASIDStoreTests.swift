import Dispatch
import Glibc
import Testing
import PASIDAllocators
import Synchronization
import TestSupport
@testable import PASIDStore

enum StoreKind: String, CaseIterable, Sendable {
    case memory, sqlite

    func make(width: Int = 20) throws -> any PASIDAllocator {
        switch self {
        case .memory: return try InMemoryPASIDStore(width: width)
        case .sqlite:
            // The open connection keeps the data; the files can go at once.
            let path = temporaryStorePath()
            defer { removeStore(path) }
            return try SQLitePASIDStore(path: path, width: width)
        }
    }
}

/// The allocator protocol, run against both stores.
@Suite struct PASIDAllocatorTests {
    // PCIe: PASID 0 is reserved for traffic without a PASID, so the space starts at 1.
    // Spec: docs/pasid-extension.md §4.2 and P2: the lowest free PASID, counting from 1 (0 is never allocated).
    @Test(arguments: StoreKind.allCases)
    func lowestFreeFromOne(kind: StoreKind) throws {
        let store = try kind.make()
        #expect(try store.allocate(owner: "vm-a", in: nil) == 1)
        #expect(try store.allocate(owner: "vm-b", in: nil) == 2)
        #expect(try store.allocate(owner: "vm-a", in: nil) == 3)
        try store.free(2, owner: "vm-b")
        #expect(try store.allocate(owner: "vm-a", in: nil) == 2)
        #expect(try store.allocations().map(\.pasid) == [1, 2, 3])
        #expect(try store.allocations().map(\.owner) == ["vm-a", "vm-a", "vm-a"])
    }

    // Spec: docs/pasid-extension.md §4.2 and P2: bounds inside 1 … 2^w − 1, and an exhausted space.
    @Test(arguments: StoreKind.allCases)
    func boundsAndExhaustion(kind: StoreKind) throws {
        let store = try kind.make(width: 4)  // the space is 1...15
        try store.setQuota(100, owner: "vm")
        #expect(store.space == 1...15)
        #expect(try store.allocate(owner: "vm", in: 10...11) == 10)
        #expect(try store.allocate(owner: "vm", in: 10...11) == 11)
        #expect(throws: PASIDStoreError.exhausted) { try store.allocate(owner: "vm", in: 10...11) }
        #expect(throws: PASIDStoreError.invalidRange) { try store.allocate(owner: "vm", in: 0...3) }
        #expect(throws: PASIDStoreError.invalidRange) { try store.allocate(owner: "vm", in: 3...16) }
        for _ in 0..<13 { _ = try store.allocate(owner: "vm", in: nil) }
        #expect(throws: PASIDStoreError.exhausted) { try store.allocate(owner: "vm", in: nil) }
        #expect(try store.statistics().allocated == 15)
    }

    // Spec: docs/pasid-extension.md §7 "Owners" (per-owner quotas, the default a quarter of the space) and §4.2 (quota reached: NOMEM).
    @Test(arguments: StoreKind.allCases)
    func quotas(kind: StoreKind) throws {
        let store = try kind.make()
        #expect(try store.statistics().defaultQuota == ((1 << 20) - 1) / 4)
        try store.setQuota(2, owner: "small")
        _ = try store.allocate(owner: "small", in: nil)
        _ = try store.allocate(owner: "small", in: nil)
        #expect(throws: PASIDStoreError.quotaExceeded(owner: "small", quota: 2)) { try store.allocate(owner: "small", in: nil) }
        try store.setQuota(1, owner: nil)
        _ = try store.allocate(owner: "other", in: nil)
        #expect(throws: PASIDStoreError.quotaExceeded(owner: "other", quota: 1)) { try store.allocate(owner: "other", in: nil) }
        #expect(throws: PASIDStoreError.quotaExceeded(owner: "small", quota: 2)) { try store.allocate(owner: "small", in: nil) }
        try store.setQuota(3, owner: "small")
        #expect(try store.allocate(owner: "small", in: nil) == 4)
    }

    // Spec: docs/pasid-extension.md §4.4 FREE_PASID (a PASID not held: NOENT) and P6 (a VM's PASIDs all go back).
    @Test(arguments: StoreKind.allCases)
    func freeingAndReleasing(kind: StoreKind) throws {
        let store = try kind.make()
        let a = try store.allocate(owner: "vm-a", in: nil)
        _ = try store.allocate(owner: "vm-a", in: nil)
        let b = try store.allocate(owner: "vm-b", in: nil)
        #expect(throws: PASIDStoreError.notHeld(b)) { try store.free(b, owner: "vm-a") }
        #expect(throws: PASIDStoreError.notHeld(999)) { try store.free(999, owner: "vm-a") }
        try store.free(a, owner: "vm-a")
        #expect(throws: PASIDStoreError.notHeld(a)) { try store.free(a, owner: "vm-a") }
        #expect(try store.releaseAll(owner: "vm-a") == 1)
        #expect(try store.allocations() == [PASIDAllocation(pasid: b, owner: "vm-b")])
        let owners = try store.statistics().owners
        #expect(owners.first { $0.name == "vm-b" }?.allocated == 1)
    }

    // Spec: docs/pasid-extension.md P2 and §7: widths 1 … 20.
    @Test(arguments: StoreKind.allCases)
    func widthLimits(kind: StoreKind) throws {
        #expect(throws: PASIDStoreError.invalidWidth(21)) { try kind.make(width: 21) }
        #expect(throws: PASIDStoreError.invalidWidth(0)) { try kind.make(width: 0) }
        let store = try kind.make(width: 1)
        try store.setQuota(10, owner: "vm")
        #expect(try store.allocate(owner: "vm", in: nil) == 1)
        #expect(throws: PASIDStoreError.exhausted) { try store.allocate(owner: "vm", in: nil) }
    }
}

/// What only the durable store does: persistence, leases, cross-connection safety.
@Suite struct SQLitePASIDStoreTests {
    // Spec: docs/pasid-extension.md §7: the durable store keeps allocations, quotas and its width (fixed at creation).
    @Test func persistsAcrossOpens() throws {
        let path = temporaryStorePath()
        defer { removeStore(path) }
        do {
            let store = try SQLitePASIDStore(path: path, width: 12)
            _ = try store.allocate(owner: "vm", in: nil)
            try store.setQuota(7, owner: "vm")
        }
        let again = try SQLitePASIDStore(path: path)
        #expect(again.width == 12)
        #expect(try again.allocations() == [PASIDAllocation(pasid: 1, owner: "vm")])
        #expect(try again.statistics().owners.first?.quota == 7)
        #expect(throws: PASIDStoreError.invalidWidth(16)) { try SQLitePASIDStore(path: path, width: 16) }
        #expect(try again.integrityCheck())
    }

    /// Spawns a process that only sleeps, to stand for another daemon. Not DaemonTestSupport's runner: the
    /// child must outlive the call and be reaped here (waitpid), and the store's tests stay off the engine.
    func spawnSleeper() -> pid_t {
        var pid: pid_t = 0
        var argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/sleep"), strdup("60"), nil]
        defer { argv.forEach { free($0) } }
        posix_spawn(&pid, "/bin/sleep", nil, nil, &argv, environ)
        return pid
    }

    // Spec: docs/pasid-extension.md §7 "Reclaiming": a live lease keeps its name; a dead owner's PASIDs are freed when listed.
    @Test func deadOwnersAreReclaimed() throws {
        let path = temporaryStorePath()
        defer { removeStore(path) }
        let store = try SQLitePASIDStore(path: path)
        let pid = spawnSleeper()
        // The child is in /proc from the moment posix_spawn returns: no waiting.
        let lease = ProcessLease(pid: pid, startTime: try #require(ProcessLease.startTime(of: pid)))
        #expect(lease.isAlive)
        try store.register(owner: "other-vm", lease: lease)
        for _ in 0..<3 { _ = try store.allocate(owner: "other-vm", in: nil) }
        // While the holder lives, nobody can take its owner name, and the admin cannot release it.
        #expect(throws: PASIDStoreError.ownerInUse(owner: "other-vm", pid: pid)) { try store.register(owner: "other-vm") }
        #expect(throws: PASIDStoreError.ownerInUse(owner: "other-vm", pid: pid)) { try store.release(owner: "other-vm") }
        #expect(try store.statistics().owners.first { $0.name == "other-vm" }?.alive == true)
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        #expect(!lease.isAlive)
        #expect(try store.allocations().isEmpty)  // reclaimed when listed
        #expect(try store.statistics().owners.first { $0.name == "other-vm" }?.pid == nil)
        try store.register(owner: "other-vm")  // the name is free again
    }

    // Spec: docs/pasid-extension.md §7 "Reclaiming": registering a dead holder's name frees its PASIDs and keeps its quota.
    @Test func registerTakesOverFromADeadHolder() throws {
        let path = temporaryStorePath()
        defer { removeStore(path) }
        let store = try SQLitePASIDStore(path: path)
        let pid = spawnSleeper()
        try store.register(owner: "vm", quota: 5, lease: ProcessLease(pid: pid, startTime: try #require(ProcessLease.startTime(of: pid))))
        _ = try store.allocate(owner: "vm", in: nil)
        kill(pid, SIGKILL)
        var status: Int32 = 0
        waitpid(pid, &status, 0)
        try store.register(owner: "vm")  // the dead holder's PASIDs go
        #expect(try store.allocations().isEmpty)
        #expect(try store.statistics().owners.first?.quota == 5)  // the quota stays with the owner
        #expect(try store.statistics().owners.first?.pid == getpid())
        _ = try store.allocate(owner: "vm", in: nil)
        try store.unregister(owner: "vm")
        #expect(try store.allocations().isEmpty)
    }

    // Two connections (as two processes would have) allocating at once never get the same PASID.
    // Spec: docs/pasid-extension.md §7 "Concurrency": two connections never get the same PASID.
    @Test func concurrentConnectionsNeverShareAPASID() throws {
        let path = temporaryStorePath()
        defer { removeStore(path) }
        let a = try SQLitePASIDStore(path: path), b = try SQLitePASIDStore(path: path)
        let results = Mutex<[PASID]>([])
        let contenders = [(a, "vm-a"), (b, "vm-b")]
        DispatchQueue.concurrentPerform(iterations: contenders.count) { i in
            let (store, owner) = contenders[i]
            for _ in 0..<300 { if let p = try? store.allocate(owner: owner, in: nil) { results.withLock { $0.append(p) } } }
        }
        let all = results.withLock { $0 }
        #expect(all.count == 600)
        #expect(Set(all).count == 600)
        #expect(try a.allocations().count == 600)
    }
}

