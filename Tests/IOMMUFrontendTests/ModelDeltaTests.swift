import IOMMUFrontend
import ModelMirroring
import PASIDAllocators
import SeededRandom
import Testing
import VirtioIOMMU

/// A failure replays from its seed (SeededRandom).
extension SplitMix64 {
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
}

/// The model's state changes, through the log writer and the reference mirror (§5.4, §6, §9.1): the
/// front-end ends up with exactly the model's domains, attachments and mappings, and translates as the
/// model does.
@Suite struct ModelDeltaTests {
    static let msi = ReservedRegion.x86MSIWindow
    static let reserved = ReservedRegion(.reserved, IOVARange(first: 0x7000_0000, last: 0x7000_ffff)!)
    static let inputLast: UInt64 = (1 << 48) - 1

    static func makeDevice(bypass: Bool) throws -> IOMMUModel {
        var endpoints: [UInt32: [ReservedRegion]] = [:]
        for id in 0..<10 as Range<UInt32> { endpoints[id * 8] = id % 3 == 0 ? [msi] : (id % 3 == 1 ? [msi, reserved] : []) }
        var configuration = Configuration(
            endpoints: endpoints, inputRange: IOVARange(first: 0, last: inputLast)!, domainRange: 0...40, bypass: bypass,
            features: [.mapUnmap, .inputRange, .domainRange, .probe, .mmio, .bypassConfig, .pasid],
            limits: Limits(maxDomains: 7, maxMappingsPerDomain: 12, maxMappingsTotal: 30))
        configuration.pasidWidths = [8: 4, 16: 4, 24: 8]
        let store = try InMemoryPASIDStore(width: 8, defaultQuota: 6)
        var device = try IOMMUModel(configuration: configuration, pasidStore: store, owner: "delta-test")
        device.negotiate(configuration.features)
        device.recordsChanges = true
        return device
    }

    /// Runs one request through the model and the log, as the daemon will; returns its commit.
    static func run(_ request: [UInt8], writable: Int = 4, device: inout IOMMUModel, session: inout Session,
                    position: UInt16) throws -> LogCommit? {
        _ = device.handle(request: request, writableSize: writable)
        var outcome: CommitOutcome?
        try device.drainChanges { change in
            if let result = try session.writer.record(change, requestAt: position) { outcome = result }
        }
        guard var result = outcome else { return nil }
        // No space: the front-end drains on the doorbell, then the commit is retried (§6 rule 8).
        while case .noSpace = result {
            try session.mirror.drain()
            result = try session.writer.retry()
        }
        return result.commit
    }

    /// The ops of the entries a commit published.
    static func ops(_ commit: LogCommit?, _ session: Session) throws -> [LogOperation] {
        guard let commit else { return [] }
        return try (commit.firstIndex..<commit.endIndex).map { index in
            var bytes = [UInt8](repeating: 0, count: 64)
            bytes.withUnsafeMutableBytes { session.memory.copyBytes(at: session.writer.layout.entryOffset(index), into: $0) }
            return try bytes.withUnsafeBytes { raw in try LogEntry(decoding: raw) }.operation
        }
    }

    // §5.4's table: the entries of each request and outcome, in the model's order.
    @Test func entriesOfEachRequest() throws {
        var device = try Self.makeDevice(bypass: false)
        var s = try Session(logEntries: 256, endpoints: Array(device.endpoints.keys))
        func run(_ request: [UInt8], writable: Int = 4) throws -> [LogOperation] {
            s.nextPosition &+= 1
            return try Self.ops(Self.run(request, writable: writable, device: &device, session: &s, position: s.nextPosition), s)
        }
        #expect(try run(AttachRequest(domain: 1, endpoint: 8).encoded) == [.domainCreate(domain: 1, bypass: false), .attach(endpoint: 8, domain: 1)])
        #expect(try run(AttachRequest(domain: 1, endpoint: 8).encoded) == [.commit])  // already there
        #expect(try run(MapRequest(domain: 1, virtualStart: 0x1000, virtualEnd: 0x2fff, physicalStart: 0x5000, flags: 3).encoded)
                == [.map(domain: 1, virtualStart: 0x1000, virtualEnd: 0x2fff, physicalStart: 0x5000, flags: 3)])
        #expect(try run(MapRequest(domain: 1, virtualStart: 0x1000, virtualEnd: 0x1fff, physicalStart: 0, flags: 3).encoded) == [.commit])  // INVAL
        #expect(try run(UnmapRequest(domain: 1, virtualStart: 0, virtualEnd: 0xffff).encoded) == [.unmap(domain: 1, virtualStart: 0, virtualEnd: 0xffff)])
        #expect(try run(UnmapRequest(domain: 1, virtualStart: 0, virtualEnd: 0xffff).encoded) == [.commit])  // nothing left
        // A move that empties the old domain: DETACH, DESTROY, CREATE, ATTACH.
        #expect(try run(AttachRequest(domain: 2, endpoint: 8, flags: 1).encoded)
                == [.detach(endpoint: 8, domain: 1), .domainDestroy(domain: 1), .domainCreate(domain: 2, bypass: true), .attach(endpoint: 8, domain: 2)])
        #expect(try run(DetachRequest(domain: 2, endpoint: 8).encoded) == [.detach(endpoint: 8, domain: 2), .domainDestroy(domain: 2)])
        #expect(try run(DetachRequest(domain: 2, endpoint: 8).encoded) == [.commit])  // INVAL
        #expect(try run(ProbeRequest(endpoint: 8).encoded, writable: 516).isEmpty)  // PROBE: nothing
        // PASID extension: aux domains' CREATE/MAP/DESTROY are logged, the aux attachments are not.
        _ = try run(AttachRequest(domain: 3, endpoint: 8).encoded)
        #expect(try run(AllocPASIDRequest().encoded, writable: 12) == [.commit])
        let pasid = device.heldPASIDs.first!
        #expect(try run(PASIDAttachmentRequest(domain: 4, endpoint: 8, pasid: pasid).encoded(.attachPASID)) == [.domainCreate(domain: 4, bypass: false)])
        #expect(try run(MapRequest(domain: 4, virtualStart: 0, virtualEnd: 0xfff, physicalStart: 0, flags: 1).encoded).count == 1)
        #expect(try run(PASIDAttachmentRequest(domain: 4, endpoint: 8, pasid: pasid).encoded(.detachPASID)) == [.domainDestroy(domain: 4)])
        try s.mirror.drain()
        #expect(s.mirror.domains.keys.sorted() == [3] && s.mirror.endpointDomain == [8: 3])
        // Only completed requests reach the commit window; PROBE does not.
        #expect(s.mirror.commitWindow.count == 14)
    }

    // Recording is off by default and costs nothing observable; turning it off drops what was recorded.
    @Test func recordingIsOptional() throws {
        var device = try Self.makeDevice(bypass: true)
        device.recordsChanges = false
        _ = device.handle(request: AttachRequest(domain: 1, endpoint: 0).encoded, writableSize: 4)
        #expect(device.pendingChanges.isEmpty && !device.recordsChanges)
        device.recordsChanges = true
        _ = device.handle(request: DetachRequest(domain: 1, endpoint: 0).encoded, writableSize: 4)
        #expect(device.pendingChanges == [.detached(endpoint: 0, domain: 1), .domainDestroyed(1), .requestCompleted(.detach, .ok)])
        try device.writeConfig(offset: 36, bytes: [0])
        device.reset()
        #expect(device.pendingChanges.suffix(2) == [.bypassChanged(false), .reset])
        device.recordsChanges = false
        #expect(device.pendingChanges.isEmpty)
    }

    /// The mirror holds exactly the model's primary state; domains held only by aux attachments are in
    /// both (the mirror sees their CREATE), without endpoints.
    static func expectSameState(_ device: IOMMUModel, _ mirror: MirrorReader, step: Int) {
        #expect(Set(device.domains.keys) == Set(mirror.domains.keys), "domains, step \(step)")
        for (id, domain) in device.domains {
            guard let mirrored = mirror.domains[id] else { continue }
            #expect(mirrored.bypass == domain.isBypass && mirrored.endpoints == domain.endpoints, "domain \(id), step \(step)")
            let model = domain.mappings.mappings.map {
                MirrorReader.Mapping(virtualStart: $0.virtualStart, virtualEnd: $0.virtualEnd,
                                                     physicalStart: $0.physicalStart, flags: $0.flags.rawValue)
            }
            #expect(mirrored.mappings == model, "mappings of \(id), step \(step)")
        }
        let attached = device.endpoints.compactMapValues(\.domain)
        #expect(attached == mirror.endpointDomain, "attachments, step \(step)")
        #expect(mirror.mappingCount == device.mappingCount)
    }

    /// Translations agree, except where the front-end's MSI rule (plan §1.7, as QEMU's virtio-iommu) is
    /// wider than the model's: an unattached endpoint without bypass is refused by the model but gets its
    /// MSI window 1:1.
    static func expectSameTranslations(_ device: inout IOMMUModel, _ mirror: MirrorReader, rng: inout SplitMix64) {
        let bypass = device.unattachedEndpointsBypass
        for _ in 0..<24 {
            let endpoint = UInt32(rng.below(12) * 8)  // 80 and 88 are unknown
            let address: UInt64 = switch rng.below(4) {
            case 0: 0xfee0_0000 + UInt64(rng.below(0x10_0000))
            case 1: 0x7000_0000 + UInt64(rng.below(0x2_0000))
            default: UInt64(rng.below(64)) << 12 | UInt64(rng.below(4096))
            }
            let write = rng.chance(50)
            // The front-end's MSI window is a machine property; here it is given to the endpoints the model
            // has an MSI region for, as a daemon configured like the machine would.
            let hasMSI = device.endpoints[endpoint]?.reservedRegions.contains(Self.msi) ?? false
            let fromMirror = mirror.translate(endpoint: endpoint, address: address, write: write, bypassAllowed: bypass,
                                              msiWindows: hasMSI ? [0xfee0_0000...0xfeef_ffff] : [])
            let fromModel = try? device.translate(endpoint: endpoint, iova: address, length: 1, access: write ? .write : .read)
            _ = device.popFault()
            switch fromMirror {
            case .identity: 
                if fromModel == nil {
                    #expect(Self.msi.range.contains(address) && device.endpoints[endpoint]?.domain == nil && !bypass,
                            "endpoint \(endpoint) address \(address) domain \(String(describing: device.endpoints[endpoint]?.domain)) bypass \(bypass)")
                } else {
                    #expect(fromModel?.first?.address == address)
                }
            case .translated(let physical): #expect(fromModel?.first?.address == physical)
            case .refused: #expect(fromModel == nil, "endpoint \(endpoint) address \(address)")
            }
        }
    }

    // The property: after random request sequences (ATTACH/DETACH incl. bypass domains and moves,
    // MAP/UNMAP incl. failures and multi-mapping UNMAPs, PASID requests, PROBE, config writes, resets),
    // the changes → LogWriter → MirrorReader give the model's state and translations (§5.4, §9.1), with a
    // small log so that slots wrap and space runs out (§6 rule 8), and snapshots round-trip (§8.2).
    @Test(arguments: [1, 2, 3, 4, 5, 6] as [UInt64])
    func mirrorFollowsTheModel(seed: UInt64) throws {
        var rng = SplitMix64(seed: seed)
        var device = try Self.makeDevice(bypass: seed % 2 == 0)
        let endpoints = Array(device.endpoints.keys)
        var s = try Session(logEntries: 64, endpoints: endpoints, inputRange: 0...Self.inputLast, queueSize: 64)
        var epoch: UInt32 = 1
        var position: UInt16 = 0
        for step in 0..<3000 {
            let domain = UInt32(rng.below(8))
            let endpoint = UInt32(rng.below(11) * 8)  // 80 is unknown
            let page = UInt64(rng.below(64))
            let pages = UInt64(rng.below(4) + 1)
            var writable = 4
            let request: [UInt8]
            switch rng.below(1000) {
            case 0..<180: request = AttachRequest(domain: domain, endpoint: endpoint, flags: rng.chance(20) ? 1 : 0).encoded
            case 180..<260: request = DetachRequest(domain: domain, endpoint: endpoint).encoded
            case 260..<640:
                let misalign: UInt64 = rng.chance(5) ? 0x800 : 0
                request = MapRequest(domain: domain, virtualStart: page << 12 + misalign, virtualEnd: (page + pages) << 12 - 1,
                                     physicalStart: UInt64(rng.below(1 << 20)) << 12, flags: UInt32(rng.below(8))).encoded
            case 640..<840:
                let span = rng.chance(30) ? UInt64(rng.below(32) + 1) : pages
                request = UnmapRequest(domain: domain, virtualStart: page << 12, virtualEnd: (page + span) << 12 - 1).encoded
            case 840..<880:
                request = PASIDAttachmentRequest(domain: domain, endpoint: endpoint, pasid: UInt32(rng.below(8)))
                    .encoded(rng.chance(60) ? .attachPASID : .detachPASID)
            case 880..<920:
                writable = 12
                request = rng.chance(60) ? AllocPASIDRequest().encoded : FreePASIDRequest(pasid: UInt32(rng.below(8))).encoded
            case 920..<950:
                writable = 516
                request = ProbeRequest(endpoint: endpoint).encoded
            case 950..<960:
                try device.writeConfig(offset: 36, bytes: [rng.chance(50) ? 1 : 0])
                device.drainChanges { _ in }  // `bypass` is the front-end's own (§5.4)
                continue
            case 960..<962:
                // A guest reset (§7): the front-end drains, clears its mirror and sends RESET; the back-end
                // resets its model and rewinds its log.
                try s.mirror.drain()
                epoch &+= 1
                let reset = s.mirror.reset(epoch: epoch, kind: .device, bypass: device.bypass)
                try s.writer.reset(epoch: reset.epoch, startIndex: reset.startIndex)
                device.reset()
                device.drainChanges { _ in }
                continue
            default:
                try s.mirror.drain(limit: rng.below(16))  // a partial drain by a translating thread
                continue
            }
            position &+= 1
            let commit = try Self.run(request, writable: writable, device: &device, session: &s, position: position)
            if rng.chance(4) {
                try s.mirror.drain()
                if let commit { #expect(commit.isAcknowledged(by: s.mirror.acked)) }
                Self.expectSameState(device, s.mirror, step: step)
                Self.expectSameTranslations(&device, s.mirror, rng: &rng)
            }
            if step % 500 == 499 {
                try s.mirror.drain()
                var copy = s.mirror
                let snapshot = copy.snapshot(bypass: device.bypass)
                let request = StatePushRequest(for: snapshot)
                let decoded = try snapshot.encoded.withUnsafeBytes { raw in try StateSnapshot(decoding: raw, request: request) }
                #expect(decoded == snapshot)
                try decoded.validate(against: .init(
                    knownEndpoints: EndpointBitmap(endpoints: endpoints)!, granule: 0x1000, inputRange: 0...Self.inputLast,
                    domainRange: 0...40, maxDomains: 7, maxMappings: 30, maxMappingsPerDomain: 12, queueSize: 64,
                    capabilities: .version1))
                #expect(decoded.domains.count == device.domains.values.filter { !$0.endpoints.isEmpty }.count)
            }
        }
        try s.mirror.drain()
        Self.expectSameState(device, s.mirror, step: -1)
        #expect(s.mirror.violation == nil && s.mirror.appliedEntries > 1000)
    }
}
