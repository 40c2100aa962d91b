import SeededRandom
import Testing
@_spi(Fuzzing) @testable import VirtioIOMMU


private func mapping(_ start: UInt64, _ end: UInt64, phys: UInt64 = 0x1000) -> Mapping {
    Mapping(virtualStart: start, virtualEnd: end, physicalStart: phys, flags: [.read, .write])
}

@Suite struct MappingTableTests {
    @Test func emptyTableAnswersNothing() {
        let table = MappingTable()
        #expect(table.floor(0) == nil)
        #expect(table.ceiling(.max) == nil)
        #expect(!table.overlaps(.all))
        #expect(table.mapping(containing: 5) == nil)
    }

    @Test func floorCeilingAndContainment() {
        var table = MappingTable()
        table.insert(mapping(10, 19))
        table.insert(mapping(30, 39))
        #expect(table.floor(9) == nil)
        #expect(table.floor(25)?.virtualStart == 10)
        #expect(table.ceiling(11)?.virtualStart == 30)
        #expect(table.mapping(containing: 19)?.virtualStart == 10)
        #expect(table.mapping(containing: 20) == nil)
        #expect(table.overlaps(IOVARange(first: 19, last: 29)!))
        #expect(!table.overlaps(IOVARange(first: 20, last: 29)!))
        // Ranges that touch 0 and 2^64−1.
        table.insert(mapping(0, 0))
        table.insert(mapping(.max - 4095, .max))
        #expect(table.mapping(containing: .max)?.virtualEnd == .max)
        #expect(table.mapping(containing: 0)?.virtualStart == 0)
        #expect(table.ceiling(.max) == nil)
        #expect(table.invariantViolation() == nil)
    }

    @Test func splitDetection() {
        var table = MappingTable()
        table.insert(mapping(0, 9))
        #expect(table.wouldSplit(IOVARange(first: 0, last: 4)!))
        #expect(table.wouldSplit(IOVARange(first: 5, last: 20)!))
        #expect(!table.wouldSplit(IOVARange(first: 0, last: 9)!))
        #expect(!table.wouldSplit(IOVARange(first: 0, last: 100)!))
        #expect(!table.wouldSplit(IOVARange(first: 10, last: 100)!))
    }

    /// Random inserts and removals against a sorted-array model, with the invariants checked as we go.
    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func randomOperationsMatchSortedArray(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        var table = MappingTable()
        var model: [Mapping] = []
        let space: UInt64 = seed.isMultiple(of: 2) ? 4096 : 1 << 20
        for step in 0..<20_000 {
            let start = rng.next() % space
            let length = 1 + rng.next() % 8
            let end = start + length - 1
            let candidate = mapping(start, end, phys: rng.next() >> 8)
            if rng.next() % 3 != 0 {
                let overlapping = model.contains { $0.virtualStart <= end && start <= $0.virtualEnd }
                #expect(table.overlaps(candidate.range) == overlapping, "seed \(seed) step \(step)")
                if !overlapping {
                    table.insert(candidate)
                    model.append(candidate)
                    model.sort { $0.virtualStart < $1.virtualStart }
                }
            } else if !model.isEmpty {
                let victim = model.remove(at: Int(rng.next() % UInt64(model.count)))
                if step.isMultiple(of: 2) {
                    // remove(exactly:) with the wrong end changes nothing; with the right one it removes.
                    let wrong = IOVARange(first: victim.virtualStart, last: victim.virtualEnd + 1)!
                    #expect(table.remove(exactly: wrong) == nil, "seed \(seed) step \(step)")
                    #expect(table.remove(exactly: victim.range) == victim, "seed \(seed) step \(step)")
                } else {
                    #expect(table.remove(startingAt: victim.virtualStart) == victim, "seed \(seed) step \(step)")
                }
            }
            if step % 97 == 0 {
                let probe = rng.next() % space
                #expect(table.floor(probe) == model.last { $0.virtualStart <= probe }, "seed \(seed) step \(step)")
                #expect(table.ceiling(probe) == model.first { $0.virtualStart >= probe }, "seed \(seed) step \(step)")
            }
            if step % 997 == 0 {
                #expect(table.invariantViolation() == nil, "seed \(seed) step \(step)")
            }
        }
        #expect(table.mappings == model)
        #expect(table.count == model.count)
        // Drain to empty.
        for m in model.shuffled(using: &rng) { #expect(table.remove(startingAt: m.virtualStart) == m) }
        #expect(table.isEmpty && table.invariantViolation() == nil)
    }

    /// Descending allocation (Linux's IOVA allocator) and ascending both keep nodes mostly full.
    @Test(arguments: [true, false])
    func sequentialInsertsStayCompact(descending: Bool) {
        var table = MappingTable()
        let n: UInt64 = 100_000
        for i in 0..<n {
            let page = descending ? n - 1 - i : i
            table.insert(mapping(page << 12, (page << 12) + 0xfff))
        }
        #expect(table.invariantViolation() == nil)
        let perMapping = Double(table.storageBytes) / Double(n)
        #expect(perMapping <= 48, "bytes per mapping: \(perMapping)")
        table.removeAll(startingIn: .all)
        #expect(table.isEmpty)
    }

    @Test func removeAllInRangeLeavesTheRest() {
        var table = MappingTable()
        for i in 0..<1000 as Range<UInt64> { table.insert(mapping(i * 16, i * 16 + 7)) }
        let removed = table.removeAll(startingIn: IOVARange(first: 160, last: 799)!)
        #expect(removed == 40)
        #expect(table.count == 960)
        #expect(table.mapping(containing: 160) == nil)
        #expect(table.mapping(containing: 800) != nil)
        #expect(table.invariantViolation() == nil)
    }
}
