import DaemonTestSupport
import SystemPackage
import Foundation
import Glibc
import TestSupport
import Testing
import VhostUser
import VhostUserTestSupport
import VirtioIOMMU

/// End-to-end: the real `vhost-iommu` executable, driven over a real socket with memfd guest memory
/// and eventfds, in QEMU's message order.
@Suite struct DaemonTests {
    // The command line follows QEMU's back-end program conventions.
    // Spec: vhost-user.rst "Backend program conventions" (--print-capabilities) and README "Command line" (one line, EX_USAGE).
    @Test func printCapabilitiesAndUsageErrors() throws {
        func run(_ arguments: [String]) throws -> (Int32, String, String) {
            let result = try runDaemonCommand(arguments)
            return (result.status, result.output, result.errors)
        }
        let (status, out, _) = try run(["--print-capabilities"])
        #expect(status == 0)
        let json = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
        #expect(json?["type"] as? String == "iommu")
        for bad in [[], ["--socket-path", "/tmp/x", "--fd", "3"], ["--socket-path", "/tmp/x", "--endpoint", "1-0"],
                    ["--socket-path", "/tmp/x", "--page-size-mask", "0"], ["--socket-path", "/tmp/x", "--nonsense"]] {
            let (status, _, err) = try run(bad)
            #expect(status == 64, "\(bad)")  // EX_USAGE
            #expect(err.split(separator: "\n").count == 1, "one line: \(err)")
        }
    }

    // Handshake and config read: the offered features (virtio 1.4 §5.13.3: all but the legacy BYPASS,
    // whose use D2 discourages; not F_PASID, docs/pasid-extension.md §2, as no endpoint has PASIDs and no
    // store is named; the transport bits the engine implements, §6 and vhost-user.rst; never
    // ACCESS_PLATFORM) and the config space, read at the offsets of §5.13.4.
    @Test func handshakeAndConfig() throws {
        let daemon = try Daemon(["--input-range", "0-0xffffffffff"])
        let frontend = try daemon.connect()
        let memory = try SharedMemory(size: 1 << 20)
        let queues = try (0..<2).map { try DriverQueue(memory: memory, index: $0, size: 256) }
        let features = try frontend.initialize(queues: queues)
        typealias S = IOMMUSpec
        typealias V = VirtioSpec
        #expect(features == S.VIRTIO_IOMMU_F_INPUT_RANGE | S.VIRTIO_IOMMU_F_DOMAIN_RANGE | S.VIRTIO_IOMMU_F_MAP_UNMAP
                | S.VIRTIO_IOMMU_F_PROBE | S.VIRTIO_IOMMU_F_MMIO | S.VIRTIO_IOMMU_F_BYPASS_CONFIG
                | V.VIRTIO_F_INDIRECT_DESC | V.VIRTIO_F_EVENT_IDX | VhostUserSpec.VHOST_USER_F_PROTOCOL_FEATURES | V.VIRTIO_F_VERSION_1)
        #expect(features & V.VIRTIO_F_ACCESS_PLATFORM == 0)
        let config = try frontend.getConfig(size: 40)
        try #require(config.count == 40)
        #expect(config.le(UInt64.self, at: S.configPageSizeMask) == 0xffff_ffff_ffff_f000)
        #expect(config.le(UInt64.self, at: S.configInputRangeStart) == 0)
        #expect(config.le(UInt64.self, at: S.configInputRangeEnd) == 0xff_ffff_ffff)
        #expect(config.le(UInt32.self, at: S.configDomainRangeStart) == 0)
        #expect(config.le(UInt32.self, at: S.configDomainRangeEnd) == UInt32.max)
        #expect(config.le(UInt32.self, at: S.configProbeSize) == 512)
        #expect(config[S.configBypass] == 1)
        #expect(config[37...].allSatisfy { $0 == 0 })  // reserved
        #expect(try frontend.getU64(.getQueueNum) == 2)
        // §5.13.4.1: only bypass is writable, once BYPASS_CONFIG is negotiated; QEMU sends the whole space.
        try frontend.start(features: features, memory: [memory], queues: queues)
        var bytes = config
        bytes[S.configBypass] = 0
        #expect(try frontend.setConfig(bytes))
        #expect(try frontend.getConfig(size: 40)[S.configBypass] == 0)
        bytes[S.configPageSizeMask] = 0xff
        #expect(try frontend.setConfig(bytes) == false)  // page_size_mask is read-only
        bytes[S.configPageSizeMask] = 0
        bytes[S.configBypass] = 2
        #expect(try frontend.setConfig(bytes) == false)  // D6: only 0 or 1
        #expect(try frontend.getConfig(size: 40)[S.configBypass] == 0)
    }

    // Every request type, good and bad (virtio 1.4 §5.13.6), the status bytes as the spec numbers them.
    @Test func everyRequestType() throws {
        let daemon = try Daemon()
        let guest = try Guest(daemon)
        let endpoint: UInt32 = 0x10
        typealias S = IOMMUSpec
        #expect(guest.statusByte(AttachRequest(domain: 1, endpoint: endpoint).encoded) == S.VIRTIO_IOMMU_S_OK)
        #expect(guest.statusByte(AttachRequest(domain: 1, endpoint: 0x1_0000).encoded) == S.VIRTIO_IOMMU_S_NOENT)
        #expect(guest.statusByte(AttachRequest(domain: 1, endpoint: endpoint, reserved: 1).encoded) == S.VIRTIO_IOMMU_S_INVAL)
        #expect(guest.statusByte(MapRequest(domain: 1, virtualStart: 0x1000, virtualEnd: 0x2fff, physicalStart: 0x40000, flags: 3).encoded) == S.VIRTIO_IOMMU_S_OK)
        #expect(guest.statusByte(MapRequest(domain: 1, virtualStart: 0x1800, virtualEnd: 0x2fff, physicalStart: 0, flags: 3).encoded) == S.VIRTIO_IOMMU_S_RANGE)
        #expect(guest.statusByte(MapRequest(domain: 1, virtualStart: 0xfee0_0000, virtualEnd: 0xfee0_0fff, physicalStart: 0, flags: 3).encoded) == S.VIRTIO_IOMMU_S_INVAL)
        #expect(guest.statusByte(MapRequest(domain: 9, virtualStart: 0x1000, virtualEnd: 0x1fff, physicalStart: 0, flags: 3).encoded) == S.VIRTIO_IOMMU_S_NOENT)
        #expect(guest.statusByte(UnmapRequest(domain: 1, virtualStart: 0x1000, virtualEnd: 0x1fff).encoded) == S.VIRTIO_IOMMU_S_RANGE)
        #expect(guest.statusByte(UnmapRequest(domain: 1, virtualStart: 0x1000, virtualEnd: 0x2fff).encoded) == S.VIRTIO_IOMMU_S_OK)
        #expect(guest.statusByte(DetachRequest(domain: 2, endpoint: endpoint).encoded) == S.VIRTIO_IOMMU_S_INVAL)
        #expect(guest.statusByte(DetachRequest(domain: 1, endpoint: endpoint).encoded) == S.VIRTIO_IOMMU_S_OK)
        // PROBE: the x86 MSI window as a RESV_MEM/MSI property, then zeroes, then the tail.
        // §5.13.6.8.2: struct virtio_iommu_probe_resv_mem { head: type RESV_MEM, length 20 (without the
        // head); subtype MSI; reserved[3]; start; end }, here the x86 MSI window 0xfee00000-0xfeefffff.
        let (used, reply) = guest.send(ProbeRequest(endpoint: endpoint).encoded, writable: 516)
        #expect(used == 516)
        #expect(reply.le(UInt16.self, at: 0) == IOMMUSpec.VIRTIO_IOMMU_PROBE_T_RESV_MEM)
        #expect(reply.le(UInt16.self, at: 2) == 20)
        #expect(reply[4] == IOMMUSpec.VIRTIO_IOMMU_RESV_MEM_T_MSI && reply[5..<8].allSatisfy { $0 == 0 })
        #expect(reply.le(UInt64.self, at: 8) == 0xfee0_0000 && reply.le(UInt64.self, at: 16) == 0xfeef_ffff)
        #expect(reply[24..<512].allSatisfy { $0 == 0 })  // no more properties: zeroes (§5.13.6.8.2)
        #expect(reply[512] == IOMMUSpec.VIRTIO_IOMMU_S_OK)
        // A short body is INVAL; an unknown type and a writable part without room for the tail get used length 0.
        #expect(guest.statusByte(Array(AttachRequest(domain: 1, endpoint: endpoint).encoded.prefix(12))) == S.VIRTIO_IOMMU_S_INVAL)
        #expect(guest.send([0x42, 0, 0, 0]).0 == 0)
        #expect(guest.send(AttachRequest(domain: 1, endpoint: endpoint).encoded, writable: 2).0 == 0)
        #expect(try daemon.requestCount("MAP", "OK") == 1)
        #expect(try daemon.requestCount("UNMAP", "RANGE") == 1)
        #expect(try daemon.stats()["unanswered"] as? Int == 2)
    }

    // Lazy-mode batches: 256 requests in one kick, all answered in order.
    // Spec: virtio 1.4 §2.7.13: many buffers made available before one notification; docs/vhost-user.md "Rings".
    @Test func twoHundredFiftySixPerKick() throws {
        let daemon = try Daemon()
        let guest = try Guest(daemon)
        #expect(guest.status(AttachRequest(domain: 3, endpoint: 0x18).encoded) == .ok)
        var heads: [UInt16] = []
        for i in 0..<255 as Range<UInt64> {
            heads.append(guest.requests.add(readable: [MapRequest(domain: 3, virtualStart: (i + 1) << 12, virtualEnd: ((i + 1) << 12) + 0xfff,
                                                                  physicalStart: i << 12, flags: 3).encoded], writable: [4], indirect: true))
        }
        heads.append(guest.requests.add(readable: [UnmapRequest(domain: 3, virtualStart: 0x1000, virtualEnd: 0x1fff).encoded],
                                        writable: [4], indirect: true))
        guest.requests.kickNow()
        let used = guest.requests.waitForUsed(256)
        #expect(used.map(\.head) == heads)
        #expect(used.allSatisfy { $0.length == 4 })
        #expect(heads.allSatisfy { guest.requests.reply(of: $0)[0] == Status.ok.rawValue })
        let domains = try daemon.control(#"{"op":"domains"}"#)["domains"] as? [[String: Any]]
        #expect(domains?.first?["mappings"] as? Int == 254)
    }

    // A translate on the control socket that fails raises the fault on the guest's event queue (§5.13.6.9).
    @Test func faultsReachTheEventQueue() throws {
        let daemon = try Daemon(["--bypass", "off"])
        let guest = try Guest(daemon)
        for _ in 0..<4 { guest.events.add(readable: [], writable: [24]) }
        guest.events.kickNow()
        #expect(guest.status(AttachRequest(domain: 5, endpoint: 0x20).encoded) == .ok)
        #expect(guest.status(MapRequest(domain: 5, virtualStart: 0x10000, virtualEnd: 0x10fff, physicalStart: 0x80000, flags: 1).encoded) == .ok)
        let good = try daemon.control(#"{"op":"translate","endpoint":32,"iova":65552,"length":16,"access":"read"}"#)
        #expect(good["ok"] as? Bool == true)
        #expect((good["segments"] as? [[String: Any]])?.first?["gpa"] as? Int == 0x80010)
        let bad = try daemon.control(#"{"op":"translate","endpoint":32,"iova":65536,"length":16,"access":"write"}"#)
        #expect(bad["ok"] as? Bool == false)
        #expect((bad["fault"] as? [String: Any])?["reason"] as? String == "mapping")
        // struct virtio_iommu_fault (§5.13.6.9): reason, reserved[3], flags, endpoint, reserved1, address.
        let used = guest.events.waitForUsed(1)
        #expect(used.first?.length == 24)
        let record = guest.events.reply(of: try #require(used.first).head)
        #expect(record[0] == IOMMUSpec.VIRTIO_IOMMU_FAULT_R_MAPPING && record[1..<4].allSatisfy { $0 == 0 })
        #expect(record.le(UInt32.self, at: 4) == IOMMUSpec.VIRTIO_IOMMU_FAULT_F_WRITE | IOMMUSpec.VIRTIO_IOMMU_FAULT_F_ADDRESS)
        #expect(record.le(UInt32.self, at: 8) == 0x20 && record.le(UInt32.self, at: 12) == 0)
        #expect(record.le(UInt64.self, at: 16) == 0x10000)
        // An unattached endpoint with bypass off: a DOMAIN fault.
        _ = try daemon.control(#"{"op":"translate","endpoint":33,"iova":0,"length":1,"access":"read"}"#)
        let second = guest.events.waitForUsed(1)
        #expect(guest.events.reply(of: try #require(second.first).head).first == IOMMUSpec.VIRTIO_IOMMU_FAULT_R_DOMAIN)
        #expect(guest.events.waitForCall())  // §2.7.7: the driver asked for interrupts on the event queue
        #expect(try daemon.stats()["faultsDelivered"] as? Int == 2)
        #expect(try daemon.stats()["eventBuffersPosted"] as? Int == 2)
        // Malformed control lines get an error and the connection stays usable.
        #expect(try daemon.control("not json")["ok"] as? Bool == false)
        #expect(try daemon.control(#"{"op":"translate","endpoint":32}"#)["ok"] as? Bool == false)
    }

    // Polling on, as the daemon ships (test daemons poll only where polling is the subject, see
    // Daemon.Polling). virtio 1.4 §2.7.10: a driver that honours the device's suppression kicks only when
    // asked to; the daemon then serves every request, those it asked not to be kicked for included, and
    // once idle it asks for kicks again, so no request waits for a kick the driver was told to skip.
    @Test func servesWithItsDefaultPolling() throws {
        let daemon = try Daemon(polling: .daemonDefault)
        let guest = try Guest(daemon)
        let eventIndex = guest.features & VirtioSpec.VIRTIO_F_EVENT_IDX != 0
        let q = guest.requests
        func request(_ body: [UInt8]) -> (kicked: Bool, status: UInt8?) {
            let before = q.availIndex
            let head = q.add(readable: [body], writable: [4], indirect: true)
            let kicked = q.kickIfWanted(since: before, eventIndex: eventIndex)
            guard q.waitForUsed(1).first == DriverQueue.Used(head: head, length: 4) else { return (kicked, nil) }
            return (kicked, q.reply(of: head)[0])
        }
        #expect(request(AttachRequest(domain: 1, endpoint: 8).encoded).status == IOMMUSpec.VIRTIO_IOMMU_S_OK)
        // Back to back, the loop's window grows until it finds requests by polling, kicks off.
        var unkicked = 0, sent = 0
        let deadline = ContinuousClock.now + .seconds(20)
        while unkicked < 10 && ContinuousClock.now < deadline {
            let iova = UInt64(sent % 1024) << 12
            let map = request(MapRequest(domain: 1, virtualStart: iova, virtualEnd: iova + 0xfff, physicalStart: iova, flags: 3).encoded)
            let unmap = request(UnmapRequest(domain: 1, virtualStart: iova, virtualEnd: iova + 0xfff).encoded)
            guard map.status == IOMMUSpec.VIRTIO_IOMMU_S_OK, unmap.status == IOMMUSpec.VIRTIO_IOMMU_S_OK else {
                Issue.record("request \(sent) unanswered or failed: \(map), \(unmap)")
                return
            }
            unkicked += (map.kicked ? 0 : 1) + (unmap.kicked ? 0 : 1)
            sent += 2
        }
        #expect(unkicked >= 10, "\(unkicked) of \(sent) requests went without a kick: the daemon never polled")
        #expect(try daemon.stats()["polledTurns"] as? Int ?? 0 > 0)
        // Idle: the loop blocks, after asking for kicks again; a request then gets its kick and an answer.
        #expect(waitUntil(.seconds(5)) { q.kicksWanted(eventIndex: eventIndex) }, "kicks still off once idle")
        let last = request(AttachRequest(domain: 1, endpoint: 9).encoded)
        #expect(last.kicked && last.status == IOMMUSpec.VIRTIO_IOMMU_S_OK)
        #expect(try daemon.requestCount("MAP", "OK") == sent / 2)
    }

    // A guest reset (rings restarted at new bases) clears all state; a pause keeps it.
    // Spec: docs/vhost-user.md "When the device is reset" and vhost-user.rst "Ring states"; docs/device-behaviour.md "Reset".
    @Test func resetAndPause() throws {
        let daemon = try Daemon()
        let guest = try Guest(daemon)
        #expect(guest.status(AttachRequest(domain: 7, endpoint: 0x28).encoded) == .ok)
        #expect(guest.status(MapRequest(domain: 7, virtualStart: 0x1000, virtualEnd: 0x1fff, physicalStart: 0, flags: 3).encoded) == .ok)
        // Pause: stop and start at the same bases.
        let bases = try guest.frontend.stop(queues: [guest.requests, guest.events])
        try guest.frontend.start(features: guest.features, memory: [guest.memory], queues: [guest.requests, guest.events],
                                 bases: bases.map { UInt16($0) })
        var domains = try daemon.control(#"{"op":"domains"}"#)["domains"] as? [[String: Any]]
        #expect(domains?.count == 1 && domains?.first?["mappings"] as? Int == 1)
        // Guest reset: fresh rings.
        try guest.restartAsResetGuest()
        domains = try daemon.control(#"{"op":"domains"}"#)["domains"] as? [[String: Any]]
        #expect(domains?.isEmpty == true)
        #expect(guest.status(MapRequest(domain: 7, virtualStart: 0x1000, virtualEnd: 0x1fff, physicalStart: 0, flags: 3).encoded) == .noEntry)
        #expect(daemon.log.contains("guest reset"))
    }

    // A disconnect resets the device; by default the daemon then exits, with --reconnect it serves the next one.
    // Spec: docs/vhost-user.md "When the device is reset" (a disconnect resets) and README "Command line" (--reconnect).
    @Test func disconnectAndReconnect() throws {
        let exiting = try Daemon()
        do {
            let guest = try Guest(exiting)
            #expect(guest.status(AttachRequest(domain: 1, endpoint: 1).encoded) == .ok)
            guest.frontend.disconnect()
        }
        #expect(exiting.waitForExit() == 0)

        let daemon = try Daemon(["--reconnect"])
        do {
            let guest = try Guest(daemon)
            #expect(guest.status(AttachRequest(domain: 1, endpoint: 1).encoded) == .ok)
            guest.frontend.disconnect()
        }
        let guest = try Guest(daemon)
        let domains = try daemon.control(#"{"op":"domains"}"#)["domains"] as? [[String: Any]]
        #expect(domains?.isEmpty == true)  // reset by the disconnect
        #expect(guest.status(AttachRequest(domain: 1, endpoint: 1).encoded) == .ok)
        #expect(daemon.terminate() == 0)
        #expect(daemon.log.contains("statistics: requests [ATTACH/OK=2]"))  // logged at exit; counts span connections
        #expect(!daemon.log.contains(" error "))
    }

    // SIGTERM while a front-end is connected: a clean exit that removes the socket files.
    // Spec: README "Command line": SIGTERM exits cleanly, SIGUSR1 logs the statistics, the same figures
    // as the control socket's stats (the model's, the engine's and the fault ring's).
    @Test func sigtermWhileServing() throws {
        let daemon = try Daemon()
        let guest = try Guest(daemon)
        #expect(guest.status(AttachRequest(domain: 1, endpoint: 2).encoded) == .ok)
        kill(daemon.process.processIdentifier, SIGUSR1)
        #expect(daemon.waitForLog("statistics: requests [ATTACH/OK=1]"))
        #expect(daemon.waitForLog(" warnings_suppressed="))  // the line's last field: the whole line is in
        let stats = try daemon.stats()
        let line = daemon.log.split(separator: "\n").last { $0.contains("statistics: requests [") } ?? ""
        for (key, name) in [("domains", "domains"), ("eventBuffersPosted", "event_buffers"), ("ringErrors", "ring_errors"),
                            ("frontendFaults", "frontend_faults")] {
            #expect(line.contains(" \(name)=\(stats[key] as? Int ?? -1)"), "\(name) in \(line)")
        }
        #expect(daemon.terminate() == 0)
        #expect(access(daemon.socketPath, F_OK) != 0)
        #expect(access(daemon.controlPath, F_OK) != 0)
    }
}

/// `--fd`: the front-end hands over an already-connected socket (QEMU's back-end program conventions).
@Suite struct DescriptorHandoverTests {
    // Spec: vhost-user.rst "Backend program conventions": --fd, an inherited connected socket.
    @Test func servesAnInheritedSocket() throws {
        let (ours, theirs) = try SystemCall.socketPair()
        let frontend = TestFrontend(socket: OwnedFileDescriptor(ours))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, theirs.rawValue, 3)  // dup2 clears close-on-exec
        let arguments = [Daemon.executable.path, "--fd", "3", "--log-level", "error"]
        var argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        #expect(posix_spawn(&pid, Daemon.executable.path, &actions, nil, &argv, environ) == 0)
        try theirs.close()
        let memory = try SharedMemory(size: 1 << 20)
        let queues = try (0..<2).map { try DriverQueue(memory: memory, index: $0, size: 64) }
        let offered = try frontend.initialize(queues: queues)
        try frontend.start(features: offered & ~(UInt64(1) << 33), memory: [memory], queues: queues)
        let head = queues[0].add(readable: [AttachRequest(domain: 1, endpoint: 8).encoded], writable: [4])
        queues[0].kickNow()
        #expect(queues[0].waitForUsed(1).first?.length == 4)
        #expect(queues[0].reply(of: head)[0] == Status.ok.rawValue)
        frontend.disconnect()
        var status: Int32 = 0
        #expect(waitpid(pid, &status, 0) == pid)
        #expect(status == 0)  // exited normally with 0 after the front-end left
    }
}
