import DaemonTestSupport
import SystemPackage
import Foundation
import Glibc
import Testing
import VhostUser
import VhostUserTestSupport
import VirtioIOMMU

/// End-to-end: the real `vhost-iommu` executable, driven over a real socket with memfd guest memory
/// and eventfds, in QEMU's message order.
@Suite struct DaemonTests {
    // The command line follows QEMU's back-end program conventions.
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

    // Handshake and config read (virtio 1.4 §5.13.4).
    @Test func handshakeAndConfig() throws {
        let daemon = try Daemon(["--input-range", "0-0xffffffffff"])
        let frontend = try daemon.connect()
        let memory = try SharedMemory(size: 1 << 20)
        let queues = try (0..<2).map { try DriverQueue(memory: memory, index: $0, size: 256) }
        let features = try frontend.initialize(queues: queues)
        #expect(features == Features.standard.union(.pasid).rawValue | TransportFeatures.all)
        #expect(features & (1 << 33) == 0)  // no ACCESS_PLATFORM
        let config = ConfigSpace(bytes: try frontend.getConfig(size: 40))
        #expect(config?.pageSizeMask == 0xffff_ffff_ffff_f000)
        #expect(config?.inputRangeEnd == 0xff_ffff_ffff)
        #expect(config?.domainRangeEnd == UInt32.max)
        #expect(config?.probeSize == 512)
        #expect(config?.bypass == 1)
        #expect(try frontend.getU64(.getQueueNum) == 2)
        // §5.13.4.1: only bypass is writable, once BYPASS_CONFIG is negotiated; QEMU sends the whole space.
        try frontend.start(features: features, memory: [memory], queues: queues)
        var bytes = config!.bytes
        bytes[36] = 0
        #expect(try frontend.setConfig(bytes))
        #expect(ConfigSpace(bytes: try frontend.getConfig(size: 40))?.bypass == 0)
        bytes[0] = 0xff
        #expect(try frontend.setConfig(bytes) == false)  // page_size_mask is read-only
        bytes[0] = 0
        bytes[36] = 2
        #expect(try frontend.setConfig(bytes) == false)  // D6: only 0 or 1
        #expect(ConfigSpace(bytes: try frontend.getConfig(size: 40))?.bypass == 0)
    }

    // Every request type, good and bad (virtio 1.4 §5.13.6).
    @Test func everyRequestType() throws {
        let daemon = try Daemon()
        let guest = try Guest(daemon)
        let endpoint: UInt32 = 0x10
        #expect(guest.status(AttachRequest(domain: 1, endpoint: endpoint).encoded) == .ok)
        #expect(guest.status(AttachRequest(domain: 1, endpoint: 0x1_0000).encoded) == .noEntry)
        #expect(guest.status(AttachRequest(domain: 1, endpoint: endpoint, reserved: 1).encoded) == .invalid)
        #expect(guest.status(MapRequest(domain: 1, virtualStart: 0x1000, virtualEnd: 0x2fff, physicalStart: 0x40000, flags: 3).encoded) == .ok)
        #expect(guest.status(MapRequest(domain: 1, virtualStart: 0x1800, virtualEnd: 0x2fff, physicalStart: 0, flags: 3).encoded) == .range)
        #expect(guest.status(MapRequest(domain: 1, virtualStart: 0xfee0_0000, virtualEnd: 0xfee0_0fff, physicalStart: 0, flags: 3).encoded) == .invalid)
        #expect(guest.status(MapRequest(domain: 9, virtualStart: 0x1000, virtualEnd: 0x1fff, physicalStart: 0, flags: 3).encoded) == .noEntry)
        #expect(guest.status(UnmapRequest(domain: 1, virtualStart: 0x1000, virtualEnd: 0x1fff).encoded) == .range)
        #expect(guest.status(UnmapRequest(domain: 1, virtualStart: 0x1000, virtualEnd: 0x2fff).encoded) == .ok)
        #expect(guest.status(DetachRequest(domain: 2, endpoint: endpoint).encoded) == .invalid)
        #expect(guest.status(DetachRequest(domain: 1, endpoint: endpoint).encoded) == .ok)
        // PROBE: the x86 MSI window as a RESV_MEM/MSI property, then zeroes, then the tail.
        let (used, reply) = guest.send(ProbeRequest(endpoint: endpoint).encoded, writable: 516)
        #expect(used == 516)
        #expect(ResvMemProperty.parse(Array(reply[0..<512])) == [.x86MSIWindow])
        #expect(reply[512] == Status.ok.rawValue)
        // A short body is INVAL; an unknown type and a writable part without room for the tail get used length 0.
        #expect(guest.status(Array(AttachRequest(domain: 1, endpoint: endpoint).encoded.prefix(12))) == .invalid)
        #expect(guest.send([0x42, 0, 0, 0]).0 == 0)
        #expect(guest.send(AttachRequest(domain: 1, endpoint: endpoint).encoded, writable: 2).0 == 0)
        #expect(try daemon.requestCount("MAP", "OK") == 1)
        #expect(try daemon.requestCount("UNMAP", "RANGE") == 1)
        #expect(try daemon.stats()["unanswered"] as? Int == 2)
    }

    // Lazy-mode batches: 256 requests in one kick, all answered in order.
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
        let used = guest.events.waitForUsed(1)
        #expect(used.first?.length == 24)
        let record = guest.events.reply(of: used.first!.head)
        #expect(Fault(event: record) == Fault(reason: .mapping, flags: [.write, .address], endpoint: 0x20, address: 0x10000))
        // An unattached endpoint with bypass off: a DOMAIN fault.
        _ = try daemon.control(#"{"op":"translate","endpoint":33,"iova":0,"length":1,"access":"read"}"#)
        let second = guest.events.waitForUsed(1)
        #expect(Fault(event: guest.events.reply(of: second.first!.head))?.reason == .domain)
        #expect(guest.events.waitForCall())  // §2.7.7: the driver asked for interrupts on the event queue
        #expect(try daemon.stats()["faultsDelivered"] as? Int == 2)
        #expect(try daemon.stats()["eventBuffersPosted"] as? Int == 2)
        // Malformed control lines get an error and the connection stays usable.
        #expect(try daemon.control("not json")["ok"] as? Bool == false)
        #expect(try daemon.control(#"{"op":"translate","endpoint":32}"#)["ok"] as? Bool == false)
    }

    // A guest reset (rings restarted at new bases) clears all state; a pause keeps it.
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
        #expect(daemon.log.contains("counters: requests [ATTACH/OK=2]"))  // logged at exit; counters span connections
        #expect(!daemon.log.contains(" error "))
    }

    // SIGTERM while a front-end is connected: a clean exit that removes the socket files.
    @Test func sigtermWhileServing() throws {
        let daemon = try Daemon()
        let guest = try Guest(daemon)
        #expect(guest.status(AttachRequest(domain: 1, endpoint: 2).encoded) == .ok)
        kill(daemon.process.processIdentifier, SIGUSR1)
        #expect(daemon.waitForLog("ATTACH/OK=1"))  // SIGUSR1 logs the counters
        #expect(daemon.terminate() == 0)
        #expect(access(daemon.socketPath, F_OK) != 0)
        #expect(access(daemon.controlPath, F_OK) != 0)
    }
}

/// `--fd`: the front-end hands over an already-connected socket (QEMU's back-end program conventions).
@Suite struct DescriptorHandoverTests {
    @Test func servesAnInheritedSocket() throws {
        let (ours, theirs) = try SystemCall.socketPair()
        let frontend = TestFrontend(socket: OwnedFileDescriptor(ours))
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, theirs.rawValue, 3)  // dup2 clears close-on-exec
        let arguments = [Daemon.executable.path, "--fd", "3", "--log-level", "error", "--pasid-store", "memory"]
        var argv = arguments.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        var pid: pid_t = 0
        #expect(posix_spawn(&pid, Daemon.executable.path, &actions, nil, &argv, environ) == 0)
        close(theirs.rawValue)
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
