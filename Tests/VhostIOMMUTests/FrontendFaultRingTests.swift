import DaemonTestSupport
@testable import vhost_iommu
import Glibc
import IOMMUFrontend
import SystemPackage
import Testing
import VhostUser
import VhostUserTestSupport
import VirtioIOMMU

/// The fault ring against the real daemon (docs/frontend-protocol.md §10): the DMA a front-end refused
/// reaches the guest's event queue as a virtio-iommu fault (virtio 1.4 §5.13.6.9) with its reason,
/// endpoint, address and access flags; bad records are refused and counted; and what a fault flood can
/// make the daemon hold is capped: the ring's size on QEMU's side, `maxPendingFaults` (256) in the model.
@Suite struct FrontendFaultRingTests {
    /// A connection with the region set up and the fault ring granted; the descriptors stay open for its life.
    final class Session {
        let daemon: Daemon
        let connection: FrontendConnection
        let shared: SharedRegion
        let faultSignal: OwnedFileDescriptor
        let bell: OwnedFileDescriptor, ack: OwnedFileDescriptor
        var writer: FaultRingWriter
        var region: FrontendRegion { shared.region }
        var layout: RegionLayout { writer.layout }
        var frontend: TestFrontend { connection.frontend }
        var requests: DriverQueue { connection.requests }
        var events: DriverQueue { connection.events }
        var memory: SharedMemory { connection.memory }

        init(daemon: Daemon, connection: FrontendConnection, shared: SharedRegion, faultSignal: consuming OwnedFileDescriptor,
             bell: consuming OwnedFileDescriptor, ack: consuming OwnedFileDescriptor, writer: FaultRingWriter) {
            self.daemon = daemon
            self.connection = connection
            self.shared = shared
            self.faultSignal = faultSignal
            self.bell = bell
            self.ack = ack
            self.writer = writer
        }

        /// Appends records, signals the fault eventfd, and waits until the daemon moved `fault_head` past
        /// them (it queues each for the guest before it stores the head).
        func report(_ records: [FaultRecord]) -> Bool {
            for record in records { writer.append(record) }
            SystemCall.signal(faultSignal.descriptor)
            let deadline = ContinuousClock.now + .seconds(5)
            while region.loadAcquire(at: FaultRing.headOffset) != writer.tail {
                if ContinuousClock.now > deadline { return false }
                sched_yield()
            }
            return true
        }
    }

    static func start(faultEntries: UInt32 = 16) throws -> Session {
        let daemon = try Daemon(["--endpoint", "8", "--endpoint", "16", "--bypass", "off"])
        // §3: FAULT_RING is granted when offered.
        let connection = try FrontendConnection(daemon, capabilities: [.localChanges, .faultRing])
        #expect(connection.hello.capabilities == [.localChanges, .faultRing])
        let frontend = connection.frontend

        let layout = RegionLayout.standard(epoch: 1, logEntries: 1024, faultEntries: faultEntries)
        let shared = try SharedRegion(layout)
        _ = MirrorReader(memory: shared.region, layout: layout,
                         rules: .init(granule: 4096, capabilities: connection.hello.capabilities, queueSize: 256), startIndex: 0)
        let writer = FaultRingWriter(memory: shared.region, layout: layout, startTail: 1000)
        let bell = OwnedFileDescriptor(try SystemCall.eventFD())
        let ack = OwnedFileDescriptor(try SystemCall.eventFD())
        let faultSignal = OwnedFileDescriptor(try SystemCall.eventFD())
        let setRegion = SetRegionRequest(regionSize: layout.regionSize, epoch: 1, startIndex: 0)
        // §10.1: with FAULT_RING, SET_REGION carries the fault eventfd as a fourth descriptor.
        #expect(try FrontendProtocolEndToEndTests.status(FrontendProtocolEndToEndTests.request(
            frontend, .setRegion, setRegion.encoded, fds: [shared.file.rawValue, bell.rawValue, ack.rawValue])) == .invalid)
        #expect(try FrontendProtocolEndToEndTests.status(FrontendProtocolEndToEndTests.request(
            frontend, .setRegion, setRegion.encoded, fds: [shared.file.rawValue, bell.rawValue, ack.rawValue, faultSignal.rawValue])) == .ok)
        #expect(shared.region.loadAcquire(at: FaultRing.headOffset) == 1000, "§10.3: the back-end starts at fault_tail")
        try connection.startRings()
        return Session(daemon: daemon, connection: connection, shared: shared, faultSignal: faultSignal,
                       bell: bell, ack: ack, writer: writer)
    }

    static func stat(_ session: Session, _ key: String) throws -> Int {
        let value = try session.daemon.stats()[key]
        return (value as? Int) ?? Int((value as? UInt64) ?? 0)
    }

    // §10.3 + virtio §5.13.6.9: each record becomes one 24-byte fault event: reason, flags (the access
    // and ADDRESS), endpoint, address; reserved fields zero (D47).
    @Test func faultsTheFrontEndReportsReachTheEventQueue() throws {
        let session = try Self.start()
        let buffers = (0..<4).map { _ in session.events.add(readable: [], writable: [Fault.eventSize]) }
        session.events.kickNow()
        #expect(session.report([
            FaultRecord(endpoint: 8, reason: .mapping, access: .write, address: 0x10_0000, epoch: 1),
            FaultRecord(endpoint: 16, reason: .domain, access: .read, address: 0xfff_f000, epoch: 1),
        ]))
        let used = session.events.waitForUsed(2)
        #expect(used == [DriverQueue.Used(head: buffers[0], length: 24), DriverQueue.Used(head: buffers[1], length: 24)])
        #expect(Fault(event: session.events.reply(of: buffers[0]))
                == Fault(reason: .mapping, flags: [.write, .address], endpoint: 8, address: 0x10_0000))
        #expect(Fault(event: session.events.reply(of: buffers[1]))
                == Fault(reason: .domain, flags: [.read, .address], endpoint: 16, address: 0xfff_f000))
        #expect(session.events.reply(of: buffers[0]) == [2, 0, 0, 0, 0x02, 0x01, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0,
                                                         0, 0, 0x10, 0, 0, 0, 0, 0])

        // Refused, counted, and not delivered: an endpoint the device does not have (D49), a record of
        // another epoch, and a malformed one.
        var malformed = FaultRecord(endpoint: 8, reason: .mapping, access: .read, address: 0x3000, epoch: 1)
        malformed.epoch = 2
        #expect(session.report([FaultRecord(endpoint: 99, reason: .mapping, access: .read, address: 0x1000, epoch: 1), malformed]))
        let index = session.writer.tail
        session.writer.append(FaultRecord(endpoint: 8, reason: .mapping, access: .read, address: 0x4000, epoch: 1))
        var reason: UInt8 = 7
        withUnsafeBytes(of: &reason) { session.region.storeBytes($0, at: session.layout.faultRecordOffset(index) + 8) }
        #expect(session.report([]))
        #expect(try Self.stat(session, "frontendFaults") == 2)
        #expect(try Self.stat(session, "frontendFaultRecordsRefused") == 3)
        #expect(session.events.collectUsed().isEmpty, "nothing delivered for refused records")
        session.frontend.disconnect()
        #expect(session.daemon.terminate() == 0)
    }

    // The cap on a flood (issue 15): with no event buffer posted, the ring holds at most its 16 records
    // (the rest dropped and counted by the front-end, reported in fault_dropped), and the model at most
    // maxPendingFaults (256): the oldest are dropped and counted. Memory stays bounded however many come.
    @Test func aFaultFloodIsCappedOnBothSides() throws {
        let session = try Self.start()
        // QEMU's side: the daemon is not told (no signal), so the ring fills.
        for i in 0..<40 {
            session.writer.append(FaultRecord(endpoint: 8, reason: .mapping, access: .read, address: UInt64(i) << 12, epoch: 1))
        }
        #expect(session.writer.dropped == 24)
        #expect(session.report([]))
        #expect(try Self.stat(session, "frontendFaultsDropped") == 24)
        // The daemon's side: 1 000 more, 16 at a time, none of them delivered.
        for batch in 0..<63 {
            let records = (0..<16).map { i in
                FaultRecord(endpoint: 16, reason: .domain, access: .write, address: UInt64(batch * 16 + i) << 12, epoch: 1)
            }
            #expect(session.report(records))
        }
        let stats = try session.daemon.stats()
        #expect(stats["frontendFaults"] as? Int == 16 + 63 * 16)
        #expect(stats["faultsPending"] as? Int == 256, "the model keeps at most maxPendingFaults")
        #expect(stats["faultsDropped"] as? Int == 16 + 63 * 16 - 256)
        // The newest are kept: a driver posting buffers now reads the last 256, oldest first.
        let buffer = session.events.add(readable: [], writable: [Fault.eventSize])
        session.events.kickNow()
        #expect(session.events.waitForUsed(1).count == 1)
        #expect(Fault(event: session.events.reply(of: buffer))?.address == UInt64(16 + 63 * 16 - 256 - 16) << 12)
        session.frontend.disconnect()
        #expect(session.daemon.terminate() == 0)
    }
}
