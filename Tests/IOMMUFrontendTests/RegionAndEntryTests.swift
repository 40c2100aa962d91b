import Testing
@testable import IOMMUFrontend

/// The shared region's header and areas (docs/frontend-protocol.md §4.2, §9.2) and the 64-byte log
/// entry (§5, §9.1).
@Suite struct RegionAndEntryTests {
    static func decodeHeader(_ bytes: [UInt8], size: UInt64 = RegionLayout.standard(epoch: 5).regionSize,
                             epoch: UInt32 = 5) -> FrontendWireError? {
        wireError(bytes) { raw throws(FrontendWireError) in try RegionLayout(decodingHeader: raw, regionSize: size, epoch: epoch) }
    }

    // §4.2: the front-end's default layout is 4,272,128 bytes and passes the back-end's checks.
    @Test func standardLayout() throws {
        let layout = RegionLayout.standard(epoch: 5)
        #expect(layout.regionSize == 4_272_128)
        #expect(layout.endpointBitmapOffset == 4096 && layout.notifierOffset == 12288 && layout.logOffset == 77824)
        let decoded = try decode(layout.encodedHeader) { raw throws(FrontendWireError) in
            try RegionLayout(decodingHeader: raw, regionSize: layout.regionSize, epoch: 5)
        }
        #expect(decoded == layout)
        // Slots wrap modulo log_entries.
        #expect(layout.entryOffset(65536 + 3) == 77824 + 3 * 64)
    }

    // §9.2: every header rule the back-end checks.
    @Test func headerChecks() {
        let good = RegionLayout.standard(epoch: 5).encodedHeader
        #expect(Self.decodeHeader(good) == nil)
        let bad: [(String, [UInt8])] = [
            ("magic", good.setting(UInt32(0), at: 0)),
            ("version", good.setting(UInt16(2), at: 4)),
            ("header size", good.setting(UInt16(2048), at: 6)),
            ("epoch", good.setting(UInt32(6), at: 8)),
            ("log not a power of two", good.setting(UInt32(65535), at: 12)),
            ("log too small", good.setting(UInt32(32), at: 12)),
            ("log too large", good.setting(UInt32(1 << 20), at: 12)),
            ("log past the region", good.setting(UInt32(1 << 17), at: 12)),
            ("misaligned", good.setting(UInt64(4096 + 8), at: 24)),
            ("inside the header", good.setting(UInt64(64), at: 24)),
            ("overlap", good.setting(UInt64(12288 + 64), at: 24)),
            ("past the end", good.setting(UInt64.max - 63, at: 16)),
            ("fault_off", good.setting(UInt64(8192), at: 40)),
            ("fault_entries", good.setting(UInt32(256), at: 48)),
            ("reserved", good.setting(UInt8(1), at: 60)),
        ]
        for (name, bytes) in bad {
            #expect(Self.decodeHeader(bytes) != nil, "\(name)")
        }
        #expect(Self.decodeHeader(good, size: 64 << 21) != nil)  // region above 64 MiB
        #expect(Self.decodeHeader(Array(good.prefix(63))) != nil)
    }

    // §4.2: bit r of the endpoint bitmap is byte r/8, bit r mod 8; IDs ≥ 65536 cannot be named (§4.1).
    @Test func endpointBitmapBitOrder() {
        let bitmap = EndpointBitmap(endpoints: [0, 9, 0x100, 0xffff])!
        let bytes = bitmap.encoded
        #expect(bytes.count == 8192 && bytes[0] == 1 && bytes[1] == 2 && bytes[0x20] == 1 && bytes[8191] == 0x80)
        #expect(bitmap.contains(9) && !bitmap.contains(10) && !bitmap.contains(0x10000) && bitmap.count == 4)
        #expect(EndpointBitmap(endpoints: [0x10000]) == nil)
        let memory = InMemoryRegion(byteCount: 64 * 1024)
        let layout = RegionLayout.standard(epoch: 1, logEntries: 64)
        bitmap.write(to: memory, layout: layout)
        #expect(EndpointBitmap(reading: memory, layout: layout) == bitmap)
    }

    static let operations: [LogOperation] = [
        .domainCreate(domain: 7, bypass: false), .domainCreate(domain: 8, bypass: true), .domainDestroy(domain: 7),
        .attach(endpoint: 0xffff, domain: 7), .detach(endpoint: 3, domain: 7),
        .map(domain: 7, virtualStart: 0x1000, virtualEnd: 0x2fff, physicalStart: 0x8000, flags: 7),
        .map(domain: 7, virtualStart: 0, virtualEnd: .max, physicalStart: 0, flags: 1),
        .unmap(domain: 7, virtualStart: 0, virtualEnd: .max), .commit,
    ]

    // §5.1–§5.3: every op round-trips, with LAST's req_pos and status and with LOCAL.
    @Test(arguments: operations)
    func entryRoundTrip(operation: LogOperation) throws {
        let flags: LogEntryFlags = operation.alwaysSynchronous ? [.sync, .last] : .last
        let entry = LogEntry(indexLow: 0xdead_beef, operation: operation, flags: flags, requestPosition: 0xfffe,
                             status: 8, epoch: 0x0102_0304)
        let bytes = entry.encoded
        #expect(bytes.count == 64)
        #expect(try decode(bytes) { raw throws(FrontendWireError) in try LogEntry(decoding: raw) } == entry)
        if case .commit = operation { return }
        let local = LogEntry(indexLow: 1, operation: operation, flags: .local, epoch: 2)
        #expect(try decode(local.encoded) { raw throws(FrontendWireError) in try LogEntry(decoding: raw) } == local)
    }

    // §5.1–§5.3, §9.1: the structural checks of a copied entry.
    @Test func entryChecks() {
        let map = LogEntry(indexLow: 0, operation: .map(domain: 1, virtualStart: 0x1000, virtualEnd: 0x1fff,
                                                        physicalStart: 0x5000, flags: 3), flags: .last, epoch: 1).encoded
        let attach = LogEntry(indexLow: 0, operation: .attach(endpoint: 5, domain: 1), epoch: 1).encoded
        let commit = LogEntry(indexLow: 0, operation: .commit, flags: .last, epoch: 1).encoded
        let create = LogEntry(indexLow: 0, operation: .domainCreate(domain: 1, bypass: false), epoch: 1).encoded
        let bad: [(String, [UInt8])] = [
            ("op 0", map.setting(UInt16(0), at: 4)), ("op 8", map.setting(UInt16(8), at: 4)),
            ("unknown flag", map.setting(UInt16(0x11), at: 6)),
            ("BYPASS on MAP", map.setting(UInt16(0x5), at: 6)),
            ("SYNC on CREATE", create.setting(UInt16(0x2), at: 6)),
            ("COMMIT without LAST", commit.setting(UInt16(0), at: 6)),
            ("COMMIT with LOCAL", commit.setting(UInt16(0x9), at: 6)),
            ("COMMIT with a domain", commit.setting(UInt32(1), at: 8)),
            ("endpoint on MAP", map.setting(UInt32(1), at: 12)),
            ("endpoint ≥ 65536", attach.setting(UInt32(0x10000), at: 12)),
            ("range on ATTACH", attach.setting(UInt64(1), at: 16)),
            ("phys on UNMAP", LogEntry(indexLow: 0, operation: .unmap(domain: 1, virtualStart: 0, virtualEnd: 1), epoch: 1)
                .encoded.setting(UInt64(1), at: 32)),
            ("reversed range", map.setting(UInt64(0x2000), at: 16)),
            ("phys overflow", map.setting(UInt64.max - 0x100, at: 32)),
            ("map flags", map.setting(UInt32(8), at: 40)),
            ("req_pos without LAST", attach.setting(UInt16(1), at: 44)),
            ("status without LAST", attach.setting(UInt8(1), at: 46)),
            ("status > 8", map.setting(UInt8(9), at: 46)),
            ("reserved @47", map.setting(UInt8(1), at: 47)),
            ("reserved @52", map.setting(UInt8(1), at: 52)),
            ("reserved @63", map.setting(UInt8(1), at: 63)),
            ("short", Array(map.dropLast())),
        ]
        for (name, bytes) in bad {
            #expect(wireError(bytes) { raw throws(FrontendWireError) in try LogEntry(decoding: raw) } != nil, "\(name)")
        }
        let local = LogEntry(indexLow: 0, operation: .detach(endpoint: 1, domain: 1), flags: [.local, .last], epoch: 1).encoded
        #expect(wireError(local.setting(UInt16(3), at: 44)) { raw throws(FrontendWireError) in try LogEntry(decoding: raw) } != nil)
    }
}
