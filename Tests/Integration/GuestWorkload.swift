import DaemonTestSupport
import Foundation
import Glibc
import Testing

/// One domain as the daemon's control socket lists it.
struct DomainState: Equatable, CustomStringConvertible {
    var id: Int, endpoints: [Int], mappings: Int
    var description: String { "domain \(id) endpoints \(endpoints) mappings \(mappings)" }
}

/// What the real-guest suites share: driving the guest's VFIO and disk workloads over its console, and
/// reading the daemon's counters over its control socket.
protocol GuestWorkload {}

extension GuestWorkload {
    /// A duration in seconds with one decimal, for the suites' printed figures.
    func seconds(_ duration: Duration) -> String {
        String(format: "%.1f", Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
    }


    func bindVFIO(_ machine: Machine, _ bdf: String) throws -> Int {
        let lines = try machine.run("bind_vfio \(bdf)")
        let group = lines.first { $0.hasPrefix("@@BOUND \(bdf) ") }.flatMap { Int($0.split(separator: " ").last ?? "") }
        return try #require(group, "\(bdf) did not join an iommu group: \(lines)\n\(machine.log)")
    }

    /// Binds each endpoint to vfio-pci (Linux probes the IOMMU when a driver binds, so each joins an iommu
    /// group then): the daemon answers one PROBE per endpoint (§5.13.6.7) and attaches each (§5.13.6.3),
    /// and no request failed. Returns the first endpoint's group.
    func bindEndpointsToVFIO(_ machine: Machine, _ daemon: Daemon, _ endpoints: [(bdf: String, id: Int)]) throws -> Int {
        let groups = try endpoints.map { try bindVFIO(machine, $0.bdf) }
        let listed = try machine.run("list_groups")
        for (bdf, _) in endpoints { #expect(listed.contains { $0.hasPrefix("@@GROUP \(bdf) ") }, "\(listed)") }
        let counts = try requestCounts(daemon)
        #expect(counts["PROBE/OK"] == endpoints.count, "one PROBE per endpoint: \(counts)")
        #expect((counts["ATTACH/OK"] ?? 0) >= endpoints.count, "each endpoint attached: \(counts)")
        let attached = Set(try domains(daemon).flatMap(\.endpoints))
        #expect(attached == Set(endpoints.map(\.id)), "endpoints in domains: \(attached)")
        #expect(failures(counts).isEmpty, "\(counts)")
        return groups[0]
    }

    /// One vfio-dma run of `buffers` × `iterations` MAP+UNMAP pairs, plus VFIO_SET_IOMMU's own 8 KiB
    /// MAP+UNMAP probe at IOVA 0: every one reaches the daemon once and is answered OK (§5.13.6.5,
    /// §5.13.6.6; Linux ignores a failed status, so the daemon's counts are checked). Returns the report.
    @discardableResult
    func vfioMapUnmapRun(_ machine: Machine, _ daemon: Daemon, group: Int, _ buffers: Int, _ iterations: Int) throws -> [String: String] {
        let before = try requestCounts(daemon)
        let report = try vfioRun(machine, group: group, buffers, iterations)
        let after = try requestCounts(daemon)
        let pairs = buffers * iterations
        #expect(report["maps"] == "\(pairs)" && report["unmaps"] == "\(pairs)", "\(report)")
        #expect(delta(after, before, "MAP/OK") == pairs + 1, "\(after)")
        #expect(delta(after, before, "UNMAP/OK") == pairs + 1, "\(after)")
        #expect(failures(after).isEmpty, "\(after)")
        return report
    }

    /// Runs vfio-dma and returns its key=value report.
    func vfioRun(_ machine: Machine, group: Int, _ buffers: Int, _ iterations: Int) throws -> [String: String] {
        let lines = try machine.run("vfio-dma \(group) \(buffers) 4096 \(iterations)")
        let report = try #require(lines.first { $0.hasPrefix("@@VFIO ") }, "\(lines)")
        let fields = reportFields(report)
        #expect(fields["status"] == "ok", "\(report)")
        return fields
    }

    /// The key=value fields of a workload's "@@…" report line.
    func reportFields(_ report: String) -> [String: String] {
        var fields: [String: String] = [:]
        for field in report.split(separator: " ").dropFirst() {
            let parts = field.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        return fields
    }

    // MARK: Disks (scripts/guest/blk-io.c)

    /// Runs `blk-io ARGUMENTS --timeout SECONDS` and returns its report's fields, whatever its status: a
    /// disk whose DMA never completes gives status=timeout instead of hanging the console.
    func blkIO(_ machine: Machine, _ arguments: String, timeout seconds: Int = 120) throws -> [String: String] {
        let command = "blk-io \(arguments) --timeout \(seconds)"
        let (_, lines) = try machine.runStatus(command, timeout: .seconds(seconds + 60))
        let report = try #require(lines.first { $0.hasPrefix("@@BLK ") }, "\(command): \(lines)\n\(machine.log)")
        return reportFields(report)
    }

    /// The guest's disk names (vda, vdb, nvme0n1, …) by the PCI address of their device; the guest waits up to
    /// `waitSeconds` (default 5) for each disk to appear.
    func disksByPCIAddress(_ machine: Machine, names: [String], waitSeconds: Int? = nil) throws -> [String: String] {
        var disks: [String: String] = [:]
        for name in names {
            let command = "blk_pci \(name)" + (waitSeconds.map { " \($0)" } ?? "")
            let line = try #require(try machine.run(command, timeout: .seconds(120 + (waitSeconds ?? 0))).first { $0.hasPrefix("@@BLKPCI \(name) ") })
            disks[String(line.split(separator: " ")[2])] = name
        }
        return disks
    }

    /// The value in the guest helper's reply "PREFIX VALUE" to `command` (scripts/guest/init: `present PATH` →
    /// "@@PRESENT PATH yes|no", `deferred BDF` → "@@DEFERRED BDF yes|no", `driver LINK` → "@@DRIVER LINK NAME", with an
    /// empty NAME when no driver is bound).
    func guestReply(_ machine: Machine, _ command: String, prefix: String) throws -> String {
        let lines = try machine.run(command)
        let line = try #require(lines.first { $0.hasPrefix(prefix + " ") || $0 == prefix }, "\(command): \(lines)")
        return String(line.dropFirst(prefix.count)).trimmingCharacters(in: .whitespaces)
    }

    /// Writes the `seed` pattern over the first `range` bytes of the guest's disk `name` with blk-io (O_DIRECT,
    /// `blockSize` at a time) and reads it back. Expects both runs to succeed, the guest's two sums, the pattern's and
    /// the host image's first `range` bytes to agree, and the rest of the image to hold what it held before the guest
    /// ran (`image.prefill`). Returns blk-io's two reports.
    @discardableResult
    func writeAndVerify(_ machine: Machine, disk name: String, image: (path: String, prefill: [UInt8]), seed: UInt64,
                        range: Int, blockSize: String, _ label: String) throws -> (written: [String: String], read: [String: String]) {
        let hexSeed = String(format: "0x%llx", seed)
        let written = try blkIO(machine, "/dev/\(name) write \(range) \(blockSize) \(hexSeed)")
        let read = try blkIO(machine, "/dev/\(name) read \(range) \(blockSize) \(hexSeed)")
        #expect(written["status"] == "ok" && read["status"] == "ok", "\(label): write \(written), read \(read)\n\(machine.log)")

        let pattern = DiskPattern.bytes(seed: seed, count: range)
        let expected = DiskPattern.hex(DiskPattern.fnv1a(pattern))
        let host = try Data(contentsOf: URL(fileURLWithPath: image.path))
        try #require(host.count == image.prefill.count && range <= host.count, "\(image.path) is \(host.count) bytes")
        let hostSum = host.withUnsafeBytes { DiskPattern.fnv1a(UnsafeRawBufferPointer(rebasing: $0[..<range])) }
        #expect(written["sum"] == expected, "\(label): the guest wrote \(written), the pattern's sum is \(expected)")
        #expect(read["sum"] == expected, "\(label): the guest read back \(read), the pattern's sum is \(expected)")
        #expect(DiskPattern.hex(hostSum) == expected, "\(label): the host image's first \(range) bytes sum to \(DiskPattern.hex(hostSum))")
        let (head, tail) = host.withUnsafeBytes { host in
            (pattern.withUnsafeBytes { memcmp(host.baseAddress!, $0.baseAddress!, range) },
             image.prefill.withUnsafeBytes { memcmp(host.baseAddress! + range, $0.baseAddress! + range, host.count - range) })
        }
        #expect(head == 0, "\(label): the host image's first \(range) bytes are not the pattern")
        #expect(tail == 0, "\(label): the guest changed the host image beyond the \(range) bytes it wrote")
        return (written, read)
    }

    /// The type of the iommu group of the guest's PCI device `bdf` (DMA, DMA-FQ, identity or blocked).
    func groupType(_ machine: Machine, _ bdf: String) throws -> String {
        let line = try #require(try machine.run("group_type \(bdf)").first { $0.hasPrefix("@@GROUPTYPE \(bdf) ") })
        return String(line.split(separator: " ")[2])
    }

    /// The run's guest-visible rate; a run that reports none fails the test (it is never taken as 0).
    func rate(_ result: [String: String]) throws -> Double {
        let rate = try #require(result["pairs_per_second"].flatMap(Double.init), "no pairs_per_second in \(result)")
        try #require(rate > 0 && rate.isFinite, "pairs_per_second \(rate) in \(result)")
        return rate
    }

    func requestCounts(_ daemon: Daemon) throws -> [String: Int] {
        let requests = (try daemon.stats()["requests"] as? [[String: Any]]) ?? []
        var counts: [String: Int] = [:]
        for r in requests {
            if let type = r["type"] as? String, let status = r["status"] as? String, let n = r["count"] as? Int {
                counts["\(type)/\(status)"] = n
            }
        }
        if let unanswered = try daemon.stats()["unanswered"] as? Int, unanswered > 0 { counts["unanswered/-"] = unanswered }
        return counts
    }

    func failures(_ counts: [String: Int]) -> [String: Int] { counts.filter { !$0.key.hasSuffix("/OK") } }

    func delta(_ after: [String: Int], _ before: [String: Int], _ key: String) -> Int {
        (after[key] ?? 0) - (before[key] ?? 0)
    }

    func stat(_ daemon: Daemon, _ key: String) throws -> Int { (try daemon.stats()[key] as? Int) ?? -1 }


    func domains(_ daemon: Daemon) throws -> [DomainState] {
        let list = (try daemon.control(#"{"op":"domains"}"#)["domains"] as? [[String: Any]]) ?? []
        return list.map {
            DomainState(id: $0["id"] as? Int ?? -1, endpoints: $0["endpoints"] as? [Int] ?? [], mappings: $0["mappings"] as? Int ?? -1)
        }
    }

    func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

    // MARK: A VM with virtio-blk disks behind an IOMMU (DiskDMATests' set-up, shared with CPUCostBenchmark)

    /// Starts, without waiting for the guest, a VM whose `placements`' disks DMA through `iommu` with bypass
    /// off, `-boot strict=on` and `iommu.strict=1` (DiskDMATests says why). Each disk is a raw image of
    /// `DiskDMATests.imageSize` bytes in `folder`, pre-filled with its placement's pattern. For
    /// vhost-user-iommu-pci the daemon knows `endpoints` and gets `daemonArguments` too. Either IOMMU has the
    /// id viommu0 (`frontendCounter` reads the daemon's front-end by it). `kernelArguments` follow iommu.strict=1.
    func startDiskMachine(_ iommu: DiskDMATests.IOMMU, placements: [DiskDMATests.Placement], endpoints: [Int],
                          daemonArguments: [String] = ["--log-level", "info"], files: GuestFiles, folder: URL,
                          tag: String, kernelArguments: [String] = [], daemonExecutable: URL = RealGuestTests.daemonExecutable,
                          qemuArguments: [String] = []) throws -> DiskMachine {
        // Raw images pre-filled with their own pattern, so that a write that never reached the image shows.
        // Not cache=none: /tmp may be tmpfs, which refuses the O_DIRECT that QEMU would open the image with.
        var images: [String: (path: String, prefill: [UInt8])] = [:]
        var arguments = RealGuestTests.memory("512M") + ["-boot", "strict=on"] + qemuArguments
        for placement in placements {
            let path = folder.appendingPathComponent("\(placement.drive).img").path
            let prefill = DiskPattern.bytes(seed: placement.prefillSeed, count: DiskDMATests.imageSize)
            try #require(FileManager.default.createFile(atPath: path, contents: Data(prefill)), "\(path)")
            images[placement.drive] = (path, prefill)
            arguments += ["-drive", "if=none,id=\(placement.drive),format=raw,file=\(path)"]
        }

        var daemon: Daemon?
        switch iommu {
        case .builtIn:
            arguments += ["-device", "virtio-iommu-pci,bus=pcie.0,addr=02.0,id=viommu0,boot-bypass=off"]
        case .vhostUser:
            let server = try Daemon(endpoints.flatMap { ["--endpoint", "\($0)"] } + ["--bypass", "off"] + daemonArguments,
                                    polling: .daemonDefault, executable: daemonExecutable)
            daemon = server
            arguments += FrontendDeviceTests.iommuDevice(socket: server.socketPath)
            arguments[arguments.count - 3] += ",reconnect-ms=100"  // the chardev: QEMU reconnects to a restarted daemon
            arguments[arguments.count - 1] += ",id=viommu0"
        }
        arguments += placements.flatMap(\.devices)
        let machine = try Machine(qemu: files.qemu, arguments: arguments, guest: files, tag: tag,
                                  kernelArguments: ["iommu.strict=1"] + kernelArguments)
        return DiskMachine(machine: machine, daemon: daemon, images: images)
    }

    /// One of vhost-user-iommu-pci's counters (qemu/patches 0004: x-translations, x-refused, x-log-entries,
    /// x-doorbells, …), read with qom-get from the device that `startDiskMachine` named viommu0.
    func frontendCounter(_ machine: Machine, _ name: String) throws -> Int {
        try #require(try machine.qmpValue("qom-get", arguments: ["path": "/machine/peripheral/viommu0/virtio-backend", "property": name]) as? Int,
                     "qom-get \(name)")
    }
}

/// What `startDiskMachine` started: the VM, the daemon behind vhost-user-iommu-pci (nil for the built-in
/// device), and each disk's image by drive id with what it held before the guest ran.
struct DiskMachine {
    var machine: Machine
    var daemon: Daemon?
    var images: [String: (path: String, prefill: [UInt8])]
}
