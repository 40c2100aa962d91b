/// The reserved regions of the endpoints attached to a domain, which MAP may not overlap (D45).
///
/// Many endpoints carry the same regions (on x86 every one has the MSI window), so each distinct range
/// is counted, and the sorted union is rebuilt only when a distinct range appears or disappears: an
/// ATTACH or DETACH costs O(log d) for each of the endpoint's regions (d distinct ranges) unless it
/// changes the set, and a MAP checks the union in O(log d).
public struct ReservedRangeSet: Sendable, Hashable {
    /// Distinct ranges, ascending by `first` then `last`, with `counts[i]` endpoints carrying `distinct[i]`.
    private var distinct: [IOVARange] = []
    private var counts: [Int] = []
    /// The union of the distinct ranges: ascending, disjoint, and no two adjacent.
    public private(set) var merged: [IOVARange] = []

    public init() {}

    public var isEmpty: Bool { distinct.isEmpty }

    /// How many attached endpoints carry each distinct range (for the invariant checks).
    var countsByRange: [IOVARange: Int] {
        Dictionary(uniqueKeysWithValues: zip(distinct, counts))
    }

    /// Counts one more endpoint carrying `range`.
    mutating func insert(_ range: IOVARange) {
        let i = lowerBound(range)
        if i < distinct.count && distinct[i] == range {
            counts[i] += 1
            return
        }
        distinct.insert(range, at: i)
        counts.insert(1, at: i)
        rebuildMerged()
    }

    /// Counts one endpoint fewer carrying `range`; the range leaves the union with its last endpoint.
    mutating func remove(_ range: IOVARange) {
        let i = lowerBound(range)
        guard i < distinct.count && distinct[i] == range else { return }
        counts[i] -= 1
        guard counts[i] == 0 else { return }
        distinct.remove(at: i)
        counts.remove(at: i)
        rebuildMerged()
    }

    /// Whether `range` overlaps the union. Only the last merged interval that starts at or before
    /// `range.last` can overlap it: the ones before it end before it starts.
    public func overlaps(_ range: IOVARange) -> Bool {
        var low = 0, high = merged.count
        while low < high {
            let mid = low + (high - low) / 2
            if merged[mid].first <= range.last { low = mid + 1 } else { high = mid }
        }
        return low > 0 && merged[low - 1].last >= range.first
    }

    /// The index of the first distinct range not ordered before `range`.
    private func lowerBound(_ range: IOVARange) -> Int {
        var low = 0, high = distinct.count
        while low < high {
            let mid = low + (high - low) / 2
            let other = distinct[mid]
            if other.first < range.first || (other.first == range.first && other.last < range.last) {
                low = mid + 1
            } else {
                high = mid
            }
        }
        return low
    }

    /// One sweep over the sorted distinct ranges; adjacent ranges merge too (the union is the same).
    private mutating func rebuildMerged() {
        merged.removeAll(keepingCapacity: true)
        for range in distinct {
            // `range.first - 1` runs only when `range.first > current.last`, so it cannot underflow.
            if let current = merged.last, range.first <= current.last || range.first - 1 == current.last {
                if range.last > current.last { merged[merged.count - 1] = IOVARange(first: current.first, last: range.last)! }
            } else {
                merged.append(range)
            }
        }
    }
}
