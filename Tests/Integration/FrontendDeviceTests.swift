import DaemonTestSupport
import Foundation
import Glibc
import Testing

/// The patched QEMU's own device for the daemon, `vhost-user-iommu-pci` (qemu/patches 0002 and 0003), in a
/// real guest: the command-line contract (the chardev and nothing else, no `-acpitable`), Linux's
/// virtio-iommu driver on it, QEMU's own VIOT, and the VFIO workload of RealGuestTests, with QEMU's DMA
/// going through the daemon's translations (qemu/patches 0004, docs/frontend-protocol.md): the endpoints
/// here do no DMA of their own; DiskDMATests moves real data through it.
@Suite(.serialized, .enabled(if: GuestFiles.unavailableReason == nil, "\(GuestFiles.unavailableReason ?? "")"))
struct FrontendDeviceTests: GuestWorkload {
    /// pci-testdev at 00:03.0 and edu at 00:04.0, as in RealGuestTests.
    static let workloadBDF = RealGuestTests.workloadBDF, workloadEndpoint = RealGuestTests.workloadEndpoint
    static let otherBDF = RealGuestTests.removedBDF, otherEndpoint = RealGuestTests.removedEndpoint
    /// Issue 14's contract, exactly: no bus, address, queue, config or feature property.
    static func iommuDevice(socket: String) -> [String] {
        ["-chardev", "socket,id=viommu,path=\(socket)", "-device", "vhost-user-iommu-pci,chardev=viommu"]
    }

    // Spec: issue 14 "Command-line contract" (-device vhost-user-iommu-pci,chardev=ID with no other property; the
    // device learns its queues and config from the back-end) and "ACPI" (QEMU builds the VIOT; q35 needs no
    // -acpitable); Linux's virtio-iommu driver (virtio 1.4 §5.13) binds and attaches the VIOT's endpoints.
    @Test func guestDriverBindsToTheDeviceGivenOnlyItsChardev() throws {
        let files = try GuestFiles.install()
        let daemon = try Daemon(["--endpoint", "\(Self.workloadEndpoint)", "--endpoint", "\(Self.otherEndpoint)",
                                 "--log-level", "info"],
                                polling: .daemonDefault, executable: RealGuestTests.daemonExecutable)
        let machine = try Machine(qemu: files.qemu, arguments: RealGuestTests.memory("512M")
                                  + Self.iommuDevice(socket: daemon.socketPath) + RealGuestTests.endpointDevices,
                                  guest: files, tag: "frontend-\(getpid())")
        try machine.waitFor("@@READY")

        // The device is a virtio-iommu to Linux (virtio id 23, PCI 1af4:1057), and the firmware's tables
        // include QEMU's VIOT.
        #expect(try machine.run("driver /sys/bus/virtio/devices/virtio0/driver") == ["@@DRIVER /sys/bus/virtio/devices/virtio0/driver virtio_iommu"])
        #expect(try machine.run("has_table VIOT") == ["@@TABLE VIOT yes"])

        // The VIOT puts both endpoints behind it: they join iommu groups when vfio-pci binds them, and the
        // daemon sees one PROBE and an ATTACH for each.
        let group = try bindEndpointsToVFIO(machine, daemon, [(Self.workloadBDF, Self.workloadEndpoint),
                                                              (Self.otherBDF, Self.otherEndpoint)])

        // The VFIO workload: one MAP and one UNMAP per buffer and round, plus VFIO_SET_IOMMU's own 8 KiB
        // MAP+UNMAP probe, every one answered OK.
        try vfioMapUnmapRun(machine, daemon, group: group, 256, 4)
        #expect(try domains(daemon).allSatisfy { $0.mappings == 0 }, "every mapping was unmapped")

        // A VM pause and resume: QEMU signals each kick eventfd before it enables the ring again; the
        // rings, the event buffers the guest posted and every domain survive (vhost-user.rst: a disabled
        // ring causes no side effects), so the next run maps and unmaps as before.
        try machine.qmp("stop")
        try machine.qmp("cont")
        try vfioMapUnmapRun(machine, daemon, group: group, 64, 1)
        let unknownFaults = machine.transcript.filter { $0.contains("unknown fault") }
        #expect(unknownFaults.isEmpty, "event buffers came back empty:\n\(unknownFaults.joined(separator: "\n"))")

        // A guest reboot is a system reset: QEMU falls back to the boot state by itself (issue 14 "Bypass")
        // and tells the daemon (RESET, docs/frontend-protocol.md §7); no domain survives, and the rebooted
        // guest's endpoints attach and map again from scratch.
        let resetsBefore = try daemon.stats()["resets"] as? Int ?? -1
        machine.send("reboot -f")  // the reboot(2) call itself: the guest's /init is a shell, not busybox init
        try machine.waitFor("@@READY")
        #expect((try daemon.stats()["resets"] as? Int ?? -1) > resetsBefore, "the reboot reset the device")
        let regroup = try bindVFIO(machine, Self.workloadBDF)
        try vfioMapUnmapRun(machine, daemon, group: regroup, 64, 1)

        // Clean shutdown on both sides, and nothing QEMU complained about on the way (its messages start with
        // its name: a refused configuration, a failed vhost start, a lost connection).
        machine.send("poweroff -f")
        #expect(machine.waitForExit() == 0, "QEMU exit\n\(machine.log)")
        #expect(daemon.waitForExit(timeout: .seconds(20)) == 0, "daemon exit\n\(daemon.log)")
        // Issue 14 "Unknown endpoints": q35's AHCI (00:1f.2), which the firmware drives with DMA, is not one
        // of the daemon's endpoints, so its DMA is refused and QEMU says so exactly once.
        let unknown = "qemu-system-x86_64: vhost-user-iommu: refusing DMA from 00:1f.2: endpoint unknown to the back-end"
        #expect(machine.transcript.filter { $0 == unknown }.count == 1, "\(machine.log)")
        let complaints = machine.transcript.filter { $0.contains("qemu-system-x86_64:") && $0 != unknown }
        #expect(complaints.isEmpty, "QEMU said:\n\(complaints.joined(separator: "\n"))")
        #expect(daemon.errorLines.isEmpty, "daemon log errors:\n\(daemon.errorLines.joined(separator: "\n"))")
    }

    // Spec: docs/design/qemu-frontend-plan.md §1.3 ("Realize refuses iommu_platform=on on the IOMMU itself"):
    // the IOMMU's own accesses to its queues are never translated, so QEMU must not offer
    // VIRTIO_F_ACCESS_PLATFORM (virtio 1.4 §6) for it.
    @Test func deviceRefusesIOMMUPlatformOnItself() throws {
        let files = try GuestFiles.install()
        let daemon = try Daemon(["--endpoint", "\(Self.workloadEndpoint)", "--log-level", "info"],
                                executable: RealGuestTests.daemonExecutable)
        let qemu = Process()
        qemu.executableURL = URL(fileURLWithPath: files.qemu)
        var arguments = ["-nodefaults", "-display", "none", "-accel", "tcg", "-machine", "q35", "-S"]
        arguments += Self.iommuDevice(socket: daemon.socketPath)
        arguments[arguments.count - 1] += ",iommu_platform=on"
        qemu.arguments = arguments
        let stderr = Pipe()
        qemu.standardError = stderr
        qemu.standardOutput = FileHandle.nullDevice
        try qemu.run()
        let message = String(decoding: stderr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        qemu.waitUntilExit()
        #expect(qemu.terminationStatus == 1, "\(message)")
        #expect(message.contains("iommu_platform=on is not supported"), "\(message)")
        daemon.terminate()
    }
}
