import Testing
@testable import IOMMUFrontend

/// The STATE_PUSH snapshot (docs/frontend-protocol.md §8.2): format, order, references, and the
/// back-end's configuration checks.
@Suite struct SnapshotTests {
    static let sample = StateSnapshot(
        epoch: 4, bypass: true,
        domains: [.init(id: 1, bypass: false), .init(id: 5, bypass: true), .init(id: 9, bypass: false)],
        endpoints: [.init(endpoint: 0x10, domain: 9), .init(endpoint: 0x18, domain: 1), .init(endpoint: 0x100, domain: 5)],
        mappings: [.init(domain: 1, flags: 3, virtualStart: 0x1000, virtualEnd: 0x1fff, physicalStart: 0x9000),
                   .init(domain: 1, flags: 1, virtualStart: 0x2000, virtualEnd: 0x3fff, physicalStart: 0x4000),
                   .init(domain: 9, flags: 2, virtualStart: 0, virtualEnd: 0xfff, physicalStart: 0)],
        commits: [.init(position: 65535, status: 0), .init(position: 0, status: 6)])

    static func decodeSnapshot(_ bytes: [UInt8], request: StatePushRequest? = nil) -> Result<StateSnapshot, FrontendWireError> {
        let request = request ?? StatePushRequest(for: sample)
        return bytes.withUnsafeBytes { raw in
            Result { () throws(FrontendWireError) in try StateSnapshot(decoding: raw, request: request) }
        }
    }

    // §8.2: the layout (header, then domains, endpoints, mappings, commits) round-trips.
    @Test func roundTrip() throws {
        let bytes = Self.sample.encoded
        #expect(UInt64(bytes.count) == Self.sample.byteCount && bytes.count == 32 + 24 + 24 + 96 + 16)
        #expect(try Self.decodeSnapshot(bytes).get() == Self.sample)
        let empty = StateSnapshot(epoch: 1, bypass: false)
        #expect(try Self.decodeSnapshot(empty.encoded, request: StatePushRequest(for: empty)).get() == empty)
    }

    // §8.2, §9.2: every format rule, as untrusted input.
    @Test func formatChecks() {
        let good = Self.sample.encoded
        let mapping0 = 32 + 24 + 24, commit0 = mapping0 + 96
        let bad: [(String, [UInt8])] = [
            ("magic", good.setting(UInt32(0), at: 0)),
            ("version", good.setting(UInt16(2), at: 4)),
            ("flags", good.setting(UInt16(2), at: 6)),
            ("epoch", good.setting(UInt32(5), at: 8)),
            ("counts", good.setting(UInt32(2), at: 12)),
            ("domain order", good.setting(UInt32(5), at: 32)),
            ("domain flags", good.setting(UInt32(2), at: 36)),
            ("endpoint order", good.setting(UInt32(0x18), at: 56)),
            ("endpoint range", good.setting(UInt32(0x10000), at: 72)),
            ("endpoint's domain", good.setting(UInt32(2), at: 60)),
            ("domain without endpoint", good.setting(UInt32(1), at: 60).setting(UInt32(0x11), at: 56)),
            ("mapping in bypass domain", good.setting(UInt32(5), at: mapping0 + 64)),
            ("mapping in missing domain", good.setting(UInt32(7), at: mapping0 + 64)),
            ("mapping flags", good.setting(UInt32(8), at: mapping0 + 4)),
            ("reversed", good.setting(UInt64(0x1000), at: mapping0 + 16).setting(UInt64(0x2000), at: mapping0 + 8)),
            ("overlap", good.setting(UInt64(0x1fff), at: mapping0 + 32 + 8)),
            ("mapping order", good.setting(UInt32(9), at: mapping0)),
            ("phys overflow", good.setting(UInt64.max, at: mapping0 + 24)),
            ("status", good.setting(UInt8(9), at: commit0 + 2)),
            ("commit reserved", good.setting(UInt8(1), at: commit0 + 3)),
            ("commit twice", good.setting(UInt16(0), at: commit0)),
        ]
        for (name, bytes) in bad {
            if case .success = Self.decodeSnapshot(bytes) { Issue.record("accepted: \(name)") }
        }
        if case .success = Self.decodeSnapshot(Array(good.dropLast())) { Issue.record("accepted a short snapshot") }
    }

    static func rules(_ change: (inout StateSnapshot.Rules) -> Void = { _ in }) -> StateSnapshot.Rules {
        var rules = StateSnapshot.Rules(knownEndpoints: EndpointBitmap(endpoints: [0x10, 0x18, 0x100])!, granule: 0x1000,
                                        maxDomains: 3, maxMappings: 3, maxMappingsPerDomain: 2, queueSize: 2,
                                        capabilities: .version1)
        change(&rules)
        return rules
    }

    // §8.2: a snapshot the guest could not have produced through accepted requests is REFUSED.
    @Test func configurationChecks() throws {
        try Self.sample.validate(against: Self.rules())
        let cases: [(StateSnapshot.Rules, SnapshotRefusal)] = [
            (Self.rules { $0.maxDomains = 2 }, .tooManyDomains(3)),
            (Self.rules { $0.maxMappings = 2 }, .tooManyMappings(3)),
            (Self.rules { $0.maxMappingsPerDomain = 1 }, .tooManyMappings(2)),
            (Self.rules { $0.domainRange = 0...8 }, .domainOutOfRange(9)),
            (Self.rules { $0.knownEndpoints = EndpointBitmap(endpoints: [0x10, 0x18])! }, .unknownEndpoint(0x100)),
            (Self.rules { $0.granule = 0x2000 }, .misaligned(domain: 1, virtualStart: 0x1000)),
            (Self.rules { $0.inputRange = 0x1000...UInt64.max }, .outsideInputRange(domain: 9, virtualStart: 0)),
            (Self.rules { $0.capabilities = [] }, .commitWindowNotGranted),
            (Self.rules { $0.queueSize = 1 }, .commitWindowTooLarge(2)),
        ]
        for (rules, refusal) in cases {
            #expect(throws: refusal) { try Self.sample.validate(against: rules) }
        }
    }

    // §8.2: the mirror's snapshot drops domains only aux attachments held, and decodes as sent.
    @Test func mirrorSnapshot() throws {
        var s = try Session(logEntries: 64)
        try s.request([.domainCreate(domain: 3, bypass: false), .attach(endpoint: 2, domain: 3)], position: 1)
        try s.request([.map(domain: 3, virtualStart: 0x4000, virtualEnd: 0x4fff, physicalStart: 0x8000, flags: 3)], position: 2)
        try s.request([.domainCreate(domain: 8, bypass: false)], position: 3)  // an aux domain
        try s.request([.map(domain: 8, virtualStart: 0, virtualEnd: 0xfff, physicalStart: 0, flags: 3)], position: 4)
        try s.mirror.drain()
        let snapshot = s.mirror.snapshot(bypass: false)
        #expect(s.mirror.domains.keys.sorted() == [3] && s.mirror.mappingCount == 1)
        #expect(snapshot.domains == [.init(id: 3, bypass: false)] && snapshot.endpoints == [.init(endpoint: 2, domain: 3)])
        #expect(snapshot.commits.map(\.position) == [1, 2, 3, 4])
        let request = StatePushRequest(for: snapshot)
        #expect(try Self.decodeSnapshot(snapshot.encoded, request: request).get() == snapshot)
    }
}
