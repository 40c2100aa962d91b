import Testing
@testable import IOMMUFrontend

/// The front-end's validation of the log (docs/frontend-protocol.md §9.1), played by `MirrorReader`:
/// every rule stops the mirror at the offending entry, keeping the valid prefix.
@Suite struct MirrorReaderTests {
    static func entry(_ operation: LogOperation, index: UInt64, flags: LogEntryFlags = .last, epoch: UInt32 = 1,
                      status: UInt8 = 0) -> [UInt8] {
        LogEntry(indexLow: UInt32(truncatingIfNeeded: index), operation: operation, flags: flags, status: status,
                 epoch: epoch).encoded
    }

    /// A session whose mirror holds domain 1 (endpoint 1, a mapping 0x10000–0x1ffff) and bypass domain 2.
    static func populated() throws -> Session {
        var s = try Session(logEntries: 64, endpoints: [1, 2, 3])
        try s.request([.domainCreate(domain: 1, bypass: false), .attach(endpoint: 1, domain: 1)])
        try s.request([.map(domain: 1, virtualStart: 0x10000, virtualEnd: 0x1ffff, physicalStart: 0x80000, flags: 3)])
        try s.request([.domainCreate(domain: 2, bypass: true), .attach(endpoint: 2, domain: 2)])
        try s.mirror.drain()
        return s
    }

    /// Publishes one raw entry after the populated state and drains; returns the violation.
    static func violation(_ bytes: [UInt8]) throws -> EntryViolation? {
        var s = try populated()
        let index = s.writer.tail
        s.inject(bytes, at: index, tail: index + 1)
        do throws(MirrorViolation) {
            try s.mirror.drain()
            return nil
        } catch {
            // The valid prefix stays; applied stops before the bad entry; the mirror is fenced.
            #expect(s.mirror.applied == index && s.mirror.domains[1]?.mappings.count == 1)
            #expect(throws: MirrorViolation.fenced) { try s.mirror.drain() }
            guard case .entry(let at, let problem) = error, at == index else { return nil }
            return problem
        }
    }

    static let next: UInt64 = 5  // the populated session's tail

    // §9.1: session checks (index_lo, epoch, LOCAL) and the LAST-at-tail rule.
    @Test func sessionChecks() throws {
        let n = Self.next
        #expect(try Self.violation(Self.entry(.commit, index: n + 64)) == .indexMismatch(found: UInt32(n + 64)))
        #expect(try Self.violation(Self.entry(.commit, index: n, epoch: 2)) == .epochMismatch(found: 2))
        #expect(try Self.violation(Self.entry(.domainCreate(domain: 5, bypass: false), index: n, flags: []))
                == .noLastAtTail)
        if case .malformed = try Self.violation(Self.entry(.commit, index: n).setting(UInt8(1), at: 60)) {} else {
            Issue.record("reserved bytes must be refused")
        }
    }

    // §9.1: LOCAL only with LOCAL_CHANGES, and on every entry of its group.
    @Test func localChecks() throws {
        var s = try Session(capabilities: .commitWindow)
        s.inject(Self.entry(.domainCreate(domain: 1, bypass: false), index: 0, flags: [.local, .last]), at: 0, tail: 1)
        #expect(throws: MirrorViolation.entry(index: 0, .localNotGranted)) { try s.mirror.drain() }
        var t = try Session()
        t.inject(Self.entry(.domainCreate(domain: 1, bypass: false), index: 0, flags: .local), at: 0, tail: 0)
        t.inject(Self.entry(.domainDestroy(domain: 1), index: 1, flags: .last), at: 1, tail: 2)
        #expect(throws: MirrorViolation.entry(index: 1, .localMixed)) { try t.mirror.drain() }
    }

    // §9.1: the state rules of each op.
    @Test func stateChecks() throws {
        let n = Self.next
        let cases: [(LogOperation, EntryViolation)] = [
            (.domainCreate(domain: 1, bypass: false), .domainExists(1)),
            (.domainDestroy(domain: 9), .noSuchDomain(9)),
            (.domainDestroy(domain: 1), .domainHasEndpoints(1)),
            (.attach(endpoint: 7, domain: 1), .unknownEndpoint(7)),
            (.attach(endpoint: 1, domain: 2), .endpointAttached(1)),
            (.attach(endpoint: 3, domain: 9), .noSuchDomain(9)),
            (.detach(endpoint: 1, domain: 2), .notAttached(endpoint: 1, domain: 2)),
            (.detach(endpoint: 3, domain: 1), .notAttached(endpoint: 3, domain: 1)),
            (.map(domain: 9, virtualStart: 0, virtualEnd: 0xfff, physicalStart: 0, flags: 1), .noSuchDomain(9)),
            (.map(domain: 2, virtualStart: 0, virtualEnd: 0xfff, physicalStart: 0, flags: 1), .bypassDomain(2)),
            (.map(domain: 1, virtualStart: 0x800, virtualEnd: 0xfff, physicalStart: 0, flags: 1), .misaligned),
            (.map(domain: 1, virtualStart: 0, virtualEnd: 0xfff, physicalStart: 0x10, flags: 1), .misaligned),
            (.map(domain: 1, virtualStart: 0, virtualEnd: 0x17ff, physicalStart: 0, flags: 1), .misaligned),
            (.map(domain: 1, virtualStart: 0x1f000, virtualEnd: 0x20fff, physicalStart: 0, flags: 1), .overlap),
            (.map(domain: 1, virtualStart: 0, virtualEnd: 0x10fff, physicalStart: 0, flags: 1), .overlap),
            (.unmap(domain: 9, virtualStart: 0, virtualEnd: 0xfff), .noSuchDomain(9)),
            (.unmap(domain: 2, virtualStart: 0, virtualEnd: 0xfff), .bypassDomain(2)),
            (.unmap(domain: 1, virtualStart: 0x18000, virtualEnd: 0x2ffff), .straddle),
            (.unmap(domain: 1, virtualStart: 0, virtualEnd: 0x10fff), .straddle),
            (.unmap(domain: 1, virtualStart: 0x20000, virtualEnd: 0x2ffff), .nothingToUnmap),
        ]
        for (operation, expected) in cases {
            #expect(try Self.violation(Self.entry(operation, index: n)) == expected, "\(operation)")
        }
    }

    // §9.1: MAP inside input_range; a whole-space mapping's end + 1 = 2^64 counts as aligned.
    @Test func inputRangeAndTopOfSpace() throws {
        var s = try Session(inputRange: 0...0xffff_ffff)
        try s.request([.domainCreate(domain: 1, bypass: false)])
        s.inject(Self.entry(.map(domain: 1, virtualStart: 0xffff_f000, virtualEnd: 0x1_0000_0fff, physicalStart: 0, flags: 1),
                            index: 1), at: 1, tail: 2)
        #expect(throws: MirrorViolation.entry(index: 1, .outsideInputRange)) { try s.mirror.drain() }
        var t = try Session()
        try t.request([.domainCreate(domain: 1, bypass: false),
                       .map(domain: 1, virtualStart: 0xffff_ffff_ffff_f000, virtualEnd: .max, physicalStart: 0, flags: 3)])
        try t.mirror.drain()
        #expect(t.mirror.mappingCount == 1)
    }

    // §9.1: the front-end's own caps on domains and mappings.
    @Test func capsOfTheFrontEnd() throws {
        var s = try Session()
        s.mirror = MirrorReader(memory: s.memory, layout: s.mirror.layout,
                                rules: .init(granule: 0x1000, maxDomains: 2, maxMappings: 1), startIndex: 0)
        s.mirror.loadEndpointBitmap()
        try s.request([.domainCreate(domain: 1, bypass: false), .domainCreate(domain: 2, bypass: false)])
        try s.request([.map(domain: 1, virtualStart: 0, virtualEnd: 0xfff, physicalStart: 0, flags: 1)])
        try s.mirror.drain()
        try s.request([.map(domain: 2, virtualStart: 0, virtualEnd: 0xfff, physicalStart: 0, flags: 1)])
        #expect(throws: MirrorViolation.entry(index: 3, .tooManyMappings)) { try s.mirror.drain() }
        var t = try Session()
        t.mirror = MirrorReader(memory: t.memory, layout: t.mirror.layout, rules: .init(granule: 0x1000, maxDomains: 1),
                                startIndex: 0)
        try t.request([.domainCreate(domain: 1, bypass: false), .domainCreate(domain: 2, bypass: false)])
        #expect(throws: MirrorViolation.entry(index: 1, .tooManyDomains)) { try t.mirror.drain() }
    }

    // §9.1: tail below applied, or more than log_entries ahead of it.
    @Test func tailChecks() throws {
        var s = try Session(logEntries: 64, startIndex: 100)
        s.memory.storeRelease(99, at: RegionLayout.tailOffset)
        #expect(throws: MirrorViolation.tail(tail: 99, applied: 100)) { try s.mirror.drain() }
        var t = try Session(logEntries: 64, startIndex: 100)
        t.memory.storeRelease(165, at: RegionLayout.tailOffset)
        #expect(throws: MirrorViolation.tail(tail: 165, applied: 100)) { try t.mirror.drain() }
    }

    // §8.2: a reconnect keeps the mirror and forgets the violation; the new epoch is checked.
    @Test func reconnectResumes() throws {
        var s = try Self.populated()
        s.inject(Self.entry(.commit, index: 5, epoch: 9), at: 5, tail: 6)
        #expect(throws: MirrorViolation.self) { try s.mirror.drain() }
        let request = s.mirror.beginSession(epoch: 2)
        #expect(request.startIndex == 5 && request.epoch == 2)
        s.writer = try LogWriter(memory: s.memory, layout: s.mirror.layout, capabilities: .version1, startIndex: 5)
        try s.request([.detach(endpoint: 1, domain: 1)])
        try s.mirror.drain()
        #expect(s.mirror.endpointDomain[1] == nil && s.mirror.domains[1]?.mappings.count == 1)
    }

    // Plan §1.7 (the front-end's translate): unknown endpoints refused; MSI window identity; unattached
    // endpoints follow bypass; bypass domains identity; mappings need the permission.
    @Test func translation() throws {
        let s = try Self.populated()
        let msi: [ClosedRange<UInt64>] = [0xfee0_0000...0xfeef_ffff]
        let m = s.mirror
        #expect(m.translate(endpoint: 9, address: 0, write: false, bypassAllowed: true) == .refused(.unknownEndpoint))
        #expect(m.translate(endpoint: 3, address: 0x1234, write: true, bypassAllowed: true) == .identity)
        #expect(m.translate(endpoint: 3, address: 0x1234, write: true, bypassAllowed: false) == .refused(.domain))
        #expect(m.translate(endpoint: 3, address: 0xfee0_0000, write: true, bypassAllowed: false, msiWindows: msi) == .identity)
        #expect(m.translate(endpoint: 2, address: 0x1234, write: true, bypassAllowed: false) == .identity)
        #expect(m.translate(endpoint: 1, address: 0x10008, write: true, bypassAllowed: true) == .translated(0x80008))
        #expect(m.translate(endpoint: 1, address: 0x20000, write: false, bypassAllowed: true) == .refused(.mapping))
    }

    // §8.3: the commit window keeps the last queue_size results (not LOCAL groups), oldest first, with
    // distinct positions.
    @Test func commitWindow() throws {
        var s = try Session(logEntries: 256, queueSize: 16)
        for i in 0..<40 { try s.request([], position: UInt16(i), status: UInt8(i % 9)) }
        try s.writer.stage(.domainCreate(domain: 1, bypass: false))
        _ = try s.writer.commitLocal()
        try s.mirror.drain()
        #expect(s.mirror.commitWindow == (24..<40).map { StateSnapshot.Commit(position: UInt16($0), status: UInt8($0 % 9)) })
        // A position already in the window means the back-end's positions drifted (§9.1).
        try s.request([], position: 30)
        #expect(throws: MirrorViolation.entry(index: 41, .positionInWindow(30))) { try s.mirror.drain() }
        // Without COMMIT_WINDOW nothing is recorded, and positions are not checked.
        var t = try Session(capabilities: .localChanges)
        try t.request([], position: 5)
        try t.request([], position: 5)
        try t.mirror.drain()
        #expect(t.mirror.commitWindow.isEmpty && t.mirror.snapshot(bypass: false).commits.isEmpty)
    }
}
