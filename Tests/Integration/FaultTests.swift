import DaemonTestSupport
import Foundation
import Glibc
import Testing

/// Faults a guest can see (issue 15): QEMU's edu device, driven from the guest through VFIO, DMAs behind
/// vhost-user-iommu-pci. A DMA the daemon's translations allow moves exactly the expected bytes; one the
/// mirror refuses (never mapped, just unmapped, or without the permission) changes no guest memory and
/// gives edu zeros, never the guest's bytes; an endpoint the operator detached (bypass off) faults with reason
/// DOMAIN; and each refused access reaches the guest as a virtio-iommu
/// fault event (virtio 1.4 §5.13.6.9: reason, endpoint, address, READ/WRITE flags) through QEMU's fault
/// ring and the daemon's event queue (qemu/patches 0005, docs/frontend-protocol.md §10), which Linux's
/// driver logs. A flood of faults is capped: QEMU's ring holds 256 records and drops the rest, counted.
@Suite(.serialized, .enabled(if: GuestFiles.unavailableReason == nil, "\(GuestFiles.unavailableReason ?? "")"))
struct FaultTests: GuestWorkload {
    static let eduBDF = RealGuestTests.removedBDF, eduEndpoint = RealGuestTests.removedEndpoint
    /// QEMU's fault ring (VUIOMMU_FAULT_ENTRIES) and edu's failing DMA: one translation per 4-byte access.
    static let faultRingEntries = 256, accessesPerFailedPage = 4096 / 4

    @Test func eduDMAFaultsReachTheGuest() throws {
        let files = try GuestFiles.install()
        // Bypass off: an endpoint in no domain has its DMA refused (§5.13.6.4), which the DOMAIN case needs.
        let daemon = try Daemon(["--endpoint", "\(RealGuestTests.workloadEndpoint)", "--endpoint", "\(Self.eduEndpoint)",
                                 "--bypass", "off", "--log-level", "info"],
                                polling: .daemonDefault, executable: RealGuestTests.daemonExecutable)
        let machine = try Machine(qemu: files.qemu, arguments: RealGuestTests.memory("512M")
                                  + ["-chardev", "socket,id=viommu,path=\(daemon.socketPath)",
                                     "-device", "vhost-user-iommu-pci,chardev=viommu,id=viommu0"]
                                  + RealGuestTests.endpointDevices,
                                  guest: files, tag: "faults-\(getpid())")
        try machine.waitFor("@@READY")
        let group = try bindVFIO(machine, Self.eduBDF)
        let refusedBefore = try frontendCounter(machine, "x-refused")

        // The cases (scripts/guest/edu-dma.c): each failing DMA is 8 bytes, two 4-byte accesses, two faults.
        let lines = try machine.run("edu-dma \(group) \(Self.eduBDF) cases", timeout: .seconds(60))
        let report = Dictionary(lines.filter { $0.hasPrefix("@@EDU case=") }.map { line in
            let fields = reportFields(line)
            return (fields["case"] ?? "", fields)
        }, uniquingKeysWith: { first, _ in first })
        #expect(lines.contains("@@EDU status=ok"), "\(lines)\n\(machine.log)")
        // A DMA through two mappings moves exactly the source's bytes, before and after the faults.
        #expect(report["copy"]?["differing"] == "0", "\(lines)")
        #expect(report["copy-again"]?["differing"] == "0", "\(lines)")
        // Refused writes leave guest memory unchanged (the just-unmapped page and the read-only one).
        #expect(report["write-unmapped"]?["changed"] == "0", "\(lines)")
        #expect(report["write-readonly"]?["changed"] == "0", "\(lines)")
        // A refused read gives edu zeros, never the guest's secret bytes.
        #expect(report["read-unmapped"]?["nonzero"] == "0" && report["read-unmapped"]?["secret"] == "0", "\(lines)")

        // Each refused access is a fault QEMU hands to the daemon: 4 cases × 2 accesses.
        let refused = try frontendCounter(machine, "x-refused") - refusedBefore
        #expect(refused == 8, "refused translations")
        #expect(try frontendCounter(machine, "x-faults") == 8 && frontendCounter(machine, "x-faults-dropped") == 0)
        // ... which the daemon reports on the event queue, and Linux's driver logs (reason "page" is
        // MAPPING; [W]/[R] the access; the address of each 4-byte access).
        let expected = [(0x500000, "W"), (0x400000, "W"), (0x600000, "R"), (0x300000, "W")].flatMap { address, access in
            [0, 4].map { "page fault from EP \(Self.eduEndpoint) at 0x\(String(address + $0, radix: 16)) [\(access)]" }
        }
        var logged = try faultLog(machine, awaiting: expected)
        #expect(logged == expected, "the guest's log:\n\(logged.joined(separator: "\n"))")
        var stats = try daemon.stats()
        #expect(stats["frontendFaults"] as? Int == 8 && stats["frontendFaultRecordsRefused"] as? Int == 0, "\(stats)")
        #expect(stats["faultsDelivered"] as? Int == 8 && stats["faultsPending"] as? Int == 0, "\(stats)")
        #expect(failures(try requestCounts(daemon)).isEmpty, "every request the guest sent so far succeeded")

        // Reason DOMAIN (virtio 1.4 §5.13.6.9; the endpoint is in no domain and bypass is off, §5.13.6.4): the
        // operator detaches edu while a VFIO user still drives it; its next DMA is refused with that reason.
        machine.send("edu-dma \(group) \(Self.eduBDF) flood 0x700000 4")
        _ = try machine.waitFor("@@EDU ready", timeout: .seconds(30))
        let detached = try daemon.control(#"{"op":"detach","endpoint":\#(Self.eduEndpoint)}"#)
        #expect(detached["ok"] as? Bool == true, "\(detached)")
        machine.send("go")
        _ = try machine.waitFor("@@EDU case=flood iova=0x700000", timeout: .seconds(30))
        #expect(try machine.waitFor("@@DONE ") == "@@DONE 0")
        let domainFault = "domain fault from EP \(Self.eduEndpoint) at 0x700000 [W]"
        logged = try faultLog(machine, awaiting: expected + [domainFault])
        #expect(logged == expected + [domainFault], "the guest's log:\n\(logged.joined(separator: "\n"))")
        #expect(try frontendCounter(machine, "x-faults") == 9)

        // The cap: with the daemon stopped, one 4 KiB DMA to an unmapped IOVA makes 1 024 refused accesses;
        // QEMU's ring takes 256 and drops (and counts) the rest without waiting. The DMA completes.
        machine.send("edu-dma \(group) \(Self.eduBDF) flood")
        _ = try machine.waitFor("@@EDU ready", timeout: .seconds(30))
        daemon.signal(SIGSTOP)
        machine.send("go")
        let flood = try machine.waitFor("@@EDU case=flood", timeout: .seconds(30))
        let floodRefused = try frontendCounter(machine, "x-refused") - refusedBefore - refused - 1
        #expect(floodRefused == Self.accessesPerFailedPage, "\(flood)")
        #expect(try frontendCounter(machine, "x-faults") == 9 + Self.faultRingEntries)
        #expect(try frontendCounter(machine, "x-faults-dropped") == Self.accessesPerFailedPage - Self.faultRingEntries)
        daemon.signal(SIGCONT)
        #expect(try machine.waitFor("@@DONE ") == "@@DONE 0")
        // The daemon takes the 256 and learns of the drops; its own queue is capped at 256 as well, and
        // the guest's event buffers take them.
        let settle = ContinuousClock.now + .seconds(10)
        repeat { stats = try daemon.stats() } while stats["frontendFaults"] as? Int != 9 + Self.faultRingEntries && ContinuousClock.now < settle
        #expect(stats["frontendFaults"] as? Int == 9 + Self.faultRingEntries, "\(stats)")
        #expect(stats["frontendFaultsDropped"] as? Int == Self.accessesPerFailedPage - Self.faultRingEntries, "\(stats)")
        #expect((stats["faultsPending"] as? Int ?? .max) <= 256, "\(stats)")

        // The IOMMU still serves the guest: MAP/UNMAP through VFIO, all OK.
        let testdev = try bindVFIO(machine, RealGuestTests.workloadBDF)
        let before = try requestCounts(daemon)
        let result = try vfioRun(machine, group: testdev, 64, 1)
        let counts = try requestCounts(daemon)
        // (The operator's detach left the guest's VFIO domain behind: what the guest sent about it since may
        // fail; nothing in this run does.)
        #expect(result["status"] == "ok" && delta(counts, before, "MAP/OK") == 64 + 1 && failures(counts) == failures(before),
                "\(counts)")

        machine.send("poweroff -f")
        #expect(machine.waitForExit() == 0)
        #expect(daemon.terminate() == 0)
    }

    /// The fault lines of the guest kernel's log (virtio_iommu's "… fault from EP …", prefix cut), read
    /// again until each of `lines` is there or 10 s passed: the event reaches the guest asynchronously.
    func faultLog(_ machine: Machine, awaiting lines: [String]) throws -> [String] {
        let deadline = ContinuousClock.now + .seconds(10)
        var logged: [String] = []
        repeat {
            logged = try machine.run("dmesg | grep 'fault from EP' | sed 's/^.*virtio_iommu [^ ]* /@@KLOG /'")
                .map { String($0.dropFirst("@@KLOG ".count)) }
        } while !Set(lines).isSubset(of: logged) && ContinuousClock.now < deadline
        return logged
    }
}
