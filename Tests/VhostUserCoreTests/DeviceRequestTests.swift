import Testing

@testable import VhostUserCore
import VhostUserTestSupport

/// Requests a device defines for itself (ids from 0x10000, QEMU patch 0001's
/// VHOST_USER_DEVICE_REQUEST_MIN; docs/frontend-protocol.md): they must ask for a reply under
/// REPLY_ACK; the device's reply goes back as is, a refusal is an 8-byte nonzero status (REPLY_ACK's
/// NACK), and descriptors the device does not keep are closed.
@Suite struct DeviceRequestTests {
    @Test func refusedWithANonzeroStatus() throws {
        let h = try Harness(.embedded)
        try h.start()
        try h.frontend.sendRaw(TestFrontend.deviceRequest(EchoDevice.echoRequest + 1, [9]))
        let reply = try h.frontend.receiveReply(toRaw: EchoDevice.echoRequest + 1)
        #expect(reply.count == 8 && TestFrontend.u64(reply) != 0)
        #expect(h.engine.counters.refusedMessages == 1)
    }

    // Without NEED_REPLY (or without REPLY_ACK) the front-end could not learn the outcome: refused
    // silently, and the next reply on the socket is the next request's.
    @Test func withoutAReplyRequestedItIsRefused() throws {
        let h = try Harness(.embedded)
        try h.start()
        try h.frontend.sendRaw(TestFrontend.deviceRequest(EchoDevice.echoRequest, [1], needReply: false))
        #expect(try h.frontend.getFeatures() == h.engine.offeredFeatures)
        #expect(h.engine.counters.refusedMessages == 1)

        let plain = try Harness(.embedded)
        try plain.start(protocolFeatures: ProtocolFeatures.supported.subtracting(.replyAck))
        try plain.frontend.sendRaw(TestFrontend.deviceRequest(EchoDevice.echoRequest, [1]))
        #expect(try plain.frontend.getFeatures() == plain.engine.offeredFeatures)
        #expect(plain.engine.counters.refusedMessages == 1)
    }
}
