import DaemonTestSupport
import Foundation
import Glibc
import Testing

/// A second kind of endpoint behind `vhost-user-iommu-pci` (issue 15 §2): QEMU's emulated NVMe controller, whose
/// driver is built into the guest kernel (Debian 6.12 cloud: CONFIG_BLK_DEV_NVME=y) while the virtio-iommu driver is
/// a module (CONFIG_VIRTIO_IOMMU=m). The VIOT that QEMU builds for the device puts the controller behind the IOMMU,
/// so Linux must hold the controller's probe back until the IOMMU driver has registered, then bind it with a
/// translated DMA domain; the namespace's data then moves through the daemon's translations, checksummed.
///
/// The guest boots with `guest.modules=command` (scripts/guest/init: the initramfs's modules wait for the host's
/// `load_modules`), so the test sees the guest before the IOMMU driver exists. Otherwise as DiskDMATests:
/// `iommu.strict=1`, the daemon's `--bypass off`, `-boot strict=on`, a raw image pre-filled with its own pattern.
@Suite(.serialized, .enabled(if: GuestFiles.unavailableReason == nil, "\(GuestFiles.unavailableReason ?? "")"))
struct NVMeTests: GuestWorkload {
    /// The controller on the root bus at 00:04.0: requester ID (0 << 8) | (4 << 3) | 0 = 0x20, which QEMU's VIOT
    /// (one PCI range node per host bridge, endpoint ID = requester ID) makes its endpoint ID.
    static let nvme = DiskDMATests.Placement(description: "nvme on the root bus", bdf: "0000:00:04.0", endpoint: 0x20, drive: "n0",
                                             devices: ["-device", "nvme,serial=vhostiommu0,drive=n0,bus=pcie.0,addr=04.0"],
                                             prefillSeed: 0xA2A2, writeSeed: 0xB2B2)
    /// Its namespace's disk (one controller, one namespace), a child of the controller's PCI device:
    /// /sys/devices/pci0000:00/0000:00:04.0/nvme/nvme0/nvme0n1.
    static let disk = "nvme0n1"
    /// How long the guest waits for the disk after the IOMMU driver loads: the controller's reset and namespace
    /// scan run asynchronously after its probe.
    static let bindSeconds = 60

    // Spec: Linux's probe deferral behind a VIOT endpoint (drivers/acpi/viot.c viot_dev_iommu_init →
    // acpi_iommu_fwspec_init → iommu_fwspec_init: -EPROBE_DEFER while no IOMMU is registered for the VIOT's
    // virtio-iommu node; drivers/base/dd.c really_probe → driver_deferred_probe_add; debugfs devices_deferred),
    // the virtio-iommu driver's PROBE and ATTACH of the endpoint once it registers (virtio 1.4 §5.13.6.3,
    // §5.13.6.7), a translated default domain under iommu.strict=1, and issue 15 §2's checksummed nvme I/O
    // through the daemon (QEMU's front-end translates, refuses nothing).
    @Test func nvmeWaitsForTheVirtioIOMMUDriverThenMovesCheckedDataThroughTheDaemon() throws {
        let started = ContinuousClock.now
        let files = try GuestFiles.install()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("vhost-iommu-nvme-\(getpid())")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }

        let placement = Self.nvme
        let vm = try startDiskMachine(.vhostUser, placements: [placement], endpoints: [placement.endpoint], files: files,
                                      folder: folder, tag: "nvme-\(getpid())", kernelArguments: ["guest.modules=command"])
        let machine = vm.machine
        let daemon = try #require(vm.daemon)
        let image = try #require(vm.images[placement.drive])
        try machine.waitFor("@@READY")
        let booted = ContinuousClock.now
        let bdf = placement.bdf

        // Before the IOMMU driver: QEMU gave the guest its VIOT (issue 14 "ACPI"), and the virtio-iommu module is not
        // loaded (guest.modules=command), so no IOMMU is registered for the VIOT's virtio-iommu node.
        #expect(try machine.run("has_table VIOT") == ["@@TABLE VIOT yes"])
        #expect(try guestReply(machine, "present /sys/module/virtio_iommu", prefix: "@@PRESENT /sys/module/virtio_iommu") == "no")
        // Linux 6.12: the VIOT names 00:04.0 as an endpoint of that IOMMU, so its DMA configuration (pci_dma_configure
        // → acpi_dma_configure_id → viot_iommu_configure) returns -EPROBE_DEFER and the driver core puts the device
        // on its deferred-probe list instead of binding nvme: no driver link, listed in debugfs devices_deferred
        // ("BDF\t" + reason, one line per pending device), no iommu group, no disk. This ACPI path never asks
        // driver_deferred_probe_check_state (only of_iommu does), so the driver core's deferred_probe_timeout (10 s
        // after late_initcall) does not end the wait with an untranslated bind: the test needs no race against it.
        #expect(try guestReply(machine, "driver /sys/bus/pci/devices/\(bdf)/driver", prefix: "@@DRIVER /sys/bus/pci/devices/\(bdf)/driver") == "",
                "\(bdf) must not be bound before the IOMMU driver registers")
        #expect(try guestReply(machine, "deferred \(bdf)", prefix: "@@DEFERRED \(bdf)") == "yes", "\(bdf) must be on the deferred-probe list")
        #expect(try guestReply(machine, "present /sys/bus/pci/devices/\(bdf)/iommu_group", prefix: "@@PRESENT /sys/bus/pci/devices/\(bdf)/iommu_group") == "no")
        #expect(try guestReply(machine, "present /sys/block/\(Self.disk)", prefix: "@@PRESENT /sys/block/\(Self.disk)") == "no")
        // No driver has spoken to the device yet (virtio 1.4 §5.13.6: the device only answers the driver's requests):
        // no request, no domain.
        let beforeLoad = try requestCounts(daemon)
        #expect(beforeLoad.isEmpty, "requests before the driver loaded: \(beforeLoad)")
        let domainsBeforeLoad = try domains(daemon)
        #expect(domainsBeforeLoad.isEmpty, "\(domainsBeforeLoad)")
        let deferralChecked = ContinuousClock.now

        // The IOMMU driver loads. Its registration re-runs the deferred probes (drivers/base/dd.c driver_bound →
        // driver_deferred_probe_trigger); nvme's DMA configuration now finds the IOMMU, Linux probes the endpoint
        // (PROBE, §5.13.6.7) and attaches it to its default domain (ATTACH, §5.13.6.3), and nvme binds.
        let loaded = try machine.run("load_modules")
        #expect(!loaded.contains { $0.hasPrefix("@@ERROR") }, "\(loaded)")
        #expect(try machine.run("driver /sys/bus/virtio/devices/virtio0/driver") == ["@@DRIVER /sys/bus/virtio/devices/virtio0/driver virtio_iommu"])
        let disks = try disksByPCIAddress(machine, names: [Self.disk], waitSeconds: Self.bindSeconds)
        #expect(disks == [bdf: Self.disk], "the namespace's disk belongs to the controller at \(bdf): \(disks)")
        let bound = ContinuousClock.now
        #expect(try guestReply(machine, "driver /sys/bus/pci/devices/\(bdf)/driver", prefix: "@@DRIVER /sys/bus/pci/devices/\(bdf)/driver") == "nvme")
        #expect(try guestReply(machine, "deferred \(bdf)", prefix: "@@DEFERRED \(bdf)") == "no")
        // Strict translated DMA (Linux: iommu.strict=1 makes the default domain DMA rather than DMA-FQ; identity
        // would mean bypass).
        #expect(try groupType(machine, bdf) == "DMA")
        // The daemon serves only this endpoint: exactly one PROBE (one per endpoint, at its first probe), an ATTACH,
        // the endpoint in a domain, and no request failed.
        let afterBind = try requestCounts(daemon)
        #expect(afterBind["PROBE/OK"] == 1, "one PROBE for the nvme endpoint: \(afterBind)")
        #expect((afterBind["ATTACH/OK"] ?? 0) >= 1, "the nvme endpoint attached: \(afterBind)")
        #expect(failures(afterBind).isEmpty, "\(afterBind)")
        let attached = try domains(daemon)
        #expect(attached.contains { $0.endpoints.contains(placement.endpoint) }, "endpoint \(placement.endpoint) in a domain: \(attached)")

        // Real data (issue 15 §2, as issue 14 "Proof" for virtio-blk): O_DIRECT writes and reads of the namespace,
        // checksummed in the guest, against the pattern and against the host image. The controller's queues, PRP
        // lists and data all go through QEMU's translations of the daemon's mappings; iommu.strict=1 unmaps every
        // I/O's buffers before it completes, so the daemon must see MAPs and UNMAPs, and QEMU must translate and
        // refuse nothing (x-translations, x-refused: qemu/patches 0004).
        let (translationsBefore, refusedBefore) = (try frontendCounter(machine, "x-translations"), try frontendCounter(machine, "x-refused"))
        let (written, read) = try writeAndVerify(machine, disk: Self.disk, image: image, seed: placement.writeSeed,
                                                 range: DiskDMATests.range, blockSize: DiskDMATests.blockSize, "\(placement)")
        let afterIO = try requestCounts(daemon)
        #expect(delta(afterIO, afterBind, "MAP/OK") > 0 && delta(afterIO, afterBind, "UNMAP/OK") > 0, "nvme I/O: \(afterIO)")
        #expect(failures(afterIO).isEmpty, "\(afterIO)")
        let translations = try frontendCounter(machine, "x-translations") - translationsBefore
        let refused = try frontendCounter(machine, "x-refused") - refusedBefore
        #expect(translations > 0 && refused == 0, "during the nvme I/O: x-translations +\(translations), x-refused +\(refused)")
        let checked = ContinuousClock.now
        print("nvme: \(placement) (\(bdf), endpoint \(String(format: "0x%x", placement.endpoint))): deferred until virtio_iommu loaded, "
              + "bound in \(seconds(bound - deferralChecked)) s with a DMA domain; \(DiskDMATests.range >> 20) MiB at \(DiskDMATests.blockSize) "
              + "write \(written["mbps"] ?? "?") MB/s, read \(read["mbps"] ?? "?") MB/s, sum \(read["sum"] ?? "?"); "
              + "daemon MAP +\(delta(afterIO, afterBind, "MAP/OK")) UNMAP +\(delta(afterIO, afterBind, "UNMAP/OK")); "
              + "QEMU \(translations) translations, none refused")

        machine.send("poweroff -f")
        #expect(machine.waitForExit() == 0, "QEMU exit\n\(machine.log)")
        #expect(daemon.waitForExit(timeout: .seconds(20)) == 0, "daemon exit\n\(daemon.log)")
        #expect(daemon.errorLines.isEmpty, "daemon log errors:\n\(daemon.errorLines.joined(separator: "\n"))")
        // QEMU's own messages start with its name: only the refusal of q35's AHCI, which SeaBIOS probes at boot and
        // the daemon does not serve (issue 14 "Unknown endpoints"), may be there.
        let complaints = machine.transcript.filter { $0.contains("qemu-system-x86_64:") && !DiskDMATests.IOMMU.vhostUser.expectedComplaint($0) }
        #expect(complaints.isEmpty, "QEMU said:\n\(complaints.joined(separator: "\n"))")
        let finished = ContinuousClock.now
        print("nvme: timings: boot \(seconds(booted - started)) s, deferral checks \(seconds(deferralChecked - booted)) s, "
              + "module load to disk \(seconds(bound - deferralChecked)) s, checks and I/O \(seconds(checked - bound)) s, "
              + "poweroff \(seconds(finished - checked)) s, total \(seconds(finished - started)) s")
    }
}
