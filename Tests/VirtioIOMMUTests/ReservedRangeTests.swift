import SeededRandom
import Testing
@_spi(Fuzzing) @testable import VirtioIOMMU

/// Issue 13, "reserved regions": a domain keeps its endpoints' reserved regions counted and merged as
/// they attach and detach, and MAP checks the union (D45).
@Suite struct ReservedRangeTests {
    /// Pages in the 4 KiB-granule space the random regions live in, plus both ends of the 64-bit space.
    static let pages: [UInt64] = Array(0..<48) + [(UInt64.max >> 12) - 1, UInt64.max >> 12]

    static func page(_ number: UInt64) -> IOVARange { IOVARange(first: number << 12, last: number << 12 | 0xfff)! }

    /// 24 endpoints, each with up to 3 disjoint regions (D44) drawn from a small pool, so that many share
    /// ranges, some overlap or touch across endpoints, and some reach 0 or 2^64−1.
    static func randomRegions(_ rng: inout SplitMix64) -> [UInt32: [ReservedRegion]] {
        let pool: [IOVARange] = [
            IOVARange(first: 0, last: 0x2fff)!, IOVARange(first: 0x3000, last: 0x3fff)!, IOVARange(first: 0x2000, last: 0x5fff)!,
            IOVARange(first: 0x8000, last: 0xbfff)!, IOVARange(first: 0xa000, last: 0xafff)!, IOVARange(first: 0x10000, last: 0x10fff)!,
            IOVARange(first: 0x12000, last: 0x1ffff)!, IOVARange(first: 0x20000, last: 0x21fff)!,
            IOVARange(first: (UInt64.max >> 12) << 12, last: .max)!, IOVARange(first: ((UInt64.max >> 12) - 1) << 12, last: .max)!,
        ]
        var regions: [UInt32: [ReservedRegion]] = [:]
        for id in 0..<24 as Range<UInt32> {
            var chosen: [IOVARange] = []
            for _ in 0..<(rng.next() % 4) {
                let candidate = pool[Int(rng.next() % UInt64(pool.count))]
                if !chosen.contains(where: { $0.overlaps(candidate) }) { chosen.append(candidate) }
            }
            regions[id] = chosen.map { ReservedRegion(rng.next() % 4 == 0 ? .msi : .reserved, $0) }
            if regions[id]!.filter({ $0.kind == .msi }).count > 1 { regions[id] = chosen.map { ReservedRegion(.reserved, $0) } }  // D43
        }
        return regions
    }

    // D45 and issue 13: after random ATTACH/DETACH/reset sequences, each domain's merged ranges are
    // exactly the naive union of its primary endpoints' regions (point by point, in canonical form:
    // ascending, disjoint, not adjacent), and MAP is refused exactly where that union is.
    @Test(arguments: [1, 2, 3, 4] as [UInt64])
    func mergedRangesEqualTheNaiveUnion(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        let regions = Self.randomRegions(&rng)
        var device = try! IOMMUModel(configuration: Configuration(endpoints: regions, bypass: false))
        device.negotiate(Features(rawValue: 1 << 2))  // MAP_UNMAP (§5.13.3)
        for step in 0..<1_500 {
            let endpoint = UInt32(rng.next() % 24), domain = UInt32(rng.next() % 3 + 1)
            switch rng.next() % 20 {
            case 0: device.reset()
            case 1...9: _ = device.attach(endpoint, to: domain)
            default: _ = device.detach(endpoint, from: device.endpoints[endpoint]!.domain ?? domain)
            }
            for (id, d) in device.domains {
                let members = d.endpoints.flatMap { regions[$0]!.map(\.range) }
                let merged = d.reservedRanges.merged
                for (a, b) in zip(merged, merged.dropFirst()) {
                    #expect(a.last < .max && a.last + 1 < b.first, "seed \(seed) step \(step): \(a), \(b) not canonical")
                }
                for page in Self.pages {
                    for address in [page << 12, page << 12 | 0xfff] {
                        let naive = members.contains { $0.contains(address) }
                        #expect(merged.contains { $0.contains(address) } == naive, "seed \(seed) step \(step) domain \(id) 0x\(String(address, radix: 16))")
                        // One byte at a region's first or last byte: the edges of the binary search.
                        #expect(d.overlapsReservedRange(IOVARange(first: address, last: address)!) == naive,
                                "seed \(seed) step \(step) domain \(id) byte 0x\(String(address, radix: 16))")
                    }
                    let naive = members.contains { $0.overlaps(Self.page(page)) }
                    #expect(d.overlapsReservedRange(Self.page(page)) == naive, "seed \(seed) step \(step) domain \(id) page \(page)")
                }
            }
            if step % 50 == 0 {
                #expect(device.invariantViolation() == nil, "seed \(seed) step \(step)")
                // D45 through the request itself, on one page.
                if case let (id, d)? = device.domains.first(where: { !$0.value.isBypass }).map({ ($0.key, $0.value) }) {
                    let page = Self.pages[Int(rng.next() % UInt64(Self.pages.count))]
                    let reserved = d.endpoints.contains { regions[$0]!.contains { $0.range.overlaps(Self.page(page)) } }
                    let mapped = !(d.mappings.mappings.filter { $0.range.overlaps(Self.page(page)) }.isEmpty)
                    let status = device.map(id, page << 12, page << 12 | 0xfff, phys: 0)
                    #expect(status == (reserved || mapped ? .invalid : .ok), "seed \(seed) step \(step) MAP page \(page)")
                }
            }
        }
        #expect(device.counters.count(.attach, .ok) > 100 && device.counters.count(.detach, .ok) > 50)
    }

    // D45 at byte granularity: a MAP touching only the first or the last byte of a reserved region, or of
    // one at either end of the 64-bit space, is refused; one ending or starting just beside it is not.
    @Test func mapBesideAndOnTheEdgesOfReservedRegions() {
        let low = IOVARange(first: 0, last: 0xfff)!, middle = IOVARange(first: 0x1_0000, last: 0x1_ffff)!
        let top = IOVARange(first: .max - 0xfff, last: .max)!
        var device = try! IOMMUModel(configuration: Configuration(
            endpoints: [1: [ReservedRegion(.reserved, low), ReservedRegion(.reserved, middle), ReservedRegion(.reserved, top)]],
            pageSizeMask: 1, bypass: false))
        device.negotiate(Features(rawValue: 1 << 2))  // MAP_UNMAP (§5.13.3)
        #expect(device.attach(1, to: 1) == .ok)
        for (first, last) in [(0, 0), (0xfff, 0xfff), (0xffff, 0x1_0000), (0x1_ffff, 0x1_ffff), (0x1_ffff, 0x2_0000),
                              (.max - 0xfff, .max - 0xfff), (.max, .max), (0x800, .max)] as [(UInt64, UInt64)] {
            #expect(device.map(1, first, last, phys: 0) == .invalid, "0x\(String(first, radix: 16))...0x\(String(last, radix: 16))")
        }
        for (first, last) in [(0x1000, 0x1000), (0x1001, 0xffff), (0x2_0000, 0x2_0000), (0x2_0001, .max - 0x1000)] as [(UInt64, UInt64)] {
            #expect(device.map(1, first, last, phys: 0) == .ok, "0x\(String(first, radix: 16))...0x\(String(last, radix: 16))")
        }
    }

    // D45: a region shared by several endpoints stays reserved until the last of them leaves; the count,
    // not the first DETACH, decides.
    @Test func sharedRegionStaysReservedUntilItsLastEndpointLeaves() {
        var config = testConfiguration()
        config.endpoints[20] = [.x86MSIWindow]
        config.endpoints[21] = [.x86MSIWindow]
        var device = makeDevice(config)
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        for endpoint in [msiEndpoint, 20, 21] { #expect(device.attach(endpoint, to: 1) == .ok) }
        #expect(device.domains[1]?.reservedRanges.merged == [ReservedRegion.x86MSIWindow.range])
        #expect(device.domains[1]?.reservedRanges.countsByRange == [ReservedRegion.x86MSIWindow.range: 3])
        for endpoint in [msiEndpoint, 20] {
            #expect(device.detach(endpoint, from: 1) == .ok)
            #expect(device.map(1, 0xfee0_0000, 0xfee0_0fff) == .invalid, "after detaching \(endpoint)")
        }
        #expect(device.attach(21, to: 2) == .ok)  // a move (D16) counts it out too
        #expect(device.domains[1]?.reservedRanges.isEmpty == true)
        #expect(device.map(1, 0xfee0_0000, 0xfee0_0fff) == .ok)
        #expect(device.map(2, 0xfee0_0000, 0xfee0_0fff) == .invalid)
        #expect(device.invariantViolation() == nil)
    }

    // D45 and D17 with 65,536 endpoints that all carry the MSI window in one domain: one merged range,
    // counted 65,536 times; MAP over it refused, beside it accepted; an endpoint whose region overlaps a
    // mapping is still refused (D17); and all of them detach again.
    @Test func manyEndpointsShareOneMergedRange() {
        let count = 65_536
        var endpoints: [UInt32: [ReservedRegion]] = [:]
        for id in 0..<UInt32(count) { endpoints[id] = [.x86MSIWindow] }
        endpoints[UInt32(count)] = [ReservedRegion(.reserved, IOVARange(first: 0x1000, last: 0x1fff)!)]
        var device = try! IOMMUModel(configuration: Configuration(endpoints: endpoints, bypass: false))
        device.negotiate(Features(rawValue: 1 << 2))
        for id in 0..<UInt32(count) where device.execute(AttachRequest(domain: 1, endpoint: id)) != .ok {
            Issue.record("ATTACH \(id) refused")
        }
        #expect(device.domains[1]?.endpoints.count == count)
        #expect(device.domains[1]?.reservedRanges.merged == [ReservedRegion.x86MSIWindow.range])
        #expect(device.domains[1]?.reservedRanges.countsByRange == [ReservedRegion.x86MSIWindow.range: count])
        #expect(device.map(1, 0xfeef_f000, 0xfef0_0fff) == .invalid)  // D45: its last page
        #expect(device.map(1, 0xfef0_0000, 0xfef0_0fff) == .ok)       // just above it
        #expect(device.map(1, 0x1000, 0x1fff) == .ok)
        #expect(device.attach(UInt32(count), to: 1) == .unsupported)   // D17
        for id in 0..<UInt32(count) where device.execute(DetachRequest(domain: 1, endpoint: id)) != .ok {
            Issue.record("DETACH \(id) refused")
        }
        #expect(device.domains.isEmpty && device.mappingCount == 0)
    }
}
