import Dispatch
import Glibc
import Synchronization
import SystemPackage
import TestSupport
import Testing
@testable import VhostUser
@testable import VhostUserCore
import VhostUserTestSupport

/// What the engine's Posix layer adds: real descriptors (closed, never leaked), the socket (a bad header
/// or a hang-up ends the connection), the listener, the back-end channel, stop requests from another
/// thread, and mmap's bounds. The same messages' logic is tested on the embedded driver (VhostUserCoreTests).
@Suite struct PosixTransportTests {
    // Spec: docs/vhost-user.md "Validation before dispatch" (2): exact descriptor counts, unclaimed descriptors closed.
    @Test func wrongDescriptorCountsAreClosed() throws {
        let name = "vu-test-fdcount-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let h = try Harness(.posix)
        try h.frontend.setProtocolFeatures(.supported)
        do {
            let a = try namedMemfd(name), b = try namedMemfd(name)
            #expect(descriptorsReferring(to: name) == 2)
            // SET_VRING_CALL with two descriptors instead of one.
            try h.frontend.send(.setVringCall, TestFrontend.bytes(UInt64(0)), fds: [a.rawValue, b.rawValue], needReply: true)
            #expect(TestFrontend.u64(try h.frontend.receiveReply(to: .setVringCall)) != 0)
            // GET_FEATURES with an unexpected descriptor: refused (empty reply); REM_MEM_REG's is closed too.
            try h.frontend.send(.getFeatures, fds: [a.rawValue])
            #expect(try h.frontend.receiveReply(to: .getFeatures).isEmpty)
            #expect(try h.frontend.sendAcked(.remMemReg, [UInt8](repeating: 0, count: 40), fds: [b.rawValue]) == false)
            // SET_MEM_TABLE that names one region but brings none.
            #expect(try h.frontend.sendAcked(.setMemTable, [1, 0, 0, 0, 0, 0, 0, 0] + h.memory.regionDescription) == false)
            #expect(descriptorsReferring(to: name) == 2, "the back-end kept a copy")
        }
        #expect(descriptorsReferring(to: name) == 0)
    }

    // Spec: docs/vhost-user.md "When the device is reset": a disconnect resets; nothing of the message leaks.
    @Test func disconnectInTheMiddleOfAMessage() throws {
        let name = "vu-test-midmsg-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let h = try Harness(.posix)
        try h.start()
        #expect(h.device.resets == 0)
        do {
            let fd = try namedMemfd(name)
            // A SET_MEM_TABLE header with its descriptor, then only half the payload.
            let payload = [1, 0, 0, 0, 0, 0, 0, 0] + h.memory.regionDescription
            try h.frontend.sendRaw(MessageHeader(request: FrontendRequest.setMemTable.rawValue, flags: 1, size: 40).bytes
                                   + payload.prefix(20), fds: [fd.rawValue])
        }
        #expect(h.finish() == .disconnected)
        #expect(h.device.resets == 1)  // a disconnect resets the device
        #expect(descriptorsReferring(to: name) == 0)
    }

    // Spec: docs/vhost-user.md "How a device plugs in": requestStop() from another thread ends serving.
    @Test func stopRequestEndsServing() throws {
        let h = try Harness(.posix)
        _ = try h.frontend.getFeatures()
        h.posix.requestStop()
        #expect(h.finish(disconnect: false) == .stopped)
    }

    // Spec: docs/vhost-user.md "Validation before dispatch" (1): a bad header ends the connection.
    @Test func badHeaderEndsTheConnection() throws {
        let h = try Harness(.posix)
        try h.frontend.sendRaw(MessageHeader(request: 1, flags: 0x2, size: 0).bytes)
        #expect(h.finish() == .disconnected)
    }

    // Spec: vhost-user.rst VHOST_USER_SET_BACKEND_REQ_FD and VHOST_USER_BACKEND_CONFIG_CHANGE_MSG.
    @Test func backendChannelCarriesConfigChange() throws {
        let h = try Harness(.posix)
        try h.frontend.setProtocolFeatures(.supported)
        let (ours, theirs) = try SystemCall.socketPair()
        let channel = OwnedFileDescriptor(ours)
        do {
            let theirsOwned = OwnedFileDescriptor(theirs)
            #expect(try h.frontend.sendAcked(.setBackendReqFD, fds: [theirsOwned.rawValue]))
        }
        #expect(try h.frontend.sendAcked(.setBackendReqFD) == false)  // no descriptor
        h.engine.notifyConfigChange()
        #expect(SystemCall.isReadable(channel.descriptor, within: 5000))
        var header = [UInt8](repeating: 0, count: 12)
        #expect(try header.withUnsafeMutableBytes { try channel.descriptor.read(into: $0) } == 12)
        #expect(header == MessageHeader(request: BackendRequest.configChange.rawValue, flags: 1, size: 0).bytes)
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
        try stale.close()
        #expect(access(path, F_OK) == 0)
        do { _ = try Listener(path: path) }
        // A regular file is not a socket: left alone.
        try FileDescriptor.open(path, .writeOnly, options: [.create, .closeOnExec], permissions: .ownerReadWrite).close()
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
        let ready = DispatchSemaphore(value: 0)  // the listener's file exists (or it failed): connect now
        let thread = OSThread {
            guard let listener = try? Listener(path: box.value.1) else { ready.signal(); return }
            ready.signal()
            // Serve two front-ends one after the other, as --reconnect does.
            for _ in 0..<2 {
                guard let fd = try? box.value.0.accept(listener) else { return }
                outcomes.value.append(try? box.value.0.serve(connection: fd))
            }
        }
        ready.wait()
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
            _ = waitUntil(.seconds(5)) { device.resets >= round + 1 }
            #expect(device.resets == round + 1)
        }
        thread.join()
        #expect(outcomes.value.items == [.disconnected, .disconnected])
        #expect(access(path, F_OK) != 0)  // the listener removed its socket file
    }
}

@Suite struct PosixDeviceRequestTests {
    @Test func answeredByTheDeviceAndUnkeptDescriptorsClosed() throws {
        let h = try Harness(.posix)
        try h.start()
        let name = "device-request-\(UInt32.random(in: 0...UInt32.max))"
        let memfd = try namedMemfd(name)
        let extra = try namedMemfd(name)
        try h.frontend.sendRaw(TestFrontend.deviceRequest(EchoDevice.echoRequest, [1, 2, 3]), fds: [memfd.rawValue, extra.rawValue])
        // Reversed payload, 2 descriptors came, the first one's file is 16 × 256 bytes.
        #expect(try h.frontend.receiveReply(toRaw: EchoDevice.echoRequest) == [3, 2, 1, 2, 16])
        try h.frontend.sync()
        #expect(descriptorsReferring(to: name) == 2, "only our own two remain: the engine closed what it received")
    }
}

@Suite struct RegionBoundsTests {
    // Spec: docs/vhost-user.md "Guest memory"; docs/security.md (a region beyond its file would fault).
    @Test func regionMustFitItsFile() throws {
        let h = try Harness(.posix)
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

/// How each `serve` of a listening back-end ended, appended from its thread.
final class OutcomeList: Sendable {
    private let list = Mutex<[VhostUserBackend.Outcome?]>([])
    var items: [VhostUserBackend.Outcome?] { list.withLock { $0 } }
    func append(_ item: VhostUserBackend.Outcome?) { list.withLock { $0.append(item) } }
}
