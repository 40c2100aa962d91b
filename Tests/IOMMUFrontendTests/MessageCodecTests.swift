import Testing
@testable import IOMMUFrontend

/// The four front-end requests and HELLO's reply (docs/frontend-protocol.md §2–§4.1, §7, §8.2): exact
/// sizes, every field checked, and encodings that decode to the same value.
@Suite struct MessageCodecTests {
    // §3: HELLO round-trips; the reply picks version 1 and grants only offered, supported capabilities.
    @Test func helloNegotiatesVersionAndCapabilities() throws {
        let hello = HelloRequest(minVersion: 1, maxVersion: 7, capabilities: FrontendCapabilities(rawValue: 0xff))
        let decoded = try decode(hello.encoded) { raw throws(FrontendWireError) in try HelloRequest(decoding: raw) }
        #expect(decoded == hello && hello.encoded.count == 16)
        let reply = try decoded.reply(supporting: [.commitWindow, .faultRing, .localChanges], queueSize: 1024)
        // Unknown bits are not in force; the three version-1 capabilities are.
        #expect(reply.version == 1 && reply.capabilities == [.commitWindow, .faultRing, .localChanges] && reply.queueSize == 1024)
        let back = try decode(reply.encoded) { raw throws(FrontendWireError) in try HelloReply(decoding: raw, for: hello) }
        #expect(back == reply && reply.encoded.count == 24)
        let narrow = HelloRequest(capabilities: .localChanges)
        #expect(try narrow.reply(supporting: .version1, queueSize: 256).capabilities == .localChanges)
    }

    // §3: a range without version 1 is UNSUPPORTED; a malformed HELLO is INVALID (both 8-byte replies).
    @Test func helloRefusals() throws {
        let good = HelloRequest(capabilities: []).encoded
        #expect(throws: FrontendWireError.noCommonVersion(min: 2, max: 3)) {
            try HelloRequest(minVersion: 2, maxVersion: 3, capabilities: []).reply(supporting: .version1, queueSize: 64)
        }
        #expect(FrontendWireError.noCommonVersion(min: 2, max: 3).status == .unsupported)
        let cases: [[UInt8]] = [
            Array(good.dropLast()), good + [0], good.setting(UInt32(0x4d4f4957), at: 0),
            good.setting(UInt16(0), at: 4), good.setting(UInt16(2), at: 4).setting(UInt16(1), at: 6),
        ]
        for bytes in cases {
            let error = wireError(bytes) { raw throws(FrontendWireError) in try HelloRequest(decoding: raw) }
            #expect(error != nil && error?.status == .invalid)
        }
    }

    // §9.1: the front-end checks the reply: magic, reserved, version in range, caps offered, queue size.
    @Test func helloReplyChecks() {
        let hello = HelloRequest(capabilities: .commitWindow)
        let good = HelloReply(version: 1, capabilities: .commitWindow, queueSize: 256).encoded
        #expect(wireError(good) { raw throws(FrontendWireError) in try HelloReply(decoding: raw, for: hello) } == nil)
        let bad: [[UInt8]] = [
            good.setting(UInt32(0), at: 0), good.setting(UInt16(1), at: 6), good.setting(UInt32(1), at: 20),
            good.setting(UInt16(2), at: 4), good.setting(UInt64(4), at: 8),
            good.setting(UInt32(8), at: 16), good.setting(UInt32(2048), at: 16), good.setting(UInt32(100), at: 16),
            Array(good.prefix(8)),
        ]
        for bytes in bad {
            #expect(wireError(bytes) { raw throws(FrontendWireError) in try HelloReply(decoding: raw, for: hello) } != nil)
        }
    }

    // §4.1, §9.2: SET_REGION's payload: flags 0, start_index < 2^63, region size 4096...64 MiB.
    @Test func setRegionChecks() throws {
        let request = SetRegionRequest(regionSize: 4_272_128, epoch: 9, startIndex: 77)
        #expect(try decode(request.encoded) { raw throws(FrontendWireError) in try SetRegionRequest(decoding: raw) } == request)
        let good = request.encoded
        let bad: [[UInt8]] = [
            good.setting(UInt32(1), at: 12), good.setting(UInt64(1) << 63, at: 16),
            good.setting(UInt64(4095), at: 0), good.setting(UInt64(64 << 20) + 1, at: 0), good + [0],
        ]
        for bytes in bad {
            #expect(wireError(bytes) { raw throws(FrontendWireError) in try SetRegionRequest(decoding: raw) }?.status == .invalid)
        }
        #expect(FrontendProtocol.Request.setRegion.descriptorCount == 3 && FrontendProtocol.Request.setRegion.replySize == 8)
    }

    // §8.2: STATE_PUSH's size must be exactly what its counts need, at most 256 MiB; flags, reserved 0.
    @Test func statePushChecks() throws {
        let snapshot = StateSnapshot(epoch: 3, bypass: false, domains: [.init(id: 1, bypass: false)],
                                     endpoints: [.init(endpoint: 2, domain: 1)])
        let request = StatePushRequest(for: snapshot)
        #expect(request.snapshotSize == 48)
        #expect(try decode(request.encoded) { raw throws(FrontendWireError) in try StatePushRequest(decoding: raw) } == request)
        let good = request.encoded
        let bad: [[UInt8]] = [
            good.setting(UInt64(49), at: 0), good.setting(UInt32(1), at: 12), good.setting(UInt32(1), at: 36),
            good.setting(UInt64(1) << 62, at: 24),  // counts that would overflow a naive product
            good.setting(UInt64(9 << 20), at: 24).setting(UInt64(48 + (9 << 25)), at: 0),  // > 256 MiB
        ]
        for bytes in bad {
            #expect(wireError(bytes) { raw throws(FrontendWireError) in try StatePushRequest(decoding: raw) } != nil)
        }
    }

    // §7: RESET: kind 1 or 2, bypass 0 or 1, reserved 0, start_index < 2^63.
    @Test func resetChecks() throws {
        let request = ResetRequest(epoch: 4, kind: .system, bypass: true, startIndex: 12)
        #expect(try decode(request.encoded) { raw throws(FrontendWireError) in try ResetRequest(decoding: raw) } == request)
        let good = request.encoded
        let bad: [[UInt8]] = [
            good.setting(UInt8(0), at: 4), good.setting(UInt8(3), at: 4), good.setting(UInt8(2), at: 5),
            good.setting(UInt16(1), at: 6), good.setting(UInt64.max, at: 8), Array(good.dropLast()),
        ]
        for bytes in bad {
            #expect(wireError(bytes) { raw throws(FrontendWireError) in try ResetRequest(decoding: raw) } != nil)
        }
    }

    // §2.1: the sizes and descriptor counts of the table; §2.2: the status reply is any 8 bytes.
    @Test func requestTable() throws {
        let table: [(FrontendProtocol.Request, Int, Int, Int)] = [
            (.hello, 16, 0, 24), (.setRegion, 24, 3, 8), (.statePush, 40, 1, 8), (.reset, 16, 0, 8),
        ]
        for (request, payload, fds, reply) in table {
            #expect(request.payloadSize == payload && request.descriptorCount == fds && request.replySize == reply)
        }
        let status = try decode(FrontendStatus.refused.encoded) { raw throws(FrontendWireError) in try FrontendStatus(decoding: raw) }
        #expect(status == .refused && status.description == "REFUSED")
    }
}
