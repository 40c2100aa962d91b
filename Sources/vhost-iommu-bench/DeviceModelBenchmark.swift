import SeededRandom
import VirtioIOMMU

/// Device-model benchmarks: domains holding n mappings, filled the way Linux's IOVA allocator hands
/// addresses out (descending, recently freed first) or uniformly at random; measured side by side with
/// a sorted-array baseline in the same run.
enum DeviceModelBenchmark {
    static let endpoint: UInt32 = 1
    static let domain: UInt32 = 1

    static func makeDevice(mappings: Int) -> IOMMUModel {
        let limits = Limits(maxMappingsPerDomain: mappings + 16, maxMappingsTotal: mappings + 16)
        var device = try! IOMMUModel(configuration: Configuration(endpoints: [endpoint: []], bypass: false, limits: limits))
        device.negotiate(.standard)
        _ = device.execute(AttachRequest(domain: domain, endpoint: endpoint))
        return device
    }

    /// Page numbers of n live mappings, guest-like: a descending run from the top of a 48-bit space.
    static func guestLikePages(_ n: Int) -> [UInt64] { (0..<UInt64(n)).map { (1 << 36) - 1 - $0 } }

    static func randomPages(_ n: Int, using rng: inout SplitMix64) -> [UInt64] {
        var set = Set<UInt64>()
        set.reserveCapacity(n)
        while set.count < n { set.insert(rng.next() % (1 << 36) / 2 * 2) }  // even pages: odd ones stay free
        return Array(set)
    }

    static func map(_ device: inout IOMMUModel, page: UInt64) -> Status {
        device.execute(MapRequest(domain: domain, virtualStart: page << 12, virtualEnd: (page << 12) + 0xfff,
                                  physicalStart: page << 12, flags: 3))
    }

    static func unmap(_ device: inout IOMMUModel, page: UInt64) -> Status {
        device.execute(UnmapRequest(domain: domain, virtualStart: page << 12, virtualEnd: (page << 12) + 0xfff))
    }

    static func run(sizes: [Int], report: inout Report) {
        var rng = SplitMix64(seed: 42)
        var pairAt: [String: Double] = [:]
        for n in sizes {
            for pattern in ["guest-like", "random"] {
                let pages = pattern == "guest-like" ? guestLikePages(n) : randomPages(n, using: &rng)
                var device = makeDevice(mappings: n)
                let memoryBefore = device.domains[domain]!.mappings.storageBytes
                for page in pages { precondition(map(&device, page: page) == .ok) }
                let bytes = Double(device.domains[domain]!.mappings.storageBytes - memoryBefore) / Double(n)
                var baseline = SortedArrayBaseline(pages: pages)
                let label = "\(pattern) n=\(n)"

                // MAP+UNMAP pair: guest-like reuses the most recently freed IOVA below the lowest live one.
                let free: [UInt64] = pattern == "guest-like"
                    ? (0..<256).map { (1 << 36) - 1 - UInt64(n) - $0 }
                    : (0..<256).map { _ in rng.next() % (1 << 36) / 2 * 2 + 1 }
                var i = 0
                let pair = measure(iterations: 200_000) {
                    let page = free[i & 255]; i &+= 1
                    _ = map(&device, page: page)
                    _ = unmap(&device, page: page)
                }
                i = 0
                let basePair = measure(iterations: n >= 100_000 ? 2_000 : 200_000) {
                    let page = free[i & 255]; i &+= 1
                    baseline.insert(page)
                    baseline.remove(page)
                }
                report.add(label, "MAP+UNMAP pair", pair, baseline: basePair)
                pairAt[label] = pair

                // An UNMAP that fails the split check (a range cutting a 2-page mapping).
                let wide: UInt64 = 1 << 37  // above every live mapping
                precondition(device.execute(MapRequest(domain: domain, virtualStart: wide << 12, virtualEnd: (wide << 12) + 0x1fff, physicalStart: 0, flags: 3)) == .ok)
                report.add(label, "UNMAP failing the split check", measure(iterations: 200_000) {
                    precondition(device.execute(UnmapRequest(domain: domain, virtualStart: wide << 12, virtualEnd: (wide << 12) + 0xfff)) == .range)
                })

                // Translates: the same recently used mapping; random live mappings; a span of adjacent ones.
                let hot = pages[n / 2] << 12
                report.add(label, "translate, recently used", measure(iterations: 1_000_000) {
                    _ = try? device.translate(endpoint: endpoint, iova: hot + 8, length: 8, access: .read)
                })
                var j = 0
                let targets = (0..<4096).map { _ in pages[Int(rng.next() % UInt64(n))] << 12 }
                report.add(label, "translate, random", measure(iterations: 500_000) {
                    _ = try? device.translate(endpoint: endpoint, iova: targets[j & 4095] + 16, length: 8, access: .write); j &+= 1
                }, baseline: measure(iterations: 500_000) {
                    _ = baseline.contains(targets[j & 4095] >> 12); j &+= 1
                })
                if pattern == "guest-like" {
                    let start = pages[min(n - 1, 7)] << 12
                    report.add(label, "translate spanning 4 adjacent mappings", measure(iterations: 200_000) {
                        _ = try? device.translate(endpoint: endpoint, iova: start + 0x800, length: 0x3000, access: .read)
                    })
                }
                report.note(label, "bytes per mapping", bytes)
            }
        }
        if let small = pairAt["guest-like n=\(sizes.first!)"], let large = pairAt["guest-like n=\(sizes.last!)"] {
            report.note("guest-like", "pair cost n=\(sizes.last!) / n=\(sizes.first!)", large / small)
        }
    }
}

/// The simple alternative the B+-tree must beat: a sorted array of page numbers (O(n) insert/remove).
struct SortedArrayBaseline {
    var pages: [UInt64]
    init(pages: [UInt64]) { self.pages = pages.sorted() }
    func index(_ page: UInt64) -> Int {
        var low = 0, high = pages.count
        while low < high { let mid = (low + high) / 2; if pages[mid] < page { low = mid + 1 } else { high = mid } }
        return low
    }
    mutating func insert(_ page: UInt64) { pages.insert(page, at: index(page)) }
    mutating func remove(_ page: UInt64) { let i = index(page); if i < pages.count && pages[i] == page { pages.remove(at: i) } }
    func contains(_ page: UInt64) -> Bool { let i = index(page); return i < pages.count && pages[i] == page }
}

