import Testing
@testable import IOMMUFrontend

/// The back-end's log writer (docs/frontend-protocol.md §5.4 and §6): request boundaries, free-running
/// indices, log space, acknowledgements and the doorbell.
@Suite struct LogWriterTests {
    // §4.1: SET_REGION's OK comes after tail = start_index is stored.
    @Test func startPublishesTheStartIndex() throws {
        let session = try Session(startIndex: 1000)
        #expect(session.memory.loadAcquire(at: RegionLayout.tailOffset) == 1000 && session.writer.tail == 1000)
        #expect(throws: LogWriterError.startIndexTooLarge(1 << 63)) {
            _ = try LogWriter(memory: session.memory, layout: session.writer.layout, capabilities: [], startIndex: 1 << 63)
        }
        // §4.2: a layout that breaks the rules, or memory smaller than the region, is refused.
        var bad = session.writer.layout
        bad.logEntries = 100
        #expect(throws: LogWriterError.self) { _ = try LogWriter(memory: session.memory, layout: bad, capabilities: [], startIndex: 0) }
        let small = InMemoryRegion(byteCount: 4096)
        #expect(throws: LogWriterError.self) {
            _ = try LogWriter(memory: small, layout: session.writer.layout, capabilities: [], startIndex: 0)
        }
    }

    // §5.4, §6 rule 1: staged entries are invisible until the commit; then one tail store covers the
    // whole request, LAST on its last entry with req_pos and status, SYNC on ATTACH and DETACH.
    @Test func tailMovesOnlyAtRequestBoundaries() throws {
        var s = try Session()
        try s.writer.stage(.domainCreate(domain: 1, bypass: false))
        try s.writer.stage(.attach(endpoint: 3, domain: 1))
        #expect(s.memory.loadAcquire(at: RegionLayout.tailOffset) == 0)
        #expect(try s.mirror.drain() == 0)
        let commit = try #require(try s.writer.commit(requestAt: 0x1234, status: 0).commit)
        #expect(commit.firstIndex == 0 && commit.endIndex == 2 && commit.needsAcknowledgement)
        #expect(s.memory.loadAcquire(at: RegionLayout.tailOffset) == 2)
        var raw = [UInt8](repeating: 0, count: 64)
        raw.withUnsafeMutableBytes { s.memory.copyBytes(at: s.writer.layout.entryOffset(1), into: $0) }
        let last = try decode(raw) { b throws(FrontendWireError) in try LogEntry(decoding: b) }
        #expect(last.flags == [.sync, .last] && last.requestPosition == 0x1234 && last.indexLow == 1 && last.epoch == 1)
        raw.withUnsafeMutableBytes { s.memory.copyBytes(at: s.writer.layout.entryOffset(0), into: $0) }
        let first = try decode(raw) { b throws(FrontendWireError) in try LogEntry(decoding: b) }
        #expect(first.flags == [] && first.requestPosition == 0)
        #expect(try s.mirror.drain() == 2)
        #expect(s.mirror.endpointDomain[3] == 1 && s.mirror.commitWindow == [.init(position: 0x1234, status: 0)])
    }

    // §5.4: a request that staged nothing (a failure, a re-ATTACH, an UNMAP of nothing) is a COMMIT.
    @Test func emptyRequestIsACommit() throws {
        var s = try Session()
        let commit = try #require(try s.request([], position: 9, status: 4).commit)
        #expect(commit.endIndex == 1 && !commit.needsAcknowledgement)
        try s.mirror.drain()
        #expect(s.mirror.commitWindow == [.init(position: 9, status: 4)] && s.mirror.domains.isEmpty)
    }

    // §5.4: at most 8 entries per request.
    @Test func atMostEightEntriesPerRequest() throws {
        var s = try Session()
        #expect(throws: LogWriterError.commitStaged) { try s.writer.stage(.commit) }
        for i in 0..<8 { try s.writer.stage(.domainCreate(domain: UInt32(i), bypass: false)) }
        #expect(throws: LogWriterError.tooManyEntries) { try s.writer.stage(.domainDestroy(domain: 0)) }
    }

    // §6 rule 8: no entry is published over one the front-end has not applied; the request stays staged
    // and goes out once `applied` moves. Indices are free-running across many wraps of the slots.
    @Test func logSpaceAndWrapping() throws {
        var s = try Session(logEntries: 64, startIndex: 0xffff_fff0)  // index_lo wraps too
        var published = 0
        for round in 0..<40 {
            for i in 0..<5 {
                let domain = UInt32(round * 5 + i)
                switch try s.request([.domainCreate(domain: domain, bypass: false), .domainDestroy(domain: domain)]) {
                case .committed: published += 1
                case .noSpace:
                    #expect(s.writer.tail - s.mirror.applied + 2 > 64)
                    #expect(s.writer.staged.count == 2)
                    #expect(throws: LogWriterError.commitPending) { try s.writer.stage(.domainDestroy(domain: 0)) }
                    try s.mirror.drain()
                    #expect(try s.writer.retry().commit != nil)
                    published += 1
                }
            }
            if round % 3 == 0 { try s.mirror.drain() }
        }
        try s.mirror.drain()
        #expect(published == 200 && s.mirror.applied == 0xffff_fff0 + 400 && s.mirror.domains.isEmpty)
    }

    // §6 rules 1, 5, 7: a waiting request rings once; while that doorbell is outstanding nothing rings
    // again; after the acknowledgement a still-unacknowledged later request rings again.
    @Test func doorbellIsCoalesced() throws {
        var s = try Session(logEntries: 1024)
        try s.request([.domainCreate(domain: 1, bypass: false)])
        let first = try #require(try s.request([.attach(endpoint: 1, domain: 1)]).commit)
        #expect(first.needsAcknowledgement && first.ringDoorbell)
        let second = try #require(try s.request([.attach(endpoint: 2, domain: 1)]).commit)
        #expect(second.needsAcknowledgement && !second.ringDoorbell)  // outstanding
        #expect(try !s.writer.progress().ringDoorbell)
        // The front-end's doorbell drain saw only the first request (tail 2), then acknowledged.
        s.memory.storeRelease(first.endIndex, at: RegionLayout.tailOffset)
        try s.mirror.drain()
        s.memory.storeRelease(second.endIndex, at: RegionLayout.tailOffset)
        #expect(first.isAcknowledged(by: s.mirror.acked) && !second.isAcknowledged(by: s.mirror.acked))
        #expect(try s.writer.progress().ringDoorbell)  // the second still waits: ring again
        #expect(try !s.writer.progress().ringDoorbell)
        try s.mirror.drain()
        let progress = try s.writer.progress()
        #expect(second.isAcknowledged(by: progress.acked) && !progress.ringDoorbell)
    }

    // §6 rule 7: a backlog of min(4096, log_entries/2) unapplied entries rings, without any waiter.
    @Test func backlogRings() throws {
        var s = try Session(logEntries: 64)
        #expect(s.writer.backlogThreshold == 32)
        var rang = 0
        for i in 0..<40 {
            let commit = try #require(try s.request([.domainCreate(domain: UInt32(i), bypass: false)]).commit)
            if commit.ringDoorbell { rang += 1; #expect(commit.endIndex == 32) }
        }
        #expect(rang == 1)
    }

    // §6 rule 8 with rule 7: no space rings (once), and the retry succeeds after the front-end drains.
    @Test func noSpaceRings() throws {
        var s = try Session(logEntries: 64)
        for i in 0..<31 { try s.request([.domainCreate(domain: UInt32(i), bypass: false), .domainDestroy(domain: UInt32(i))]) }
        s.writer.abandonAcknowledgements()  // forget the backlog doorbell of the loop above
        guard case .noSpace(let ring) = try s.request([.domainCreate(domain: 99, bypass: false),
                                                       .domainDestroy(domain: 99), .domainCreate(domain: 98, bypass: false)]) else {
            Issue.record("expected no space"); return
        }
        #expect(ring)
        guard case .noSpace(let again) = try s.writer.retry() else { Issue.record("space"); return }
        #expect(!again)
        try s.mirror.drain()
        #expect(try s.writer.retry().commit != nil)
        #expect(throws: LogWriterError.nothingToRetry) { try s.writer.retry() }
    }

    // §9.2: `applied` or `acked` beyond `tail` ends the session.
    @Test func progressBeyondTailIsAViolation() throws {
        var s = try Session()
        try s.request([])
        s.memory.storeRelease(5, at: RegionLayout.ackedOffset)
        #expect(throws: LogWriterError.progressBeyondTail(applied: 0, acked: 5, tail: 1)) { try s.writer.progress() }
        s.memory.storeRelease(0, at: RegionLayout.ackedOffset)
        s.memory.storeRelease(.max, at: RegionLayout.appliedOffset)
        #expect(throws: LogWriterError.self) { try s.request([]) }
    }

    // §6 rule 2: after a MAP is published, a notifier byte (bits 0–1) of an endpoint of its domain makes
    // the request wait; other bits and other endpoints do not.
    @Test func notifierBytesDecideMapAcknowledgement() throws {
        var s = try Session(logEntries: 256)
        try s.request([.domainCreate(domain: 1, bypass: false)])
        s.mirror.setNotifier(endpoint: 4, flags: 0xfc)  // reserved bits only
        s.mirror.setNotifier(endpoint: 5, flags: 2)  // UNMAP notifier, but not in the domain
        var commit = try #require(try s.request([.map(domain: 1, virtualStart: 0, virtualEnd: 0xfff, physicalStart: 0, flags: 3)]).commit)
        try s.writer.checkNotifiers(of: [4, 6], for: &commit)
        #expect(!commit.needsAcknowledgement)
        try s.writer.checkNotifiers(of: [4, 5], for: &commit)
        #expect(commit.needsAcknowledgement && commit.ringDoorbell)
    }

    // §6.1: LOCAL groups need LOCAL_CHANGES; every entry carries LOCAL, the last LAST, no result.
    @Test func localGroups() throws {
        var s = try Session()
        try s.request([.domainCreate(domain: 1, bypass: false), .attach(endpoint: 2, domain: 1)])
        try s.writer.stage(.detach(endpoint: 2, domain: 1))
        try s.writer.stage(.domainDestroy(domain: 1))
        let commit = try #require(try s.writer.commitLocal().commit)
        #expect(commit.needsAcknowledgement && commit.endIndex - commit.firstIndex == 2)
        try s.mirror.drain()
        #expect(s.mirror.domains.isEmpty && s.mirror.commitWindow.count == 1)
        #expect(try s.writer.commitLocal().commit?.endIndex == 4)  // nothing staged, nothing written
        var plain = try Session(capabilities: .commitWindow)
        #expect(throws: LogWriterError.localChangesNotGranted) { try plain.writer.commitLocal() }
    }

    // §7: RESET needs a new epoch and start_index ≤ tail; tail rewinds, unpublished entries go.
    @Test func resetRules() throws {
        var s = try Session()
        try s.request([.domainCreate(domain: 1, bypass: false)])
        try s.request([.domainCreate(domain: 2, bypass: false)])
        try s.mirror.drain(limit: 1)
        try s.writer.stage(.domainDestroy(domain: 1))
        #expect(throws: LogWriterError.resetEpochUnchanged(1)) { try s.writer.reset(epoch: 1, startIndex: 1) }
        #expect(throws: LogWriterError.resetBeyondTail(startIndex: 3, tail: 2)) { try s.writer.reset(epoch: 2, startIndex: 3) }
        let request = s.mirror.reset(epoch: 2, kind: .device, bypass: true)
        #expect(request.startIndex == 1)
        try s.writer.reset(epoch: request.epoch, startIndex: request.startIndex)
        #expect(s.writer.tail == 1 && s.writer.staged.isEmpty && s.memory.loadAcquire(at: RegionLayout.tailOffset) == 1)
        try s.request([.domainCreate(domain: 2, bypass: true)])
        try s.mirror.drain()
        #expect(s.mirror.domains.count == 1 && s.mirror.domains[2]?.bypass == true)
    }
}
