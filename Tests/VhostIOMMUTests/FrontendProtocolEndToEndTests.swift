import DaemonTestSupport
@testable import vhost_iommu
import Glibc
import Synchronization
import IOMMUFrontend
import SystemPackage
import Testing
import VhostUser
import VhostUserTestSupport
import VirtioIOMMU

/// The real daemon and a front-end that speaks docs/frontend-protocol.md as QEMU's device will (the
/// reference mirror, `MirrorReader`, plays QEMU's part): HELLO, SET_REGION, then guest requests whose
/// effects reach the mirror before the guest sees them complete (§6 rule 1), ATTACH and DETACH held
/// until acknowledged (rule 3), and the mirror equal to the daemon's own state.
@Suite struct FrontendProtocolEndToEndTests {
    /// One device request under REPLY_ACK; the raw reply payload.
    static func request(_ frontend: TestFrontend, _ id: FrontendProtocol.Request, _ payload: [UInt8], fds: [CInt] = []) throws -> [UInt8] {
        try frontend.sendRaw(MessageHeader(request: id.rawValue, flags: MessageHeader.version | MessageHeader.needReplyFlag,
                                           size: UInt32(payload.count)).bytes + payload, fds: fds)
        return try frontend.receiveReply(toRaw: id.rawValue)
    }

    static func status(_ reply: [UInt8]) throws -> FrontendStatus {
        try reply.withUnsafeBytes { bytes throws(FrontendWireError) in try FrontendStatus(decoding: bytes) }
    }

    @Test func mirrorFollowsTheDaemonAndAttachWaitsForTheAcknowledgement() throws {
        let daemon = try Daemon(["--endpoint", "8", "--endpoint", "16", "--bypass", "off"])
        // §3: HELLO, answered with version 1, LOCAL_CHANGES, queue size 256 (the fault ring is not asked
        // for here: faultsTheFrontEndReportsReachTheEventQueue has it).
        let hello = HelloRequest(capabilities: [.commitWindow, .localChanges])
        let connection = try FrontendConnection(daemon, capabilities: hello.capabilities)
        let (frontend, requests, reply) = (connection.frontend, connection.requests, connection.hello)
        #expect(reply.version == 1 && reply.capabilities == [.localChanges] && reply.queueSize == 256)
        #expect(try Self.status(Self.request(frontend, .hello, hello.encoded)) == .badState, "§2.3: HELLO once")

        // §4.1: a region that can still shrink is refused; a sealed one is taken.
        let layout = RegionLayout.standard(epoch: 1, logEntries: 1024)
        let unsealed = OwnedFileDescriptor(try SystemCall.memfd(name: "unsealed", size: Int(layout.regionSize)))
        let bell = OwnedFileDescriptor(try SystemCall.eventFD())
        let ack = OwnedFileDescriptor(try SystemCall.eventFD())
        let setRegion = SetRegionRequest(regionSize: layout.regionSize, epoch: 1, startIndex: 0)
        #expect(try Self.status(Self.request(frontend, .setRegion, setRegion.encoded,
                                             fds: [unsealed.rawValue, bell.rawValue, ack.rawValue])) == .invalid)
        let shared = try SharedRegion(layout)
        let region = shared.region
        var mirror = MirrorReader(memory: region, layout: layout, rules: .init(granule: 4096, capabilities: [.localChanges], queueSize: 256),
                                  startIndex: 0)
        #expect(try Self.status(Self.request(frontend, .setRegion, setRegion.encoded,
                                             fds: [shared.file.rawValue, bell.rawValue, ack.rawValue])) == .ok)
        mirror.loadEndpointBitmap()
        #expect(mirror.knownEndpoints.contains(8) && mirror.knownEndpoints.contains(16) && mirror.knownEndpoints.count == 2)

        try connection.startRings()
        func send(_ bytes: [UInt8]) -> UInt16 {
            let head = requests.add(readable: [bytes], writable: [4], indirect: true)
            requests.kickNow()
            return head
        }

        // Rule 3: ATTACH waits for the acknowledgement; the doorbell rings; the mirror has it first.
        let attach = send(AttachRequest(domain: 1, endpoint: 8).encoded)
        #expect(pollReadable(bell.descriptor), "the doorbell rang")
        try frontend.sync()
        #expect(requests.usedIndex == 0, "ATTACH not completed before the acknowledgement")
        _ = try mirror.drain()  // applies and stores acked
        #expect(mirror.endpointDomain[8] == 1)
        SystemCall.drain(bell.descriptor)
        SystemCall.signal(ack.descriptor)
        #expect(requests.waitForUsed(1) == [DriverQueue.Used(head: attach, length: 4)])
        #expect(requests.reply(of: attach)[0] == Status.ok.rawValue)

        // Rule 1: a MAP completes at once, and its entry is already below `tail` when it does.
        let map = send(MapRequest(domain: 1, virtualStart: 0x10000, virtualEnd: 0x1ffff, physicalStart: 0x400000, flags: 3).encoded)
        #expect(requests.waitForUsed(1) == [DriverQueue.Used(head: map, length: 4)])
        _ = try mirror.drain()
        #expect(mirror.domains[1]?.mapping(containing: 0x10800) == MirrorReader.Mapping(virtualStart: 0x10000, virtualEnd: 0x1ffff,
                                                                                             physicalStart: 0x400000, flags: 3))
        // A failed request changes nothing and is logged as a COMMIT with its status (§5.4).
        _ = send(MapRequest(domain: 1, virtualStart: 0x10000, virtualEnd: 0x10fff, physicalStart: 0, flags: 3).encoded)
        #expect(requests.waitForUsed(1).count == 1)
        _ = try mirror.drain()
        #expect(mirror.mappingCount == 1)
        let unmap = send(UnmapRequest(domain: 1, virtualStart: 0x10000, virtualEnd: 0x1ffff).encoded)
        #expect(requests.waitForUsed(1) == [DriverQueue.Used(head: unmap, length: 4)])
        _ = try mirror.drain()
        #expect(mirror.mappingCount == 0)

        /// QEMU's side of an acknowledged request: the doorbell rang, the log is applied, then acknowledged.
        func answerDoorbell() throws {
            #expect(pollReadable(bell.descriptor))
            _ = try mirror.drain()
            SystemCall.drain(bell.descriptor)
            SystemCall.signal(ack.descriptor)
        }

        // DETACH waits too; afterwards the mirror and the daemon agree: no domain, no endpoint attached.
        let detach = send(DetachRequest(domain: 1, endpoint: 8).encoded)
        try answerDoorbell()
        #expect(requests.waitForUsed(1) == [DriverQueue.Used(head: detach, length: 4)])
        #expect(mirror.domains.isEmpty && mirror.endpointDomain.isEmpty)
        #expect(mirror.violation == nil && mirror.invariantViolation() == nil)
        #expect(try daemon.stats()["domains"] as? Int == 0)
        // §6.1: an operator's DETACH (control socket) is a LOCAL group; the control request returns only
        // after QEMU acknowledged it, and the mirror no longer has the endpoint attached.
        let again = send(AttachRequest(domain: 2, endpoint: 16).encoded)
        try answerDoorbell()
        #expect(requests.waitForUsed(1) == [DriverQueue.Used(head: again, length: 4)])
        let answer = Mutex<Bool?>(nil)  // the control reply's "ok", once it came
        let box = UncheckedBox(value: daemon)
        let operatorThread = OSThread {
            let ok = (try? box.value.control(#"{"op":"detach","endpoint":16}"#))?["ok"] as? Bool ?? false
            answer.withLock { $0 = ok }
        }
        #expect(pollReadable(bell.descriptor), "the operator's DETACH rang the doorbell")
        #expect(answer.withLock { $0 } == nil, "the control request waits for the acknowledgement")
        _ = try mirror.drain()
        #expect(mirror.endpointDomain[16] == nil && mirror.domains[2] == nil)
        SystemCall.drain(bell.descriptor)
        SystemCall.signal(ack.descriptor)
        operatorThread.join()
        #expect(answer.withLock { $0 } == true)
        #expect(try daemon.control(#"{"op":"detach","endpoint":16}"#)["error"] as? String == "endpoint 16 is in no domain")

        // §2.3: STATE_PUSH comes before the rings start, at most once; here the rings run.
        #expect(try Self.push(frontend, mirror.snapshot(bypass: false)) == .badState)
        frontend.disconnect()
        #expect(daemon.terminate() == 0)
    }
}

extension FrontendProtocolEndToEndTests {
    // §9.2: `applied` beyond `tail` is a violation. The session ends and the connection closes, so that
    // QEMU, whose mirror no longer follows the model, reconnects and pushes its state (§8.2); a new
    // connection starts a new session.
    @Test func aFrontEndThatBreaksTheProtocolIsDisconnected() throws {
        let daemon = try Daemon(["--endpoint", "8", "--bypass", "off", "--reconnect"])
        let connection = try FrontendConnection(daemon, capabilities: [.localChanges])
        let (frontend, requests, events) = (connection.frontend, connection.requests, connection.events)
        let hello = HelloRequest(capabilities: [.localChanges])
        let layout = RegionLayout.standard(epoch: 1, logEntries: 1024)
        let shared = try SharedRegion(layout)
        let region = shared.region
        _ = MirrorReader(memory: region, layout: layout, rules: .init(granule: 4096, capabilities: [.localChanges], queueSize: 256),
                         startIndex: 0)
        let bell = OwnedFileDescriptor(try SystemCall.eventFD()), ack = OwnedFileDescriptor(try SystemCall.eventFD())
        #expect(try Self.status(Self.request(frontend, .setRegion, SetRegionRequest(regionSize: layout.regionSize, epoch: 1, startIndex: 0).encoded,
                                             fds: [shared.file.rawValue, bell.rawValue, ack.rawValue])) == .ok)
        try connection.startRings()
        region.storeRelease(1000, at: RegionLayout.appliedOffset)  // no back-end published 1000 entries
        _ = requests.add(readable: [MapRequest(domain: 1, virtualStart: 0, virtualEnd: 0xfff, physicalStart: 0, flags: 1).encoded],
                         writable: [4])
        requests.kickNow()
        let deadline = ContinuousClock.now + .seconds(5)
        var open = true
        while open && ContinuousClock.now < deadline { open = (try? frontend.sync()) != nil }
        #expect(!open, "the daemon closed the connection")
        let again = try daemon.connect()
        _ = try again.initialize(queues: [requests, events])
        let reply = try Self.request(again, .hello, hello.encoded)
        #expect(reply.count == HelloReply.size, "a new connection starts a new session")
        again.disconnect()
        #expect(daemon.terminate() == 0)
        #expect(daemon.log.contains("applied"), "the violation is logged")
    }

    // §8.2: a restarted daemon adopts the state QEMU pushes, all or nothing: domains, attachments and
    // mappings, checked as the guest's own requests would be. A snapshot that maps over an endpoint's
    // reserved MSI window (D45) is refused and changes nothing; a good one then goes through.
    @Test func aRestartedDaemonAdoptsThePushedState() throws {
        let daemon = try Daemon(["--endpoint", "8", "--endpoint", "16", "--bypass", "off", "--reconnect"])
        let bad = StateSnapshot(epoch: 3, bypass: false, domains: [.init(id: 1, bypass: false)], endpoints: [.init(endpoint: 8, domain: 1)],
                                mappings: [.init(domain: 1, flags: 3, virtualStart: 0xfee0_0000, virtualEnd: 0xfee0_0fff, physicalStart: 0)])
        let (first, refused) = try Self.reconnect(daemon, epoch: 3, push: bad)
        #expect(refused == .refused)
        #expect(try daemon.stats()["domains"] as? Int == 0, "a refused snapshot changes nothing")
        first.disconnect()
        let good = StateSnapshot(epoch: 4, bypass: false,
                                 domains: [.init(id: 1, bypass: false), .init(id: 2, bypass: true)],
                                 endpoints: [.init(endpoint: 8, domain: 1), .init(endpoint: 16, domain: 2)],
                                 mappings: [.init(domain: 1, flags: 3, virtualStart: 0x10000, virtualEnd: 0x1ffff, physicalStart: 0x400000)])
        let (second, adopted) = try Self.reconnect(daemon, epoch: 4, push: good)
        #expect(adopted == .ok)
        let translated = try daemon.control(#"{"op":"translate","endpoint":8,"iova":67584,"length":8,"access":"write"}"#)
        #expect((translated["segments"] as? [[String: Any]])?.first?["gpa"] as? Int == 0x400800, "\(translated)")
        let listed = try daemon.control(#"{"op":"domains"}"#)["domains"] as? [[String: Any]] ?? []
        #expect(listed.count == 2 && listed.contains { $0["id"] as? Int == 2 && $0["bypass"] as? Bool == true }, "\(listed)")
        second.disconnect()
        #expect(daemon.terminate() == 0)
    }

    /// STATE_PUSH of `snapshot` in a sealed memfd; the daemon's status.
    static func push(_ frontend: TestFrontend, _ snapshot: StateSnapshot) throws -> FrontendStatus {
        let bytes = snapshot.encoded
        let file = OwnedFileDescriptor(try SystemCall.sealedMemfd(name: "snapshot", size: bytes.count))
        _ = try file.descriptor.writeAll(toAbsoluteOffset: 0, bytes)
        return try status(request(frontend, .statePush, StatePushRequest(for: snapshot).encoded, fds: [file.rawValue]))
    }

    /// A front-end that connects to a daemon for the first time with a mirror to restore (a daemon
    /// restart, §8.2): HELLO, SET_REGION with a new epoch, STATE_PUSH.
    static func reconnect(_ daemon: Daemon, epoch: UInt32, push snapshot: StateSnapshot) throws -> (TestFrontend, FrontendStatus) {
        let frontend = try daemon.connect()
        let memory = try SharedMemory(size: 1 << 20)
        _ = try frontend.initialize(queues: [try DriverQueue(memory: memory, index: 0, size: 16), try DriverQueue(memory: memory, index: 1, size: 16)])
        _ = try request(frontend, .hello, HelloRequest(capabilities: [.commitWindow, .localChanges]).encoded)
        let layout = RegionLayout.standard(epoch: epoch, logEntries: 1024)
        let shared = try SharedRegion(layout)
        let region = shared.region
        _ = MirrorReader(memory: region, layout: layout, rules: .init(granule: 4096, capabilities: [.localChanges], queueSize: 256), startIndex: 7)
        let bell = OwnedFileDescriptor(try SystemCall.eventFD()), ack = OwnedFileDescriptor(try SystemCall.eventFD())
        let set = SetRegionRequest(regionSize: layout.regionSize, epoch: epoch, startIndex: 7)
        try #require(try status(request(frontend, .setRegion, set.encoded, fds: [shared.file.rawValue, bell.rawValue, ack.rawValue])) == .ok)
        // The daemon holds its own copies of the region and eventfds; ours may close.
        return (frontend, try push(frontend, snapshot))
    }
}

/// Whether `fd` becomes readable within 5 s.
private func pollReadable(_ fd: FileDescriptor) -> Bool {
    SystemCall.isReadable(fd, within: 5000)
}
