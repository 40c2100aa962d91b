import DaemonTestSupport
import Foundation
import Glibc
import PASIDAllocators
import PASIDStore
import Synchronization
import TestSupport
import Testing
import VhostUser
import VhostUserTestSupport
import VirtioIOMMU

extension Guest {
    func allocPASID(min: PASID = 0, max: PASID = 0) -> (Status?, PASID) {
        let (used, reply) = send(AllocPASIDRequest(min: min, max: max).encoded, writable: 12)
        guard used == 12 else { return (nil, 0) }
        return (Status(rawValue: reply[8]), reply.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) })
    }

    /// Sends `count` ALLOC_PASID requests in one kick; returns the PASIDs of those that succeeded.
    func allocBatch(_ count: Int, timeout: Duration = .seconds(10)) -> [PASID] {
        guard requests.freeCount >= count else { return [] }  // the back-end went away mid-batch
        let heads = (0..<count).map { _ in requests.add(readable: [AllocPASIDRequest().encoded], writable: [12], indirect: true) }
        requests.kickNow()
        _ = requests.waitForUsed(count, timeout: timeout)
        return heads.compactMap { head in
            let reply = requests.reply(of: head)
            guard reply[8] == Status.ok.rawValue else { return nil }
            return reply.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
        }
    }
}

/// Runs the `vhost-iommu` executable with `arguments` and waits for it.
func runDaemonCommand(_ arguments: [String]) throws -> CommandResult { try runCommand(Daemon.executable, arguments) }

/// Runs `vhost-iommu pasid …`.
func admin(_ arguments: [String]) throws -> CommandResult { try runDaemonCommand(["pasid"] + arguments) }


struct AdminFailure: Error, CustomStringConvertible {
    var description: String
}

func storeAllocations(_ path: String) throws -> [PASIDAllocation] {
    let result = try admin(["list", "--pasid-store", path, "--json"])
    guard result.status == 0, let list = try? JSONDecoder().decode([PASIDAllocation].self, from: Data(result.output.utf8)) else {
        throw AdminFailure(description: "pasid list failed (\(result.status)): \(result.errors)")
    }
    return list
}

/// The PASID extension end to end: the real daemon, a guest that negotiates F_PASID, the host-wide store.
@Suite(.serialized) struct PASIDEndToEndTests {
    // Spec: docs/pasid-extension.md §4 (requests, P6 on reset), §5 (PROBE property) and §6 (fault records).
    @Test func auxDomainsThroughTheRealDaemon() throws {
        let store = temporaryStorePath()
        defer { removeStore(store) }
        let daemon = try Daemon(["--endpoint", "0x10,pasid=8", "--endpoint", "0x18", "--pasid-store", store, "--vm", "vm-e2e", "--bypass", "off"])
        let guest = try Guest(daemon, acceptPASID: true)
        #expect(guest.features & IOMMUSpec.VIRTIO_IOMMU_F_PASID != 0)
        for _ in 0..<2 { guest.events.add(readable: [], writable: [24]) }
        guest.events.kickNow()
        // PROBE reports the PASID width after the MSI window.
        let (_, probe) = guest.send(ProbeRequest(endpoint: 0x10).encoded, writable: 516)
        #expect(probe.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 24, as: UInt16.self) } == 0x800 && probe[28] == 8)
        let (status, pasid) = guest.allocPASID()
        #expect(status == .ok && pasid == 1)
        #expect(try storeAllocations(store) == [PASIDAllocation(pasid: 1, owner: "vm-e2e")])
        #expect(guest.status(AttachRequest(domain: 1, endpoint: 0x10).encoded) == .ok)
        #expect(guest.status(PASIDAttachmentRequest(domain: 2, endpoint: 0x10, pasid: pasid).encoded(.attachPASID)) == .ok)
        #expect(guest.status(PASIDAttachmentRequest(domain: 2, endpoint: 0x18, pasid: pasid).encoded(.attachPASID)) == .unsupported)
        #expect(guest.status(MapRequest(domain: 2, virtualStart: 0x4000, virtualEnd: 0x4fff, physicalStart: 0x90000, flags: 3).encoded) == .ok)
        let good = try daemon.control(#"{"op":"translate","endpoint":16,"pasid":1,"iova":16388,"length":8,"access":"write"}"#)
        #expect((good["segments"] as? [[String: Any]])?.first?["gpa"] as? Int == 0x90004)
        let bad = try daemon.control(#"{"op":"translate","endpoint":16,"pasid":7,"iova":16388,"length":8,"access":"read"}"#)
        #expect((bad["fault"] as? [String: Any])?["reason"] as? String == "domain")
        #expect((bad["fault"] as? [String: Any])?["pasid"] as? Int == 7)
        let used = guest.events.waitForUsed(1)
        let head = try #require(used.first).head
        let record = try #require(Fault(event: guest.events.reply(of: head)))
        #expect(record.pasid == 7 && record.reason == .domain && record.flags.contains(.pasid))
        // FREE_PASID while attached is refused; after DETACH_PASID it works.
        #expect(guest.status(FreePASIDRequest(pasid: pasid).encoded) == .invalid)
        #expect(guest.status(PASIDAttachmentRequest(domain: 2, endpoint: 0x10, pasid: pasid).encoded(.detachPASID)) == .ok)
        #expect(guest.status(FreePASIDRequest(pasid: pasid).encoded) == .ok)
        #expect(try storeAllocations(store).isEmpty)
        // A guest reset gives every PASID back (rule 6).
        _ = guest.allocPASID()
        _ = guest.allocPASID()
        #expect(try storeAllocations(store).count == 2)
        try guest.restartAsResetGuest()
        #expect(try storeAllocations(store).isEmpty)
        #expect(daemon.terminate() == 0)
    }

    // Spec: docs/pasid-extension.md §4.4 ALLOC_PASID (quota reached: NOMEM) and §7 (a clean exit frees the VM's PASIDs).
    @Test func quotaExhaustionIsNOMEM() throws {
        let store = temporaryStorePath()
        defer { removeStore(store) }
        let daemon = try Daemon(["--pasid-store", store, "--vm", "vm-quota", "--pasid-quota", "2"])
        let guest = try Guest(daemon, acceptPASID: true)
        #expect(guest.allocPASID().0 == .ok)
        #expect(guest.allocPASID().0 == .ok)
        #expect(guest.allocPASID() == (.noMemory, 0))
        #expect(try daemon.requestCount("ALLOC_PASID", "NOMEM") == 1)
        // A clean exit gives the PASIDs back.
        #expect(daemon.terminate() == 0)
        #expect(try storeAllocations(store).isEmpty)
    }

    // Spec: docs/pasid-extension.md §7 "Owners": socket:<absolute socket path> by default.
    @Test func defaultOwnerIsDerivedFromTheSocketPath() throws {
        let store = temporaryStorePath()
        defer { removeStore(store) }
        let daemon = try Daemon(["--pasid-store", store])
        let guest = try Guest(daemon, acceptPASID: true)
        #expect(guest.allocPASID().0 == .ok)
        #expect(try storeAllocations(store).first?.owner == "socket:" + daemon.socketPath)
    }

    // Two OS processes (two VMs) allocating at once from one store never get the same PASID.
    // Spec: docs/pasid-extension.md §7 "Concurrency".
    @Test func twoDaemonsShareOneStore() throws {
        let store = temporaryStorePath()
        defer { removeStore(store) }
        let a = try Daemon(["--pasid-store", store, "--vm", "vm-a"])
        let b = try Daemon(["--pasid-store", store, "--vm", "vm-b"])
        let guests = [try Guest(a, acceptPASID: true), try Guest(b, acceptPASID: true)]
        let results = Mutex<[[PASID]]>([[], []])  // what each guest got
        let threads = (0..<2).map { i in
            let guest = UncheckedBox(value: guests[i])
            return OSThread { for _ in 0..<4 { let batch = guest.value.allocBatch(100); results.withLock { $0[i] += batch } } }
        }
        threads.forEach { $0.join() }
        let (fromA, fromB) = results.withLock { ($0[0], $0[1]) }
        #expect(fromA.count == 400 && fromB.count == 400)
        #expect(Set(fromA).isDisjoint(with: fromB))
        #expect(Set(fromA + fromB).count == 800)
        let allocations = try storeAllocations(store)
        #expect(allocations.count == 800)
        #expect(Set(allocations.filter { $0.owner == "vm-a" }.map(\.pasid)) == Set(fromA))
    }

    // SIGKILL in the middle of allocating (docs/pasid-extension.md §7, "Crashes" and "Reclaiming"): the
    // store stays consistent, the dead VM's PASIDs are reclaimed, another VM's are untouched, and the
    // killed VM can start again.
    @Test func sigkillDuringAllocation() throws {
        let store = temporaryStorePath()
        defer { removeStore(store) }
        let survivor = try Daemon(["--pasid-store", store, "--vm", "vm-survivor"])
        let survivorGuest = try Guest(survivor, acceptPASID: true)
        let kept = survivorGuest.allocBatch(10)
        #expect(kept.count == 10)
        let victim = try Daemon(["--pasid-store", store, "--vm", "vm-victim"])
        let victimGuest = UncheckedBox(value: try Guest(victim, acceptPASID: true))
        let worker = OSThread { for _ in 0..<50 { _ = victimGuest.value.allocBatch(200, timeout: .seconds(1)) } }
        // Kill it once it holds some (it only allocates: what the store lists it holds until it dies).
        var victimHeld = 0
        let deadline = ContinuousClock.now + .seconds(20)
        while victimHeld < 200 && ContinuousClock.now < deadline {
            victimHeld = try storeAllocations(store).filter { $0.owner == "vm-victim" }.count
        }
        let aliveWhenKilled = victim.process.isRunning
        kill(victim.process.processIdentifier, SIGKILL)
        #expect(victim.waitForExit() == 128 + SIGKILL)
        victimGuest.value.frontend.disconnect()
        worker.join()
        #expect(aliveWhenKilled && victimHeld >= 200, "the victim held \(victimHeld) PASIDs when it was killed")
        // Listing reclaims the dead owner's PASIDs; the survivor's are intact.
        let after = try storeAllocations(store)
        #expect(Set(after.map(\.owner)) == ["vm-survivor"])
        #expect(Set(after.map(\.pasid)) == Set(kept))
        #expect(try SQLitePASIDStore(path: store).integrityCheck())
        // The killed VM comes back under the same name and allocates afresh.
        let restarted = try Daemon(["--pasid-store", store, "--vm", "vm-victim"])
        let again: Guest
        do { again = try Guest(restarted, acceptPASID: true) } catch {
            Issue.record("restart failed: \(error); log: \(restarted.log)")
            return
        }
        let (status, pasid) = again.allocPASID()
        #expect(status == .ok && !kept.contains(pasid))
        #expect(try storeAllocations(store).count == 11)
    }

    // docs/pasid-extension.md §7, "Reclaiming": a second daemon cannot take a live owner's name, and an
    // administrator cannot release a live owner's PASIDs; both refusals are errors that say why.
    @Test func secondDaemonCannotTakeALiveOwner() throws {
        let store = temporaryStorePath()
        defer { removeStore(store) }
        let first = try Daemon(["--pasid-store", store, "--vm", "vm-dup"])
        let guest = try Guest(first, acceptPASID: true)
        #expect(guest.allocPASID() == (.ok, 1))
        let refusal = "owner vm-dup is held by live process \(first.process.processIdentifier)"
        let second = try Daemon(["--pasid-store", store, "--vm", "vm-dup"], waitForSocket: false)
        #expect(second.waitForExit() == 1)  // a failure at start-up: EXIT_FAILURE
        #expect(second.log.contains("vhost-iommu: " + refusal), "\(second.log)")
        #expect(access(second.socketPath, F_OK) != 0)  // it never listened
        let release = try admin(["release", "--pasid-store", store, "--owner", "vm-dup"])
        #expect(release.status == 1)
        #expect(release.errors == "vhost-iommu: " + refusal + "\n")
        #expect(release.output.isEmpty)
        #expect(try storeAllocations(store) == [PASIDAllocation(pasid: 1, owner: "vm-dup")])  // nothing released
        #expect(first.process.isRunning)
    }
}
