/// Consistency checks over the whole device state, for fuzzers and randomized tests.
@_spi(Fuzzing)
extension IOMMUModel {
    /// A description of the first broken invariant, or nil.
    public func invariantViolation() -> String? {
        var total = 0
        for (id, domain) in domains {
            guard domain.id == id else { return "domain \(id) stored under another id" }
            guard domain.isHeld else { return "domain \(id) has no attachment" }
            if let problem = domain.mappings.invariantViolation() { return "domain \(id): \(problem)" }
            total += domain.mappings.count
            if domain.isBypass && !domain.mappings.isEmpty { return "bypass domain \(id) has mappings" }
            for member in domain.endpoints where endpoints[member]?.domain != id {
                return "domain \(id) lists endpoint \(member), which is elsewhere"
            }
            for member in domain.auxEndpoints {
                guard let pasid = domain.auxPASID, endpoints[member]?.auxDomains[pasid] == id else {
                    return "domain \(id) lists aux endpoint \(member) without the matching attachment"
                }
            }
            if domain.auxEndpoints.isEmpty != (domain.auxPASID == nil) { return "domain \(id) aux PASID out of step" }
            for mapping in domain.mappings.mappings where domain.overlapsReservedRange(mapping.range) {
                return "domain \(id) maps over a reserved region"
            }
            if let problem = reservedRangeViolation(of: domain) { return "domain \(id): \(problem)" }
        }
        guard total == mappingCount else { return "mapping count \(mappingCount), tables hold \(total)" }
        guard domains.count <= configuration.limits.maxDomains else { return "too many domains" }
        for (id, endpoint) in endpoints {
            if let domain = endpoint.domain, domains[domain]?.endpoints.contains(id) != true {
                return "endpoint \(id) points at domain \(domain), which does not list it"
            }
            if !endpoint.auxDomains.isEmpty && endpoint.domain == nil { return "endpoint \(id) has aux domains but no primary" }
            for (pasid, domain) in endpoint.auxDomains {
                guard heldPASIDs.contains(pasid), domains[domain]?.auxPASID == pasid else {
                    return "endpoint \(id) aux (\(pasid) → \(domain)) inconsistent"
                }
            }
        }
        guard faults.count <= configuration.limits.maxPendingFaults else { return "fault queue over its bound" }
        // Every live IOTLB entry is a mapping the endpoint reaches now, exactly as cached.
        for entry in translationCache.validEntries {
            guard let endpoint = endpoints[entry.endpoint] else { return "IOTLB entry for unknown endpoint \(entry.endpoint)" }
            let domainID = entry.pasidKey == 0 ? endpoint.domain : endpoint.auxDomains[UInt32(truncatingIfNeeded: entry.pasidKey - 1)]
            guard let domainID, let domain = domains[domainID],
                  domain.mappings.mapping(containing: entry.mapping.virtualStart) == entry.mapping else {
                return "stale IOTLB entry: endpoint \(entry.endpoint) \(entry.mapping)"
            }
        }
        return nil
    }

    /// The incrementally kept reserved ranges against a fresh count over the primary endpoints: the same
    /// ranges with the same counts, and a union that is ascending, disjoint, not adjacent, and covers
    /// exactly the distinct ranges.
    func reservedRangeViolation(of domain: Domain) -> String? {
        var expected: [IOVARange: Int] = [:]
        for member in domain.endpoints {
            for region in endpoints[member]?.reservedRegions ?? [] { expected[region.range, default: 0] += 1 }
        }
        guard domain.reservedRanges.countsByRange == expected else { return "reserved range counts out of step" }
        let merged = domain.reservedRanges.merged
        for (a, b) in zip(merged, merged.dropFirst()) where a.last == .max || a.last + 1 >= b.first {
            return "merged reserved ranges \(a) and \(b) overlap, touch or are out of order"
        }
        for range in expected.keys where !merged.contains(where: { $0.contains(range) }) {
            return "reserved range \(range) missing from the union"
        }
        // Each merged interval must be exactly covered by the distinct ranges inside it.
        for interval in merged {
            var covered = interval.first
            var done = false
            for range in expected.keys.filter({ interval.contains($0) }).sorted(by: { $0.first < $1.first }) {
                guard range.first <= covered else { return "gap in merged \(interval)" }
                if range.last >= interval.last { done = true; break }
                covered = max(covered, range.last + 1)
            }
            guard done else { return "merged \(interval) reaches beyond its ranges" }
        }
        return nil
    }
}
