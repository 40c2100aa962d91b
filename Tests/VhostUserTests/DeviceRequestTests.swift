import Testing
@testable import VhostUser
@testable import VhostUserCore
import VhostUserTestSupport

/// Requests a device defines for itself (ids from 0x10000, QEMU patch 0001's
/// VHOST_USER_DEVICE_REQUEST_MIN; docs/frontend-protocol.md): they must ask for a reply under
/// REPLY_ACK; the device's reply goes back as is, a refusal is an 8-byte nonzero status (REPLY_ACK's
/// NACK), and descriptors the device does not keep are closed.
@Suite struct DeviceRequestTests {
    static func deviceRequest(_ id: UInt32, _ payload: [UInt8], needReply: Bool = true) -> [UInt8] {
        MessageHeader(request: id, flags: MessageHeader.version | (needReply ? MessageHeader.needReplyFlag : 0),
                      size: UInt32(payload.count)).bytes + payload
    }

    @Test func answeredByTheDeviceAndUnkeptDescriptorsClosed() throws {
        let h = try Harness()
        try h.start()
        let name = "device-request-\(UInt32.random(in: 0...UInt32.max))"
        let memfd = try namedMemfd(name)
        let extra = try namedMemfd(name)
        try h.frontend.sendRaw(Self.deviceRequest(EchoDevice.echoRequest, [1, 2, 3]), fds: [memfd.rawValue, extra.rawValue])
        // Reversed payload, 2 descriptors came, the first one's file is 16 × 256 bytes.
        #expect(try h.frontend.receiveReply(toRaw: EchoDevice.echoRequest) == [3, 2, 1, 2, 16])
        try h.frontend.sync()
        #expect(descriptorsReferring(to: name) == 2, "only our own two remain: the engine closed what it received")
    }

    @Test func refusedWithANonzeroStatus() throws {
        let h = try Harness()
        try h.start()
        try h.frontend.sendRaw(Self.deviceRequest(EchoDevice.echoRequest + 1, [9]))
        let reply = try h.frontend.receiveReply(toRaw: EchoDevice.echoRequest + 1)
        #expect(reply.count == 8 && TestFrontend.u64(reply) != 0)
        #expect(h.backend.counters.refusedMessages == 1)
    }

    // Without NEED_REPLY (or without REPLY_ACK) the front-end could not learn the outcome: refused
    // silently, and the next reply on the socket is the next request's.
    @Test func withoutAReplyRequestedItIsRefused() throws {
        let h = try Harness()
        try h.start()
        try h.frontend.sendRaw(Self.deviceRequest(EchoDevice.echoRequest, [1], needReply: false))
        #expect(try h.frontend.getFeatures() == h.backend.engine.offeredFeatures)
        #expect(h.backend.counters.refusedMessages == 1)

        let plain = try Harness()
        try plain.start(protocolFeatures: ProtocolFeatures.supported.subtracting(.replyAck))
        try plain.frontend.sendRaw(Self.deviceRequest(EchoDevice.echoRequest, [1]))
        #expect(try plain.frontend.getFeatures() == plain.backend.engine.offeredFeatures)
        #expect(plain.backend.counters.refusedMessages == 1)
    }
}
