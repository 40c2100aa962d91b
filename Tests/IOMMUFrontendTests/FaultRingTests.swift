import Testing
@testable import IOMMUFrontend

/// The fault ring (docs/frontend-protocol.md §10): its header fields and area (§10.1), the 32-byte record
/// (§10.2), and both ends' rules (§10.3): bounded, checked record by record, stale epochs refused.
@Suite struct FaultRingTests {
    static let layout = RegionLayout.standard(epoch: 7, logEntries: 64, faultEntries: 16)

    static func record(_ endpoint: UInt32 = 8, address: UInt64 = 0x1000, epoch: UInt32 = 7) -> FaultRecord {
        FaultRecord(endpoint: endpoint, reason: .mapping, access: .write, address: address, epoch: epoch)
    }

    // §10.1: the ring follows the log in the standard layout and passes the header checks only under
    // FAULT_RING; without it the fault fields must stay 0.
    @Test func layoutWithAFaultRing() throws {
        let layout = Self.layout
        #expect(layout.faultOffset == layout.logOffset + 64 * 64 && layout.faultEntries == 16)
        #expect(layout.regionSize == layout.faultOffset + 16 * 32)
        let decoded = try decode(layout.encodedHeader) { raw throws(FrontendWireError) in
            try RegionLayout(decodingHeader: raw, regionSize: layout.regionSize, epoch: 7, faultRing: true)
        }
        #expect(decoded == layout)
        #expect(layout.faultRecordOffset(16 + 5) == Int(layout.faultOffset) + 5 * 32, "slots wrap modulo fault_entries")
        let header = layout.encodedHeader
        func error(_ bytes: [UInt8], faultRing: Bool = true) -> FrontendWireError? {
            wireError(bytes) { raw throws(FrontendWireError) in
                try RegionLayout(decodingHeader: raw, regionSize: layout.regionSize, epoch: 7, faultRing: faultRing)
            }
        }
        #expect(error(header, faultRing: false) == .value("fault_off", layout.faultOffset))
        #expect(error(header.setting(UInt32(8), at: 48)) == .value("fault_entries", 8))
        #expect(error(header.setting(UInt32(8192), at: 48)) == .value("fault_entries", 8192))
        #expect(error(header.setting(UInt32(24), at: 48)) == .value("fault_entries", 24))
        #expect(error(header.setting(UInt32(32), at: 48)) != nil, "runs past the region")
        #expect(error(header.setting(layout.faultOffset + 8, at: 40)) != nil, "misaligned")
        #expect(error(header.setting(layout.logOffset, at: 40)) != nil, "overlaps the log")
    }

    // §10.2: the record's fields and checks.
    @Test func recordChecks() throws {
        let good = Self.record().encoded(index: 0x1_0000_0003)
        #expect(good.count == FaultRecord.size)
        let decoded = try decode(good) { raw throws(FrontendWireError) in try FaultRecord(decoding: raw, index: 0x1_0000_0003) }
        #expect(decoded == Self.record())
        let bad: [(String, [UInt8], UInt64)] = [
            ("index_lo", good, 4),
            ("reason 0", good.setting(UInt8(0), at: 8), 0x1_0000_0003),
            ("reason 3", good.setting(UInt8(3), at: 8), 0x1_0000_0003),
            ("no access", good.setting(UInt8(0), at: 9), 0x1_0000_0003),
            ("exec", good.setting(UInt8(4), at: 9), 0x1_0000_0003),
            ("reserved0", good.setting(UInt16(1), at: 10), 0x1_0000_0003),
            ("reserved1", good.setting(UInt8(1), at: 31), 0x1_0000_0003),
        ]
        for (name, bytes, index) in bad {
            #expect(wireError(bytes) { raw throws(FrontendWireError) in try FaultRecord(decoding: raw, index: index) } != nil, "\(name)")
        }
    }

    // §10.3: records pass from writer to reader in order; the reader starts at the writer's tail.
    @Test func recordsPassInOrder() throws {
        let memory = InMemoryRegion(byteCount: Int(Self.layout.regionSize))
        var writer = FaultRingWriter(memory: memory, layout: Self.layout, startTail: 40)
        var reader = try FaultRingReader(memory: memory, layout: Self.layout)
        #expect(reader.head == 40 && memory.loadAcquire(at: FaultRing.headOffset) == 40)
        for i in 0..<10 {
            let written = writer.append(Self.record(address: UInt64(i) << 12))
            #expect(written)
        }
        var seen: [UInt64] = []
        #expect(try reader.drain { seen.append($0.address) } == 10)
        #expect(seen == (0..<10).map { UInt64($0) << 12 })
        #expect(reader.head == 50 && memory.loadAcquire(at: FaultRing.headOffset) == 50)
        #expect(try reader.drain { _ in Issue.record("nothing new") } == 0)
    }

    // §10.3: the cap. A full ring drops the new record and counts it in fault_dropped; what the reader
    // takes per call is at most the ring's size.
    @Test func aFullRingDropsAndCounts() throws {
        let memory = InMemoryRegion(byteCount: Int(Self.layout.regionSize))
        var writer = FaultRingWriter(memory: memory, layout: Self.layout)
        var reader = try FaultRingReader(memory: memory, layout: Self.layout)
        var written = 0
        for i in 0..<100 where writer.append(Self.record(address: UInt64(i) << 12)) { written += 1 }
        #expect(written == 16 && writer.dropped == 84 && reader.droppedByFrontend == 84)
        var taken: [UInt64] = []
        #expect(try reader.drain { taken.append($0.address) } == 16)
        #expect(taken == (0..<16).map { UInt64($0) << 12 }, "the oldest 16 are kept, the rest dropped")
        let room = writer.append(Self.record())
        #expect(room, "room again once the reader moved fault_head")
    }

    // §10.3: a record that fails its checks or carries an old epoch is refused and counted; the rest pass.
    @Test func badAndStaleRecordsAreRefused() throws {
        let memory = InMemoryRegion(byteCount: Int(Self.layout.regionSize))
        var writer = FaultRingWriter(memory: memory, layout: Self.layout)
        var reader = try FaultRingReader(memory: memory, layout: Self.layout)
        writer.append(Self.record(epoch: 6))
        writer.append(Self.record(address: 0x2000))
        writer.append(Self.record(address: 0x3000))
        memory.storeByte(9, at: Self.layout.faultRecordOffset(2) + 8)  // reason 9
        var taken: [UInt64] = []
        #expect(try reader.drain { taken.append($0.address) } == 1)
        #expect(taken == [0x2000] && reader.refusedRecords == 2 && reader.takenRecords == 1)
        // After a RESET the reader expects the new epoch.
        reader.epoch = 8
        writer.append(Self.record(address: 0x4000, epoch: 7))
        writer.append(Self.record(address: 0x5000, epoch: 8))
        taken = []
        try reader.drain { taken.append($0.address) }
        #expect(taken == [0x5000] && reader.refusedRecords == 3)
    }

    // §10.3: a fault_tail no producer could have written (behind head, or more than a ring ahead) is a
    // violation; nothing is taken.
    @Test func impossibleTailIsAViolation() throws {
        let memory = InMemoryRegion(byteCount: Int(Self.layout.regionSize))
        _ = FaultRingWriter(memory: memory, layout: Self.layout, startTail: 100)
        var reader = try FaultRingReader(memory: memory, layout: Self.layout)
        for tail: UInt64 in [99, 117, .max] {
            memory.storeRelease(tail, at: FaultRing.tailOffset)
            do {
                try reader.drain { _ in Issue.record("taken") }
                Issue.record("fault_tail \(tail) was accepted")
            } catch {
                #expect(error == .tail(tail: tail, head: 100))
            }
        }
        memory.storeRelease(RegionLayout.indexLimit, at: FaultRing.tailOffset)
        #expect(throws: FrontendWireError.value("fault_tail", RegionLayout.indexLimit)) {
            _ = try FaultRingReader(memory: memory, layout: Self.layout)
        }
    }
}
