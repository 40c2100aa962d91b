import Glibc
import Testing
@testable import VhostUser
@testable import VhostUserCore
import VhostUserTestSupport

/// Memory-table, ring-setup and back-end-channel messages, and the listening socket.
@Suite struct SetupTests {
    // Spec: vhost-user.rst VHOST_USER_SET_MEM_TABLE; docs/vhost-user.md "Validation before dispatch" (3).
    @Test func memoryTableMessages() throws {
        let h = try Harness()
        try h.frontend.initialize(queues: h.queues)
        #expect(try h.frontend.setMemTable([h.memory]))
        // Two regions that overlap are refused, and the old table stays.
        let twin = try SharedMemory(size: 4096, guestPhysicalAddress: h.memory.guestPhysicalAddress)
        #expect(try h.frontend.setMemTable([h.memory, twin]) == false)
        // A region of size 0, or one that wraps around 2^64.
        var zero = [1, 0, 0, 0, 0, 0, 0, 0] + h.memory.regionDescription
        zero.replaceSubrange(16..<24, with: [UInt8](repeating: 0, count: 8))
        #expect(try h.frontend.sendAcked(.setMemTable, zero, fds: [h.memory.descriptor.rawValue]) == false)
        var wrap = [1, 0, 0, 0, 0, 0, 0, 0] + h.memory.regionDescription
        wrap.replaceSubrange(8..<16, with: TestFrontend.bytes(UInt64.max - 10))
        #expect(try h.frontend.sendAcked(.setMemTable, wrap, fds: [h.memory.descriptor.rawValue]) == false)
        // Nine regions are more than SET_MEM_TABLE carries.
        let nine = [9, 0, 0, 0, 0, 0, 0, 0] + [UInt8](repeating: 0, count: 9 * 32)
        #expect(try h.frontend.sendAcked(.setMemTable, nine) == false)
        // The table in place still works end to end.
        try h.frontend.start(features: h.allFeatures, memory: [h.memory], queues: h.queues)
        #expect(h.roundTrip([1, 2]).1 == [2, 1])
    }

    // Spec: virtio 1.4 §2.7 (ring alignment); docs/vhost-user.md "Rings": misaligned ring memory stops the queue.
    @Test func misalignedRingStopsTheQueue() throws {
        let h = try Harness()
        try h.frontend.initialize(queues: h.queues)
        try h.frontend.setFeatures(h.allFeatures)
        try h.frontend.setMemTable([h.memory])
        let q = h.queues[0]
        try h.frontend.setVringNum(0, q.size)
        try h.frontend.setVringBase(0, 0)
        let a = q.userAddresses
        try h.frontend.setVringAddr(0, descriptors: a.descriptors + 8, used: a.used, avail: a.avail)
        try h.frontend.setVringFD(.setVringKick, 0, q.kick.rawValue)
        try h.frontend.setVringEnable(0, true)
        q.add(readable: [[1]], writable: [1])
        q.kickNow()
        #expect(q.waitForError())  // vhost-user.rst: the error eventfd of the stopped ring is signalled
        #expect(try h.frontend.getStatus() & DeviceStatus.needsReset != 0)  // (a round trip: the turn has ended)
        #expect(h.backend.counters.ringErrors == 1)
    }

    // Spec: docs/vhost-user.md "Validation before dispatch" (3) and vhost-user.rst VHOST_USER_SET_VRING_CALL (no-descriptor flag).
    @Test func ringMessagesNeedAStoppedRing() throws {
        let h = try Harness()
        try h.start()
        _ = h.roundTrip([1])
        #expect(try h.frontend.sendAcked(.setVringNum, h.frontend.vringState(0, 128)) == false)
        #expect(try h.frontend.sendAcked(.setVringBase, h.frontend.vringState(0, 3)) == false)
        try h.frontend.send(.getVringBase, h.frontend.vringState(7, 0))
        #expect(try h.frontend.receiveReply(to: .getVringBase).isEmpty)  // no queue 7
        // SET_VRING_CALL with the "no descriptor" flag: the driver is not called, nothing breaks.
        try h.frontend.setVringFD(.setVringCall, 0, nil)
        try h.frontend.sync()  // every earlier message is handled, and the first round trip's call made
        _ = h.queues[0].wasCalled()  // consume the call of the first round trip
        #expect(h.roundTrip([1, 2]).1 == [2, 1])
        try h.frontend.sync()  // a call for that round trip, had there been one, would have been made by now
        #expect(!h.queues[0].wasCalled())
    }

    // Spec: vhost-user.rst VHOST_USER_SET_BACKEND_REQ_FD and VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
    @Test func backendChannelCarriesConfigChange() throws {
        let h = try Harness()
        try h.frontend.setProtocolFeatures(.supported)
        let (ours, theirs) = try SystemCall.socketPair()
        let channel = OwnedFileDescriptor(ours)
        do {
            let theirsOwned = OwnedFileDescriptor(theirs)
            #expect(try h.frontend.sendAcked(.setBackendReqFD, fds: [theirsOwned.rawValue]))
        }
        #expect(try h.frontend.sendAcked(.setBackendReqFD) == false)  // no descriptor
        h.backend.notifyConfigChange()
        #expect(SystemCall.isReadable(channel.descriptor, within: 5000))
        var header = [UInt8](repeating: 0, count: 12)
        #expect(read(channel.rawValue, &header, 12) == 12)
        #expect(header == MessageHeader(request: BackendRequest.configChange.rawValue, flags: 1, size: 0).bytes)
    }

    // Spec: vhost-user.rst VHOST_USER_RESET_OWNER (deprecated: ignored).
    @Test func resetOwnerIsIgnored() throws {
        let h = try Harness()
        try h.start()
        #expect(try h.frontend.sendAcked(.resetOwner))
        #expect(h.roundTrip([3, 4]).1 == [4, 3])
    }

    // Transport: a UNIX socket path, mode 0600, stale socket files replaced, live ones and other files left alone.
    // Spec: README "Command line" (--socket-path: created 0600, a stale one replaced).
    @Test func listenerSocketFile() throws {
        let path = "/tmp/vu-test-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(path) }
        do {
            let listener = try Listener(path: path)
            var info = stat()
            #expect(stat(path, &info) == 0)
            #expect(info.st_mode & 0o777 == 0o600)
            #expect(info.st_mode & S_IFMT == S_IFSOCK)
            #expect(throws: ListenError.pathInUse(path)) { _ = try Listener(path: path) }
            _ = listener
        }
        // The listener removed its file; a stale socket file (nobody listening) is replaced.
        let stale = try SystemCall.socket(AF_UNIX, CInt(SOCK_STREAM.rawValue))
        try SystemCall.bind(stale, path: path)
        close(stale.rawValue)
        #expect(access(path, F_OK) == 0)
        do { _ = try Listener(path: path) }
        // A regular file is not a socket: left alone.
        let file = open(path, O_CREAT | O_WRONLY, 0o600)
        close(file)
        #expect(throws: ListenError.notASocket(path)) { _ = try Listener(path: path) }
    }

    // The whole path: listen on a socket file, accept, serve a device end to end, disconnect.
    // Spec: vhost-user.rst "Communication" (UNIX socket); docs/vhost-user.md "When the device is reset".
    @Test func endToEndOverASocketPath() throws {
        let path = "/tmp/vu-test-e2e-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        let device = EchoDevice()
        let backend = try VhostUserBackend(device: device)
        let box = UncheckedBox(value: (backend, path))
        let outcomes = UncheckedBox(value: OutcomeList())
        let ready = UncheckedBox(value: Semaphore())
        let thread = OSThread {
            guard let listener = try? Listener(path: box.value.1) else { ready.value.signal(); return }
            ready.value.signal()
            // Serve two front-ends one after the other, as --reconnect does.
            for _ in 0..<2 {
                guard let fd = try? box.value.0.accept(listener) else { return }
                outcomes.value.append(try? box.value.0.serve(connection: fd))
            }
        }
        ready.value.wait()
        for round in 0..<2 {
            let frontend = try TestFrontend(connectingTo: path)
            let memory = try SharedMemory(size: 1 << 20)
            let queues = try (0..<2).map { try DriverQueue(memory: memory, index: $0, size: 64) }
            try frontend.initialize(queues: queues)
            try frontend.start(features: try frontend.getFeatures(), memory: [memory], queues: queues)
            let head = queues[0].add(readable: [[UInt8(round), 9]], writable: [2])
            queues[0].kickNow()
            #expect(queues[0].waitForUsed(1).first?.length == 2)
            #expect(queues[0].reply(of: head) == [9, UInt8(round)])
            frontend.disconnect()
            // Each disconnect resets the device before the next front-end is served.
            let deadline = ContinuousClock.now + .seconds(5)
            while device.resets < round + 1 && ContinuousClock.now < deadline { usleep(100) }
            #expect(device.resets == round + 1)
        }
        thread.join()
        #expect(outcomes.value.items == [.disconnected, .disconnected])
        #expect(access(path, F_OK) != 0)  // the listener removed its socket file
    }
}

final class OutcomeList: @unchecked Sendable {
    private var lock = pthread_mutex_t()
    private(set) var items: [VhostUserBackend.Outcome?] = []
    init() { pthread_mutex_init(&lock, nil) }
    func append(_ item: VhostUserBackend.Outcome?) { pthread_mutex_lock(&lock); items.append(item); pthread_mutex_unlock(&lock) }
}

/// A one-shot signal between threads.
final class Semaphore: @unchecked Sendable {
    private var semaphore = sem_t()
    init() { sem_init(&semaphore, 0, 0) }
    func signal() { sem_post(&semaphore) }
    func wait() { sem_wait(&semaphore) }
}

/// A region larger than the file behind it would fault (SIGBUS) on access: it is refused.
@Suite struct RegionBoundsTests {
    // Spec: docs/vhost-user.md "Guest memory"; docs/security.md (a region beyond its file would fault).
    @Test func regionMustFitItsFile() throws {
        let h = try Harness()
        try h.frontend.initialize(queues: h.queues)
        var description = h.memory.regionDescription
        description.replaceSubrange(8..<16, with: TestFrontend.bytes(UInt64(h.memory.size) * 2))
        #expect(try h.frontend.sendAcked(.setMemTable, [1, 0, 0, 0, 0, 0, 0, 0] + description,
                                         fds: [h.memory.descriptor.rawValue]) == false)
        var offset = h.memory.regionDescription
        offset.replaceSubrange(24..<32, with: TestFrontend.bytes(UInt64(4096)))  // size + offset past the end
        #expect(try h.frontend.sendAcked(.setMemTable, [1, 0, 0, 0, 0, 0, 0, 0] + offset,
                                         fds: [h.memory.descriptor.rawValue]) == false)
        #expect(try h.frontend.setMemTable([h.memory]))
    }
}
