import Testing
@testable import VhostUserCore
import VhostUserEmbedded

@Suite struct DecoderTests {
    func message(_ request: FrontendRequest, _ payload: [UInt8], needReply: Bool = false) -> [UInt8] {
        let flags = MessageHeader.version | (needReply ? MessageHeader.needReplyFlag : 0)
        return MessageHeader(request: request.rawValue, flags: flags, size: UInt32(payload.count)).bytes + payload
    }

    func decode(_ stream: [UInt8], cuts: [Int]) throws -> [(UInt32, [UInt8], Bool)] {
        var decoder = MessageDecoder(closer: EmbeddedHost())
        var out: [(UInt32, [UInt8], Bool)] = []
        var start = 0
        for cut in cuts + [stream.count] where cut >= start {
            try Array(stream[start..<cut]).withUnsafeBytes { bytes in
                try decoder.feed(bytes) { m in out.append((m.header.request, m.payload, m.header.needsReply)) }
            }
            start = cut
        }
        #expect(!decoder.isMidMessage)
        return out
    }

    // vhost-user "Message Specification": a 12-byte header then `size` payload bytes, whatever the split.
    @Test func everySplitOfAStream() throws {
        let stream = message(.getFeatures, []) + message(.setFeatures, [1, 2, 3, 4, 5, 6, 7, 8])
            + message(.setVringNum, [0, 0, 0, 0, 0, 1, 0, 0], needReply: true) + message(.setOwner, [])
        let expected = try decode(stream, cuts: [])
        #expect(expected.count == 4)
        for a in 0...stream.count {
            for b in stride(from: a, through: stream.count, by: 7) {
                let got = try decode(stream, cuts: [a, b])
                #expect(got.map(\.0) == expected.map(\.0) && got.map(\.1) == expected.map(\.1) && got.map(\.2) == expected.map(\.2),
                        "cuts \(a), \(b)")
            }
        }
        // One byte at a time.
        #expect(try decode(stream, cuts: Array(0...stream.count)).count == 4)
    }

    // Spec: docs/vhost-user.md "Validation before dispatch": messages are read no further than the one in progress.
    @Test func bytesWantedNeverCrossesAMessage() throws {
        var decoder = MessageDecoder(closer: EmbeddedHost())
        #expect(decoder.bytesWanted == 12)
        let m = message(.setFeatures, [1, 2, 3, 4, 5, 6, 7, 8])
        try m[0..<12].withUnsafeBytes { try decoder.feed($0) { _ in Issue.record("too early") } }
        #expect(decoder.bytesWanted == 8)
    }

    // Header flags: version 1, no REPLY bit, no unknown bits; sizes bounded.
    // Spec: vhost-user.rst "Header"; docs/vhost-user.md "Validation before dispatch" (1).
    @Test func fatalHeaders() {
        let badVersion = MessageHeader(request: 1, flags: 0x2, size: 0).bytes
        let replyBit = MessageHeader(request: 1, flags: 0x5, size: 0).bytes
        let unknownBit = MessageHeader(request: 1, flags: 0x11, size: 0).bytes
        let huge = MessageHeader(request: 1, flags: 0x1, size: 0xffff_ffff).bytes
        for bytes in [badVersion, replyBit, unknownBit] {
            var decoder = MessageDecoder(closer: EmbeddedHost())
            #expect(throws: ProtocolError.badFlags(bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 4, as: UInt32.self) })) {
                try bytes.withUnsafeBytes { try decoder.feed($0) { _ in } }
            }
        }
        var decoder = MessageDecoder(closer: EmbeddedHost())
        #expect(throws: ProtocolError.payloadTooLarge(0xffff_ffff)) { try huge.withUnsafeBytes { try decoder.feed($0) { _ in } } }
    }

    // Payload sizes are exact per message type.
    // Spec: vhost-user.rst "Front-end message types" (payloads); docs/vhost-user.md "Validation before dispatch" (2).
    @Test func shapes() {
        let eight = [UInt8](repeating: 0, count: 8)
        eight.withUnsafeBytes { p in
            #expect(MessageShape.of(.setFeatures).accepts(8, payload: p))
            #expect(!MessageShape.of(.setFeatures).accepts(7, payload: p))
            #expect(!MessageShape.of(.getFeatures).accepts(8, payload: p))
        }
        let table = [UInt8]([2, 0, 0, 0, 0, 0, 0, 0]) + [UInt8](repeating: 0, count: 64)
        table.withUnsafeBytes { p in
            #expect(MessageShape.of(.setMemTable).accepts(72, payload: p))
            #expect(!MessageShape.of(.setMemTable).accepts(40, payload: p))
        }
        let nine = [UInt8]([9, 0, 0, 0, 0, 0, 0, 0]) + [UInt8](repeating: 0, count: 288)
        nine.withUnsafeBytes { #expect(!MessageShape.of(.setMemTable).accepts(296, payload: $0)) }
        let config = [UInt8]([0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
        config.withUnsafeBytes { p in
            #expect(MessageShape.of(.setConfig).accepts(16, payload: p))
            #expect(!MessageShape.of(.setConfig).accepts(15, payload: p))
        }
    }
}
