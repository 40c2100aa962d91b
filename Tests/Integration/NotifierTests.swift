import DaemonTestSupport
import Foundation
import Glibc
import TestSupport
import Testing

/// Issue 15 §3, "Notifier consumers": QEMU's IOMMU notifiers are how a vhost back-end's device IOTLB learns
/// that a translation is gone. The consumer here is real: a virtio-net device (`iommu_platform=on`) whose
/// data path is DPDK's vhost library in `dpdk-testpmd` (the net_vhost PMD with `iommu-support=1`, a
/// vhost-user back-end with a device IOTLB), behind `vhost-user-iommu-pci`, in a guest booted with
/// `iommu.strict=1` (every DMA unmap is an UNMAP request at once).
///
/// The rules checked:
/// - vhost-user.rst, "IOMMU support": with VIRTIO_F_IOMMU_PLATFORM the back-end translates ring and buffer
///   IOVAs through its IOTLB; a miss is a `VHOST_USER_BACKEND_IOTLB_MSG` (MISS) that QEMU answers with a
///   `VHOST_USER_IOTLB_MSG` UPDATE (`vhost_device_iotlb_miss`, which translates through our IOMMU region);
///   an unmapped range is a `VHOST_USER_IOTLB_MSG` INVALIDATE, sent with REPLY_ACK so that QEMU returns only
///   once the back-end has processed it.
/// - QEMU's IOMMU notifier semantics: vhost registers an UNMAP notifier on the endpoint's IOMMU region
///   (`vhost_iommu_region_add`), and `vhost_iommu_unmap_notify` turns each notification into one INVALIDATE.
///   The mirror notifies each UNMAP as power-of-two-aligned pieces (`vuiommu_notify`).
/// - virtio-iommu (virtio 1.4 §5.13.6.6, UNMAP): once the device completes an UNMAP, the endpoint can no
///   longer access the range. The daemon completes an UNMAP of an endpoint with an UNMAP notifier only after
///   QEMU has run the notifiers and acknowledged the log (docs/frontend-protocol.md §6, rule 2); QEMU runs
///   the notifiers synchronously, so the back-end has acknowledged the invalidation before the guest sees
///   the UNMAP complete.
///
/// What is observed, with no sleeps and nothing the test infers from timing: the guest's pings answered by
/// testpmd's icmpecho engine (data both ways through the back-end's IOTLB); the daemon's MAP/UNMAP counts and
/// domains; QEMU's trace (the log backend, `-D`): the notifier flags vhost registered, every UNMAP
/// notification followed at once by its INVALIDATEs and the back-end's acknowledgements, every IOTLB miss
/// answered by an UPDATE; and testpmd's own log (`lib.vhost.config:debug`) of every IOTLB message it read.
///
/// Not covered here: MAP notifications and replay. vhost registers UNMAP notifiers only and never replays
/// (`vhost_iommu_region_add`), so `vuiommu_notify_map`, `vuiommu_replay` and the ATTACH replay stay idle; their
/// consumers are VFIO (`vfio_iommu_map_notify`, `memory_region_iommu_replay`) and vhost-vdpa, which need a
/// host VFIO device or /dev/vhost-vdpa-N. The device-IOTLB variant (IOMMU_NOTIFIER_DEVIOTLB_UNMAP, a guest that
/// enables ATS on the device) is refused by the mirror, and Linux's virtio-iommu driver never enables ATS.
@Suite(.serialized, .enabled(if: GuestFiles.unavailableReason == nil, "\(GuestFiles.unavailableReason ?? "")"),
       .enabled(if: TestPMD.unavailableReason == nil, "\(TestPMD.unavailableReason ?? "")"))
struct NotifierTests: GuestWorkload {
    /// The virtio-net device: 00:03.0 on the root bus, requester ID 0x18 (its IOMMU region is named after
    /// its devfn, 24).
    static let netBDF = "0000:00:03.0", netEndpoint = 0x18
    static let guestMAC = "52:54:00:12:34:56"
    static let pings = 20

    // Spec: vhost-user.rst "IOMMU support" (IOTLB MISS/UPDATE/INVALIDATE with REPLY_ACK); QEMU's IOMMU
    // notifiers (vhost registers IOMMU_NOTIFIER_UNMAP; vhost_iommu_unmap_notify sends one INVALIDATE per
    // notification); virtio 1.4 §5.13.6.6 (UNMAP) and docs/frontend-protocol.md §6 rule 2.
    @Test func vhostUserDeviceIOTLBIsInvalidatedForEveryUnmap() throws {
        let started = ContinuousClock.now
        let files = try GuestFiles.install()
        let testpmdPath = try TestPMD.install()
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("vhost-iommu-notifiers-\(getpid())")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let tracePath = folder.appendingPathComponent("qemu-trace.log").path

        let daemon = try Daemon(["--endpoint", "\(Self.netEndpoint)", "--bypass", "off", "--log-level", "info"],
                                polling: .daemonDefault, executable: RealGuestTests.daemonExecutable)
        // QEMU connects to the vhost-user back-end at start-up, so testpmd comes first. It forwards nothing
        // until `start`: until then it only serves vhost-user messages (IOTLB ones included) on its own thread,
        // and its forwarding core does not spin.
        let testpmd = try TestPMD(executable: testpmdPath, socket: "/tmp/vhost-iommu-net-\(getpid()).sock")
        try testpmd.waitForPrompt()

        let machine = try Machine(qemu: files.qemu, arguments: RealGuestTests.memory("512M") + ["-boot", "strict=on"]
                                  + FrontendDeviceTests.iommuDevice(socket: daemon.socketPath) + [
                                      "-chardev", "socket,id=net0chr,path=\(testpmd.socket)",
                                      "-netdev", "vhost-user,id=net0,chardev=net0chr",
                                      // romfile= : no iPXE ROM (SeaBIOS would run it, and the image is not installed).
                                      "-device", "virtio-net-pci,id=nic0,netdev=net0,bus=pcie.0,addr=03.0,mac=\(Self.guestMAC),"
                                          + "iommu_platform=on,disable-legacy=on,romfile=",
                                      "-D", tracePath,
                                  ] + IOTLBTrace.events.flatMap { ["-trace", $0] },
                                  guest: files, tag: "notifiers-\(getpid())", kernelArguments: ["iommu.strict=1"])
        try machine.waitFor("@@READY")
        let booted = ContinuousClock.now
        #expect(try machine.run("driver /sys/bus/virtio/devices/virtio0/driver") == ["@@DRIVER /sys/bus/virtio/devices/virtio0/driver virtio_iommu"])
        let pci = try #require(try machine.run("net_pci eth0").first { $0.hasPrefix("@@NETPCI eth0 ") })
        try #require(pci == "@@NETPCI eth0 \(Self.netBDF)", "the guest's eth0 is not the virtio-net device: \(pci)")
        #expect(try groupType(machine, Self.netBDF) == "DMA", "strict translated DMA for the virtio-net device")

        // Traffic both ways: icmpecho answers the guest's ARP requests and pings. A reply whose guest buffer
        // misses the back-end's IOTLB cannot be enqueued until QEMU answers the miss, so testpmd retries
        // (up to 1 s per burst) instead of dropping it.
        try testpmd.command("set fwd icmpecho retry")
        try testpmd.command("set burst tx delay 1000 retry 1000")
        try testpmd.command("start", until: " - ports=")
        let before = try requestCounts(daemon)
        let statsBefore = try netStats(machine)
        try machine.run("ip link set eth0 up && ip addr add 10.0.0.1/24 dev eth0")
        let ping = reportFields(try #require(try machine.run("net_ping -c \(Self.pings) -i 0.2 -W 5 10.0.0.2")
            .first { $0.hasPrefix("@@PING ") }, "no ping summary\n\(machine.log)"))
        let statsAfter = try netStats(machine)
        try testpmd.command("stop", until: "Done.")
        let port = try testpmd.portStats()
        let after = try requestCounts(daemon)
        let inDomains = try domains(daemon)

        // Packets flowed both ways through the back-end's IOTLB: every ping was answered (the back-end read
        // each request from guest memory and wrote each reply into it, through translations QEMU answered
        // from our mirror), and the counters on both sides agree that nothing was lost.
        #expect(ping["transmitted"] == "\(Self.pings)" && ping["received"] == "\(Self.pings)", "ping: \(ping)\n\(machine.log)")
        let sent = (statsAfter["tx_packets"] ?? 0) - (statsBefore["tx_packets"] ?? 0)
        let received = (statsAfter["rx_packets"] ?? 0) - (statsBefore["rx_packets"] ?? 0)
        #expect(sent >= Self.pings && received >= Self.pings, "guest eth0: +\(sent) sent, +\(received) received")
        #expect(port.rx >= sent && port.tx >= Self.pings, "testpmd port 0: \(port); guest sent \(sent)")
        #expect(statsAfter["tx_errors"] == 0 && statsAfter["rx_errors"] == 0, "guest eth0: \(statsAfter)")

        // The daemon answered the endpoint's MAPs and UNMAPs (one of each per packet buffer with
        // iommu.strict=1), and the endpoint is in a domain.
        let maps = delta(after, before, "MAP/OK"), unmaps = delta(after, before, "UNMAP/OK")
        #expect(maps > 0 && unmaps > 0, "during the pings: MAP +\(maps), UNMAP +\(unmaps): \(after)")
        #expect(failures(after).isEmpty, "\(after)")
        #expect(inDomains.contains { $0.endpoints == [Self.netEndpoint] && $0.mappings > 0 }, "\(inDomains)")

        // The operator detaches the endpoint (bypass off): QEMU notifies an UNMAP of what the endpoint could
        // reach (the domain's mapped extent), and the back-end must lose every translation, its rings' included
        // (vhost-user.rst: after an INVALIDATE the back-end translates again, and a refused translation stops
        // it; virtio 1.4 §5.13.6.4: a detached endpoint's DMA faults when bypass is off). testpmd then
        // transmits, which makes the back-end walk the guest's receive ring: the translations it asks for, and
        // any packet the guest receives, tell whether it still had the ring.
        let mark = try traceSize(tracePath)
        let testpmdMark = testpmd.output.count
        let detached = try daemon.control(#"{"op":"detach","endpoint":\#(Self.netEndpoint)}"#)
        try #require(detached["ok"] as? Bool == true, "\(detached)")
        // QEMU acknowledged the DETACH (and ran its notifiers) before the daemon replied.
        let detachNotification = try IOTLBTrace(tracePath, region: Self.netEndpoint, mark: mark).unmapNotificationsAfterMark.last
        try #require(detachNotification != nil, "no UNMAP notification for the detach")
        let receivedBeforeDetach = try netStats(machine)["rx_packets"] ?? 0
        try testpmd.command("set fwd txonly")
        try testpmd.command("set eth-peer 0 \(Self.guestMAC)")
        try testpmd.command("start", until: " - ports=")
        // DPDK's answer to an INVALIDATE that covers a ring: it drops the ring's translation and disables the
        // queue (testpmd prints a queue state event); it then asks for nothing until the driver sets it up anew.
        func queuesStopped() -> Bool { testpmd.output.dropFirst(testpmdMark).contains("queue state event") }
        var afterDetach: [IOTLBTrace.Refusal] = []
        var receivedAfterDetach = receivedBeforeDetach
        // QEMU's trace file and the guest's counters give no signal to wait on: they are read every 50 ms.
        _ = try waitUntil(.seconds(20), every: .milliseconds(50)) {
            afterDetach = try IOTLBTrace(tracePath, region: Self.netEndpoint, mark: mark).refusalsAfterMark
                .filter { $0.sid == Self.netEndpoint }
            receivedAfterDetach = try netStats(machine)["rx_packets"] ?? 0
            return !afterDetach.isEmpty || receivedAfterDetach > receivedBeforeDetach || queuesStopped()
        }
        try testpmd.command("stop", until: "Done.")
        let traceSinceDetach = try traceText(tracePath, from: mark)
        try #require(!afterDetach.isEmpty || receivedAfterDetach > receivedBeforeDetach || queuesStopped(), """
            the back-end neither reached for guest memory after the detach (no translation asked, no packet) nor \
            stopped its queues; \
            QEMU's trace since:
            \(traceSinceDetach.suffix(3000))
            testpmd: \(testpmd.output.suffix(3000))
            """)
        // The rings' IOVAs, asked only now: for a started vhost device QEMU's x-query-virtio-queue-status
        // reads the ring's state with GET_VRING_BASE, which stops the ring in the back-end.
        let rings = try (0...1).map { try ringRanges(machine, queue: $0) }
        let outsideRings = afterDetach.filter { refusal in !rings.joined().contains { $0.contains(refusal.address) } }
        // A DETACH's UNMAP once went out as [0, 2^64-1] with addr_mask UINT64_MAX, which vhost sends as an
        // INVALIDATE of size 0 and DPDK ignores: the back-end kept its ring translations (qemu/patches 0004 now
        // notifies the domain's extent, and a whole-space notification as two halves).
        #expect(outsideRings.isEmpty, """
            after the detach the back-end asked for \(outsideRings.count) translations outside the rings \
            \(rings.joined().map(\.description)): \(outsideRings.prefix(4).map(\.description)) — it read the \
            rings through translations the detach should have invalidated
            """)
        #expect(receivedAfterDetach == receivedBeforeDetach, "packets reached the detached endpoint: \(receivedAfterDetach - receivedBeforeDetach)")

        machine.send("poweroff -f")
        #expect(machine.waitForExit() == 0, "QEMU exit\n\(machine.log)")
        #expect(daemon.waitForExit(timeout: .seconds(20)) == 0, "daemon exit\n\(daemon.log)")
        #expect(testpmd.quit() == 0, "testpmd exit\n\(testpmd.output.suffix(4000))")
        let finished = ContinuousClock.now

        // QEMU's trace, read whole now that QEMU is gone.
        let trace = try IOTLBTrace(tracePath, region: Self.netEndpoint, mark: mark)
        // vhost registered an UNMAP notifier (IOMMU_NOTIFIER_UNMAP = 0x1) on the endpoint's region and never
        // asked for MAP notifications (0x2), so the mirror never notified a MAP there; it removed the notifier
        // when QEMU stopped the device.
        #expect(trace.flagChanges.first.map { $0.old == 0 && $0.new == 0x1 } == true, "notifier flags: \(trace.flagChanges)")
        #expect(trace.flagChanges.allSatisfy { $0.new & 0x2 == 0 }, "notifier flags: \(trace.flagChanges)")
        #expect(trace.mapNotifications == 0, "MAP notifications on the endpoint's region: \(trace.mapNotifications)")
        // Every UNMAP notification was followed at once (the main loop, under the BQL) by one INVALIDATE per
        // power-of-two piece and the back-end's REPLY_ACK for each; every miss by an UPDATE and its ack
        // (or by nothing when our translation refused); no IOTLB message outside these.
        #expect(trace.violations.isEmpty, "IOTLB messages out of order:\n\(trace.violations.prefix(10).joined(separator: "\n"))")
        #expect(trace.unexplainedMessages == 0, "IOTLB messages neither a miss's UPDATE nor a notification's INVALIDATE: \(trace.unexplainedMessages)")
        #expect(trace.answeredMisses > 0, "no IOTLB miss of the back-end was answered")
        // Every UNMAP the daemon completed for the endpoint was notified exactly once, and so was the detach:
        // it is the last notification (afterwards the endpoint is in no domain, and the emptied domain is
        // gone, so the guest's UNMAPs fail).
        let unmapsCompleted = try #require(Self.finalCount(daemon.log, "UNMAP/OK"), "no counters at the daemon's exit\n\(daemon.log)")
        #expect(trace.unmapNotifications.count == unmapsCompleted + 1,
                "the daemon completed \(unmapsCompleted) UNMAPs and one detach; QEMU notified \(trace.unmapNotifications.count) UNMAPs")
        #expect(trace.unmapNotifications.last.map { $0 == detachNotification! } == true, "the last UNMAP notification is the detach's")
        // No refusal for the endpoint before the detach: every miss the back-end had was in our mappings.
        let refusedBefore = trace.refusalsBeforeMark.filter { $0.sid == Self.netEndpoint }
        #expect(refusedBefore.isEmpty, "refused before the detach: \(refusedBefore.prefix(4).map(\.description))")
        // The back-end read every IOTLB message QEMU wrote and processed each one successfully.
        let read = testpmd.output.components(separatedBy: "read message VHOST_USER_IOTLB_MSG").count - 1
        let processed = testpmd.output.components(separatedBy: "processing VHOST_USER_IOTLB_MSG succeeded").count - 1
        #expect(read == trace.iotlbMessages && processed == trace.iotlbMessages,
                "QEMU wrote \(trace.iotlbMessages) IOTLB messages; testpmd read \(read), processed \(processed)")

        // Nothing QEMU complained about (a failed invalidation or update is "Fail to … device iotlb"), beyond
        // the AHCI refusal at boot that every bypass-off run has.
        let unknown = "qemu-system-x86_64: vhost-user-iommu: refusing DMA from 00:1f.2: endpoint unknown to the back-end"
        let complaints = machine.transcript.filter { $0.contains("qemu-system-x86_64:") && $0 != unknown }
        #expect(complaints.isEmpty, "QEMU said:\n\(complaints.joined(separator: "\n"))")
        #expect(daemon.errorLines.isEmpty, "daemon log errors:\n\(daemon.errorLines.joined(separator: "\n"))")

        print("""
            notifiers: virtio-net over DPDK vhost-user (iommu-support=1) behind vhost-user-iommu-pci: \
            \(ping["received"] ?? "?")/\(ping["transmitted"] ?? "?") pings answered, testpmd \(port); \
            daemon MAP +\(maps) UNMAP +\(unmaps) during the pings, \(unmapsCompleted) UNMAPs in all; QEMU: \
            \(trace.unmapNotifications.count) UNMAP notifications → \(trace.invalidations) INVALIDATEs acknowledged \
            by the back-end, \(trace.answeredMisses) misses answered; testpmd read \(read) IOTLB messages; \
            detach: UNMAP notified \(detachNotification.map { String(format: "[0x%llx, 0x%llx]", $0.start, $0.end) } ?? "?"), \
            then \(afterDetach.count) refused translations (\(outsideRings.count) outside the rings, first \
            \(afterDetach.first?.description ?? "none")), \(receivedAfterDetach - receivedBeforeDetach) packets received; \
            boot \(seconds(booted - started)) s, total \(seconds(finished - started)) s
            """)
    }

    private func traceText(_ path: String, from offset: Int) throws -> String {
        let data = try Data(contentsOf: URL(fileURLWithPath: path))
        return String(decoding: data.dropFirst(offset), as: UTF8.self)
    }

    private func traceSize(_ path: String) throws -> Int {
        try #require((try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue)
    }

    /// The guest interface's counters (scripts/guest/init net_stats).
    private func netStats(_ machine: Machine) throws -> [String: Int] {
        let line = try #require(try machine.run("net_stats eth0").first { $0.hasPrefix("@@NETSTATS eth0 ") })
        return reportFields(line).compactMapValues { Int($0) }
    }

    /// The IOVA ranges of one virtqueue's descriptor table, driver area and device area, as the guest
    /// programmed them (QMP x-query-virtio-queue-status; split ring sizes, virtio 1.4 §2.7).
    private func ringRanges(_ machine: Machine, queue: Int) throws -> [IOVARange] {
        let status = try machine.qmp("x-query-virtio-queue-status", arguments: ["path": "/machine/peripheral/nic0/virtio-backend", "queue": queue])
        func value(_ key: String) throws -> UInt64 { try #require((status[key] as? NSNumber)?.uint64Value, "\(key): \(status)") }
        let num = try value("vring-num")
        return [IOVARange(try value("vring-desc"), 16 * num), IOVARange(try value("vring-avail"), 6 + 2 * num),
                IOVARange(try value("vring-used"), 6 + 8 * num)]
    }

    /// A counter from the last "statistics: requests [...]" line the daemon logged (at its exit).
    static func finalCount(_ log: String, _ key: String) -> Int? {
        guard let line = log.split(separator: "\n").last(where: { $0.contains("statistics: requests [") }) else { return nil }
        guard let field = line.split(separator: " ").first(where: { $0.hasPrefix(key + "=") || $0.hasPrefix("[" + key + "=") }) else { return 0 }
        return Int(field.split(separator: "=").last?.trimmingCharacters(in: CharacterSet(charactersIn: "]")) ?? "")
    }
}

/// `[start, start + length)` of guest IOVA space.
struct IOVARange: CustomStringConvertible {
    var start: UInt64, length: UInt64
    init(_ start: UInt64, _ length: UInt64) { (self.start, self.length) = (start, length) }
    func contains(_ address: UInt64) -> Bool { address >= start && address - start < length }
    var description: String { String(format: "[0x%llx, +0x%llx)", start, length) }
}

/// QEMU's trace (log backend) of the IOTLB traffic of one endpoint's vhost device, read in order.
///
/// Under the BQL the main loop runs, one at a time: the mirror's UNMAP notification
/// (`vhost_user_iommu_notify_unmap`), which calls `vhost_iommu_unmap_notify` once per power-of-two piece, each
/// writing one IOTLB message with NEED_REPLY (`vhost_user_write req:22 flags:0x9`) and reading the back-end's
/// ack (`vhost_user_read req:22 flags:0x5`); and a back-end's miss (`vhost_iotlb_miss … step 1`), answered by
/// one UPDATE and its ack before `step 2` (or by nothing when the translation is refused). Refusals
/// (`vhost_user_iommu_refused`) come from whichever thread translates and are kept apart.
struct IOTLBTrace {
    static let events = ["vhost_user_iommu_notify_unmap", "vhost_user_iommu_notify_map", "vhost_user_iommu_notify_flag_changed",
                         "vhost_user_iommu_refused", "vhost_iotlb_miss", "vhost_user_write", "vhost_user_read"]

    struct Refusal: CustomStringConvertible {
        var sid: Int, address: UInt64, flag: Int
        var description: String { String(format: "sid=0x%x addr=0x%llx flag=%d", sid, address, flag) }
    }

    private(set) var unmapNotifications: [(start: UInt64, end: UInt64)] = []
    private(set) var mapNotifications = 0
    private(set) var flagChanges: [(old: Int, new: Int)] = []
    private(set) var invalidations = 0
    private(set) var answeredMisses = 0
    private(set) var refusedMisses = 0
    private(set) var iotlbMessages = 0
    private(set) var unexplainedMessages = 0
    private(set) var violations: [String] = []
    /// What came before and after byte `mark` of the trace.
    private(set) var refusalsBeforeMark: [Refusal] = []
    private(set) var refusalsAfterMark: [Refusal] = []
    private(set) var unmapNotificationsAfterMark: [(start: UInt64, end: UInt64)] = []

    private enum Event: Equatable {
        case unmap(start: UInt64, end: UInt64), map, flags(old: Int, new: Int), miss(step: Int), write, read, other
    }

    /// `region`: the endpoint whose IOMMU region's notifications count (the region's name ends in its devfn).
    init(_ path: String, region endpoint: Int, mark: Int = .max) throws {
        let text = try Data(contentsOf: URL(fileURLWithPath: path))
        let suffix = "-\(endpoint & 0xff)"
        var events: [Event] = []
        var position = 0
        for bytes in text.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            let afterMark = position >= mark
            position += bytes.count + 1
            let line = String(decoding: bytes, as: UTF8.self)
            let words = line.split(separator: " ")
            guard let name = words.first else { continue }
            func field(_ key: String) -> String? {
                words.first { $0.hasPrefix(key + "=") }.map { String($0.dropFirst(key.count + 1)) }
            }
            func hex(_ key: String) -> UInt64? { field(key).flatMap { UInt64($0.dropFirst(2), radix: 16) } }
            let ours = field("mr")?.hasSuffix(suffix) == true
            switch name {
            case "vhost_user_iommu_notify_unmap" where ours:
                guard let start = hex("virt_start"), let end = hex("virt_end") else { violations.append("unreadable: \(line)"); continue }
                events.append(.unmap(start: start, end: end))
                if afterMark { unmapNotificationsAfterMark.append((start, end)) }
            case "vhost_user_iommu_notify_map" where ours:
                events.append(.map)
            case "vhost_user_iommu_notify_flag_changed" where ours:
                events.append(.flags(old: Int(hex("old") ?? 0), new: Int(hex("new") ?? 0)))
            case "vhost_user_iommu_refused":
                guard let sid = hex("sid"), let address = hex("addr"), let flag = field("flag").flatMap({ Int($0) }) else { continue }
                let refusal = Refusal(sid: Int(sid), address: address, flag: flag)
                if afterMark { refusalsAfterMark.append(refusal) } else { refusalsBeforeMark.append(refusal) }
            case "vhost_iotlb_miss":
                events.append(.miss(step: words.last.flatMap { Int($0) } ?? -1))
            case "vhost_user_write" where words.count > 1 && words[1] == "req:22":
                events.append(.write)
                iotlbMessages += 1
            case "vhost_user_read" where words.count > 1 && words[1] == "req:22":
                events.append(.read)
            default:
                break
            }
        }

        var i = 0
        func next(_ offset: Int) -> Event { i + offset < events.count ? events[i + offset] : .other }
        while i < events.count {
            switch events[i] {
            case .unmap(let start, let end):
                unmapNotifications.append((start, end))
                let pieces = Self.pieces(start, end)
                var acknowledged = 0
                while acknowledged < pieces && next(1 + 2 * acknowledged) == .write && next(2 + 2 * acknowledged) == .read {
                    acknowledged += 1
                }
                if acknowledged != pieces {
                    violations.append(String(format: "UNMAP [0x%llx, 0x%llx]: %d pieces, %d acknowledged INVALIDATEs", start, end, pieces, acknowledged))
                }
                invalidations += acknowledged
                i += 1 + 2 * acknowledged
            case .miss(1):
                if next(1) == .write && next(2) == .read && next(3) == .miss(step: 2) {
                    answeredMisses += 1
                    i += 4
                } else if next(1) == .miss(step: 2) {
                    refusedMisses += 1
                    i += 2
                } else {
                    violations.append("miss \(i): followed by \(next(1)), \(next(2)), \(next(3))")
                    i += 1
                }
            case .write, .read:
                unexplainedMessages += 1
                i += 1
            case .map:
                mapNotifications += 1
                i += 1
            case .flags(let old, let new):
                flagChanges.append((old, new))
                i += 1
            case .miss(let step):
                violations.append("miss step \(step) without step 1")
                i += 1
            case .other:
                i += 1
            }
        }
    }

    /// How many notifications `vuiommu_notify` makes for [start, end]: the whole space as two halves, else
    /// power-of-two-aligned pieces (QEMU's dma_aligned_pow2_mask with 64 address bits).
    static func pieces(_ start: UInt64, _ end: UInt64) -> Int {
        if start == 0 && end == .max { return 2 }
        var start = start, count = 0
        while true {
            let alignment: UInt64 = start == 0 ? .max : (start & (~start &+ 1)) &- 1
            let size = end &- start
            let mask = alignment <= size ? alignment
                : (size == .max ? .max : (UInt64(1) << (63 - (size &+ 1).leadingZeroBitCount)) &- 1)
            count += 1
            if mask == .max || start &+ mask == end { return count }
            start &+= mask &+ 1
        }
    }
}

/// DPDK's testpmd as the vhost-user back-end of one virtio-net device: the net_vhost PMD with a device IOTLB
/// (`iommu-support=1`), interactive, without hugepages (`--no-huge`: plain memory, which the vhost library
/// is fine with since it maps the guest's memory from QEMU's file descriptors).
final class TestPMD {
    let process = Process()
    let socket: String
    private let prefix: String
    private let input = Pipe()
    /// testpmd's output (standard output and error), read as it comes.
    private let reader: OutputReader

    /// Why testpmd cannot run here: missing, and installing it (scripts/setup-dpdk) needs root.
    static let unavailableReason: String? = {
        if getuid() == 0 || testpmdInPath != nil { return nil }
        return "dpdk-testpmd is not installed and installing it needs root (apt-get); run scripts/setup-dpdk as root"
    }()

    private static var testpmdInPath: String? {
        (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":")
            .map { "\($0)/dpdk-testpmd" }.first { access($0, X_OK) == 0 }
    }

    /// Runs scripts/setup-dpdk (it does nothing when testpmd is there); returns testpmd's path.
    static func install() throws -> String {
        let result = try runCommand(URL(fileURLWithPath: GuestFiles.projectRoot + "/scripts/setup-dpdk"), [])
        guard result.status == 0, !result.lastLine.isEmpty else {
            throw MachineError(description: "scripts/setup-dpdk failed with status \(result.status)\n\(result.errors.suffix(4000))")
        }
        return result.lastLine
    }

    /// Starts testpmd serving `socket`. Two lcores: the main one reads commands; the forwarding one
    /// busy-polls only between `start` and `stop`. Its output is line-buffered (stdbuf) so that each
    /// command's answer can be read as it comes.
    init(executable: String, socket: String) throws {
        self.socket = socket
        prefix = "vhost-iommu-test-\(getpid())"
        unlink(socket)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/stdbuf")
        process.arguments = ["-oL", "-eL", executable, "-l", "0-1", "--no-pci", "--no-huge", "--no-shconf", "--no-telemetry", "-m", "256",
                             "--file-prefix", prefix, "--vdev", "net_vhost0,iface=\(socket),iommu-support=1",
                             // "read message VHOST_USER_IOTLB_MSG" and its processing are logged at debug level.
                             "--log-level=lib.vhost.config:debug",
                             "--", "-i", "--total-num-mbufs=4096"]
        let output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        reader = OutputReader(output.fileHandleForReading)
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        unlink(socket)
        rmdir("/var/run/dpdk/\(prefix)")
    }

    /// Everything testpmd printed so far.
    var output: String { reader.text }

    private var count: Int { reader.count }

    /// Waits until the output from byte `from` on satisfies `predicate`.
    private func wait(from: Int, timeout: Duration, _ what: String, until predicate: (Substring) -> Bool) throws -> Substring {
        guard let text = reader.wait(from: from, timeout: timeout, until: predicate) else {
            throw MachineError(description: "testpmd: no \(what)\n\(reader.text.suffix(4000))")
        }
        return text
    }

    /// Waits for the vhost-user socket and the first prompt.
    func waitForPrompt() throws {
        _ = try wait(from: 0, timeout: .seconds(60), "prompt") { $0.contains("testpmd> ") }
        try #require(access(socket, F_OK) == 0, "testpmd did not create \(socket)")
    }

    /// Runs one interactive command; waits for `until` in its output, or for the next prompt.
    func command(_ line: String, until: String = "testpmd> ", timeout: Duration = .seconds(30)) throws {
        let mark = count
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
        _ = try wait(from: mark, timeout: timeout, "\"\(until)\" after \"\(line)\"") { $0.contains(until) }
    }

    /// Port 0's packet counters: `rx` what the back-end took from the guest, `tx` what it gave the guest.
    func portStats() throws -> (rx: Int, tx: Int) {
        let mark = count
        input.fileHandleForWriting.write(Data("show port stats 0\n".utf8))
        let text = try wait(from: mark, timeout: .seconds(30), "port statistics") { $0.contains("Tx-bps:") }
        func value(_ key: String) -> Int? {
            guard let range = text.range(of: key + ":") else { return nil }
            return Int(text[range.upperBound...].drop { $0 == " " }.prefix { $0.isNumber })
        }
        return (try #require(value("RX-packets"), "\(text)"), try #require(value("TX-packets"), "\(text)"))
    }

    /// Quits testpmd; returns its exit status (SIGKILL after 30 s). Its output ends when it is gone.
    func quit() -> Int32 {
        input.fileHandleForWriting.write(Data("quit\n".utf8))
        if !reader.waitForEnd(timeout: .seconds(30)) {
            kill(process.processIdentifier, SIGKILL)
            reader.waitForEnd(timeout: .seconds(5))
        }
        process.waitUntilExit()
        return process.terminationStatus
    }
}
