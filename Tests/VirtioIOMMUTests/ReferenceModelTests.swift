import SeededRandom
import Testing
@_spi(Fuzzing) @testable import VirtioIOMMU

/// A deliberately naive virtio-iommu: linear lists, no trees, rules written straight from the spec
/// in the order docs/device-behaviour.md gives. The real model must agree with it on every status
/// and every translation.
struct NaiveIOMMU {
    struct Entry: Equatable { var start: UInt64; var end: UInt64; var phys: UInt64; var flags: UInt32 }
    struct NaiveDomain { var bypass: Bool; var members: [UInt32]; var entries: [Entry] }

    let regions: [UInt32: [ReservedRegion]]
    let granule: UInt64
    let inputLast: UInt64
    let bypassUnattached: Bool
    var attachedTo: [UInt32: UInt32] = [:]
    var domains: [UInt32: NaiveDomain] = [:]

    func reserved(_ domain: NaiveDomain) -> [IOVARange] {
        domain.members.flatMap { regions[$0]!.map(\.range) }
    }

    mutating func attach(endpoint: UInt32, domain: UInt32, flags: UInt32) -> Status {
        if flags & ~1 != 0 { return .invalid }
        guard regions[endpoint] != nil else { return .noEntry }
        let bypass = flags == 1
        if let d = domains[domain] {
            if d.bypass != bypass { return .invalid }
            if attachedTo[endpoint] == domain { return .ok }
            for r in regions[endpoint]! {
                if d.entries.contains(where: { $0.start <= r.range.last && r.range.first <= $0.end }) { return .unsupported }
            }
        }
        if let old = attachedTo[endpoint] { _ = detach(endpoint: endpoint, domain: old) }
        domains[domain, default: NaiveDomain(bypass: bypass, members: [], entries: [])].members.append(endpoint)
        attachedTo[endpoint] = domain
        return .ok
    }

    mutating func detach(endpoint: UInt32, domain: UInt32) -> Status {
        guard regions[endpoint] != nil else { return .noEntry }
        guard attachedTo[endpoint] == domain else { return .invalid }
        attachedTo[endpoint] = nil
        domains[domain]!.members.removeAll { $0 == endpoint }
        if domains[domain]!.members.isEmpty { domains[domain] = nil }
        return .ok
    }

    mutating func map(domain: UInt32, start: UInt64, end: UInt64, phys: UInt64, flags: UInt32) -> Status {
        if flags & ~7 != 0 { return .invalid }
        guard let d = domains[domain] else { return .noEntry }
        if d.bypass { return .invalid }
        if start % granule != 0 || phys % granule != 0 || (end &+ 1) % granule != 0 { return .range }
        if end < start { return .invalid }
        if end > inputLast { return .range }
        if UInt64.max - phys < end - start { return .range }
        if reserved(d).contains(where: { $0.first <= end && start <= $0.last }) { return .invalid }
        if d.entries.contains(where: { $0.start <= end && start <= $0.end }) { return .invalid }
        domains[domain]!.entries.append(Entry(start: start, end: end, phys: phys, flags: flags))
        return .ok
    }

    mutating func unmap(domain: UInt32, start: UInt64, end: UInt64) -> Status {
        guard let d = domains[domain] else { return .noEntry }
        if d.bypass { return .invalid }
        if end < start { return .invalid }
        let touched = d.entries.filter { $0.start <= end && start <= $0.end }
        if touched.contains(where: { $0.start < start || $0.end > end }) { return .range }
        domains[domain]!.entries.removeAll { $0.start >= start && $0.end <= end }
        return .ok
    }

    /// Translation byte run by byte run; nil segments mean a fault at `faultAddress`.
    func translate(endpoint: UInt32, iova: UInt64, length: UInt64, write: Bool) -> (segments: [Segment]?, faultAddress: UInt64?, reason: Fault.Reason?) {
        guard let domainID = attachedTo[endpoint] else {
            return bypassUnattached ? ([Segment(address: iova, length: length)], nil, nil) : (nil, iova, .domain)
        }
        let d = domains[domainID]!
        if d.bypass { return ([Segment(address: iova, length: length)], nil, nil) }
        var segments: [Segment] = []
        var address = iova
        let last = iova + (length - 1)
        while true {
            guard let e = d.entries.first(where: { $0.start <= address && address <= $0.end }),
                  e.flags & (write ? 2 : 1) != 0 else { return (nil, address, .mapping) }
            let runEnd = min(e.end, last)
            let phys = e.phys + (address - e.start)
            if let p = segments.last, p.address &+ p.length == phys {
                segments[segments.count - 1].length += runEnd - address + 1
            } else {
                segments.append(Segment(address: phys, length: runEnd - address + 1))
            }
            if runEnd == last { return (segments, nil, nil) }
            address = runEnd + 1
        }
    }
}

@Suite struct ReferenceModelTests {
    /// Long random sequences of ATTACH/DETACH/MAP/UNMAP/translate; statuses and translations must agree.
    @Test(arguments: [(11, 1), (12, 0x1000), (13, 1), (14, 0x1000), (15, 0x1000)] as [(UInt64, UInt64)])
    func randomSequencesAgree(seed: UInt64, granule: UInt64) {
        var rng = SplitMix64(seed: seed)
        // Endpoints 2 and 3 share a region (counted twice in their domain), 4's touches it (merged), 1 has none.
        let shared = ReservedRegion(.reserved, IOVARange(first: 0x40_000, last: 0x4f_fff)!)
        let endpointRegions: [UInt32: [ReservedRegion]] = [
            1: [], 2: [shared], 3: [shared, ReservedRegion(.reserved, IOVARange(first: 0x7e_000, last: 0x7e_fff)!)],
            4: [ReservedRegion(.reserved, IOVARange(first: 0x50_000, last: 0x51_fff)!)],
        ]
        let inputLast: UInt64 = (1 << 40) - 1
        var config = Configuration(endpoints: endpointRegions, pageSizeMask: ~(granule - 1),
                                   inputRange: IOVARange(first: 0, last: inputLast)!, bypass: false,
                                   features: [.mapUnmap, .inputRange, .probe, .bypassConfig])
        config.limits = Limits()
        var device = try! IOMMUModel(configuration: config)
        device.negotiate(config.features)
        var naive = NaiveIOMMU(regions: endpointRegions, granule: granule, inputLast: inputLast, bypassUnattached: false)

        func pick<T>(_ options: [T]) -> T { options[Int(rng.next() % UInt64(options.count))] }
        func address() -> UInt64 {
            // Mostly a small, crowded space; sometimes the edges of the input range and beyond.
            switch rng.next() % 16 {
            case 0: return inputLast - granule + 1
            case 1: return inputLast &+ 1
            default: return (rng.next() % 0x80) * 0x1000 + (granule == 1 ? rng.next() % 3 : 0)
            }
        }
        for step in 0..<6_000 {
            let context = "seed \(seed) step \(step)"
            let endpoint = pick([1, 2, 3, 4, 5] as [UInt32])  // 5 does not exist
            let domain = pick([1, 2, 3, 4] as [UInt32])
            switch rng.next() % 10 {
            case 0:
                let flags: UInt32 = pick([0, 0, 0, 1, 4])
                let status = device.send(AttachRequest(domain: domain, endpoint: endpoint, flags: flags).encoded)
                #expect(status == naive.attach(endpoint: endpoint, domain: domain, flags: flags), "\(context) attach")
            case 1:
                let status = device.send(DetachRequest(domain: domain, endpoint: endpoint).encoded)
                #expect(status == naive.detach(endpoint: endpoint, domain: domain), "\(context) detach")
            case 2, 3, 4:
                let start = address()
                let size = pick([1, 1, 2, 4, 16] as [UInt64]) * 0x1000 - (granule == 1 ? rng.next() % 2 : 0)
                let end = rng.next() % 50 == 0 ? start &- 1 : start &+ (size - 1)
                let phys = rng.next() % 20 == 0 ? UInt64.max - 0xfff : (rng.next() % 0x1000) * 0x1000
                let flags: UInt32 = pick([1, 2, 3, 3, 3, 8])
                let request = MapRequest(domain: domain, virtualStart: start, virtualEnd: end, physicalStart: phys, flags: flags)
                #expect(device.send(request.encoded) == naive.map(domain: domain, start: start, end: end, phys: phys, flags: flags), "\(context) map")
            case 5, 6:
                let start = address()
                let end = start &+ pick([1, 2, 8, 64] as [UInt64]) * 0x1000 &- 1
                #expect(device.send(UnmapRequest(domain: domain, virtualStart: start, virtualEnd: end).encoded)
                        == naive.unmap(domain: domain, start: start, end: end), "\(context) unmap")
            default:
                guard endpoint != 5 else { continue }
                let iova = address()
                let length = 1 + rng.next() % 0x6000
                guard iova.addingReportingOverflow(length - 1).overflow == false else { continue }
                let write = rng.next() % 2 == 0
                let expected = naive.translate(endpoint: endpoint, iova: iova, length: length, write: write)
                do {
                    let segments = try device.translate(endpoint: endpoint, iova: iova, length: length, access: write ? .write : .read)
                    #expect(Array(segments) == expected.segments, "\(context) translate")
                } catch .fault(let fault) {
                    #expect(expected.segments == nil && fault.address == expected.faultAddress && fault.reason == expected.reason, "\(context) fault")
                    #expect(device.popFault() == fault)
                } catch {
                    Issue.record("\(context): unexpected \(error)")
                }
            }
            if step % 100 == 0 {
                #expect(device.invariantViolation() == nil, "\(context)")
            }
            if step % 500 == 0 {
                for (id, d) in naive.domains {
                    let ours = device.mappings(of: id).map { NaiveIOMMU.Entry(start: $0.virtualStart, end: $0.virtualEnd, phys: $0.physicalStart, flags: $0.flags.rawValue) }
                    #expect(ours == d.entries.sorted { $0.start < $1.start }, "\(context) domain \(id) contents")
                }
                #expect(Set(device.domains.keys) == Set(naive.domains.keys), "\(context) domains")
            }
        }
        #expect(device.mappingCount == naive.domains.values.reduce(0) { $0 + $1.entries.count })
        // The sequence must reach the interesting outcomes, or agreement proves little.
        let c = device.counters
        let reached: [(RequestType, Status)] = [(.map, .ok), (.map, .invalid), (.map, .range), (.map, .noEntry),
                                                (.unmap, .ok), (.unmap, .range), (.attach, .ok), (.attach, .invalid),
                                                (.detach, .ok), (.detach, .invalid)]
        for (type, status) in reached { #expect(c.count(type, status) > 0, "seed \(seed): no \(type) \(status)") }
        #expect(c.faultsRaised > 0 && c.count(.map, .ok) > 200, "seed \(seed): \(c.count(.map, .ok)) maps")
    }
}
