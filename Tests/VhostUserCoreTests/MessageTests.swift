import Testing

@testable import VhostUserCore
import VhostUserTestSupport

/// Every front-end message, well-formed and malformed (vhost-user.rst, "Front-end message types").
@Suite struct MessageTests {
    // Spec: vhost-user.rst "Feature negotiation"; docs/vhost-user.md "Offered features".
    @Test func featureNegotiation() throws {
        let h = try Harness(.embedded)
        let features = try h.frontend.getFeatures()
        // Offer the device's bits and exactly the transport bits the engine implements (virtio 1.4 §6,
        // vhost-user.rst "Feature negotiation"), and the protocol features it implements ("Protocol features").
        typealias V = VirtioSpec
        typealias U = VhostUserSpec
        #expect(features == EchoDevice.featureA | EchoDevice.featureB | V.VIRTIO_F_INDIRECT_DESC | V.VIRTIO_F_EVENT_IDX
                | U.VHOST_USER_F_PROTOCOL_FEATURES | V.VIRTIO_F_VERSION_1)
        #expect(try h.frontend.getProtocolFeatures().rawValue == U.VHOST_USER_PROTOCOL_F_MQ | U.VHOST_USER_PROTOCOL_F_REPLY_ACK
                | U.VHOST_USER_PROTOCOL_F_BACKEND_REQ | U.VHOST_USER_PROTOCOL_F_CONFIG | U.VHOST_USER_PROTOCOL_F_RESET_DEVICE
                | U.VHOST_USER_PROTOCOL_F_CONFIGURE_MEM_SLOTS | U.VHOST_USER_PROTOCOL_F_STATUS)
        try h.frontend.setProtocolFeatures(.supported)
        #expect(try h.frontend.getU64(.getQueueNum) == 2)
        #expect(try h.frontend.getU64(.getMaxMemSlots) == 32)
        // Unoffered bits are refused (with REPLY_ACK the refusal is visible).
        try h.frontend.send(.setFeatures, TestFrontend.bytes(UInt64(1) << 40), needReply: true)
        #expect(TestFrontend.u64(try h.frontend.receiveReply(to: .setFeatures)) != 0)
        try h.frontend.send(.setFeatures, TestFrontend.bytes(EchoDevice.featureA | VhostUserSpec.VHOST_USER_F_PROTOCOL_FEATURES), needReply: true)
        #expect(TestFrontend.u64(try h.frontend.receiveReply(to: .setFeatures)) == 0)
        #expect(h.device.state.withLock { $0.negotiated } == EchoDevice.featureA)
        try h.frontend.send(.setProtocolFeatures, TestFrontend.bytes(UInt64(1) << 2), needReply: true)
        #expect(TestFrontend.u64(try h.frontend.receiveReply(to: .setProtocolFeatures)) != 0)
    }

    // Spec: vhost-user.rst VHOST_USER_PROTOCOL_F_REPLY_ACK: a reply only when negotiated and asked for.
    @Test func replyAckOnlyWhenNegotiated() throws {
        let h = try Harness(.embedded)
        try h.frontend.setProtocolFeatures([.config])
        try h.frontend.send(.setOwner, needReply: true)
        // No REPLY_ACK: no ack comes, so the next reply is GET_FEATURES'.
        #expect(try h.frontend.getFeatures() != 0)
        try h.frontend.setProtocolFeatures([.replyAck])
        try h.frontend.send(.setOwner, needReply: true)
        #expect(TestFrontend.u64(try h.frontend.receiveReply(to: .setOwner)) == 0)
    }

    // Spec: vhost-user.rst "Protocol features": each message needs its feature; docs/vhost-user.md "Validation before dispatch" (2).
    @Test func protocolFeatureGating() throws {
        let h = try Harness(.embedded)
        try h.frontend.setProtocolFeatures([.replyAck])
        // GET_STATUS without F_STATUS: an empty reply tells QEMU it failed.
        try h.frontend.send(.getStatus)
        #expect(try h.frontend.receiveReply(to: .getStatus).isEmpty)
        try h.frontend.send(.getQueueNum)
        #expect(try h.frontend.receiveReply(to: .getQueueNum).isEmpty)
        // SET_VRING_ENABLE needs VHOST_USER_F_PROTOCOL_FEATURES acked.
        #expect(try h.frontend.setVringEnable(0, true) == false)
        #expect(try h.frontend.sendAcked(.resetDevice) == false)
        #expect(h.engine.counters.refusedMessages == 4)
    }

    // Spec: vhost-user.rst VHOST_USER_GET_CONFIG / SET_CONFIG; docs/vhost-user.md "How a device plugs in".
    @Test func configSpace() throws {
        let h = try Harness(.embedded)
        try h.frontend.setProtocolFeatures(.supported)
        #expect(try h.frontend.getConfig(size: 8) == [1, 2, 3, 4, 5, 6, 7, 8])
        #expect(try h.frontend.getConfig(offset: 6, size: 2) == [7, 8])
        #expect(try h.frontend.getConfig(offset: 6, size: 4) == [])  // out of bounds: empty reply
        // QEMU's generic device writes the whole space; a write that keeps read-only bytes is applied.
        #expect(try h.frontend.setConfig([9, 2, 3, 4, 5, 6, 7, 8]))
        #expect(try h.frontend.getConfig(size: 1) == [9])
        // Changing a read-only byte is refused, unless the migration flag is set.
        #expect(try h.frontend.setConfig([9, 2, 3, 0, 5, 6, 7, 8]) == false)
        #expect(try h.frontend.setConfig([9, 2, 3, 0, 5, 6, 7, 8], migration: true))
        #expect(try h.frontend.setConfig(offset: 7, [1, 1]) == false)
    }

    // Spec: vhost-user.rst VHOST_USER_SET_STATUS / GET_STATUS (virtio 1.4 §2.1 status byte).
    @Test func statusRoundTrip() throws {
        let h = try Harness(.embedded)
        try h.frontend.setProtocolFeatures(.supported)
        #expect(try h.frontend.setStatus(0x0f))
        #expect(try h.frontend.getStatus() == 0x0f)
        #expect(try h.frontend.setStatus(0x0f))
        try h.frontend.send(.setStatus, TestFrontend.bytes(UInt64(0x1ff)), needReply: true)
        #expect(TestFrontend.u64(try h.frontend.receiveReply(to: .setStatus)) != 0)
    }

    // Spec: docs/vhost-user.md "Validation before dispatch" (2): refused, the connection goes on.
    @Test func unknownAndUnsupportedMessagesAreRefusedCleanly() throws {
        let h = try Harness(.embedded)
        try h.frontend.setProtocolFeatures(.supported)
        try h.frontend.sendRaw(MessageHeader(request: 99, flags: 0x9, size: 3).bytes + [1, 2, 3])
        #expect(TestFrontend.u64(try h.frontend.receiveReply(toRaw: 99)) != 0)
        #expect(try h.frontend.sendAcked(.setLogBase, [UInt8](repeating: 0, count: 16)) == false)
        #expect(try h.frontend.sendAcked(.iotlbMessage, [UInt8](repeating: 0, count: 32)) == false)
        // Wrong payload sizes.
        #expect(try h.frontend.sendAcked(.setVringNum, [0, 0, 0]) == false)
        #expect(try h.frontend.sendAcked(.setOwner, [0]) == false)
        // The connection is still usable.
        #expect(try h.frontend.getFeatures() != 0)
    }

}
