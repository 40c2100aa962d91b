import Synchronization

/// The allocator in one process's memory: for tests and for `--pasid-store memory`.
/// A bitmap of the whole space (128 KiB at 20 bits) finds the lowest free PASID a word at a time.
public final class InMemoryPASIDStore: PASIDAllocator {
    private struct State {
        var bitmap: [UInt64]
        var owners: [PASID: String] = [:]
        var counts: [String: Int] = [:]
        var quotas: [String: Int] = [:]
        var defaultQuota: Int
    }

    public let width: Int
    private let state: Mutex<State>

    public init(width: Int = maxPASIDWidth, defaultQuota quota: Int? = nil) throws(PASIDStoreError) {
        guard (1...maxPASIDWidth).contains(width) else { throw .invalidWidth(width) }
        self.width = width
        let words = ((1 << width) + 63) / 64
        state = Mutex(State(bitmap: [UInt64](repeating: 0, count: words), defaultQuota: quota ?? standardQuota(width: width)))
    }

    public func allocate(owner: String, in range: ClosedRange<PASID>?) throws(PASIDStoreError) -> PASID {
        let range = try resolve(range)
        return try state.withLock { s throws(PASIDStoreError) -> PASID in
            let quota = s.quotas[owner] ?? s.defaultQuota
            guard s.counts[owner, default: 0] < quota else { throw .quotaExceeded(owner: owner, quota: quota) }
            guard let pasid = Self.lowestFree(in: s.bitmap, range) else { throw .exhausted }
            s.bitmap[Int(pasid) / 64] |= 1 << (UInt64(pasid) % 64)
            s.owners[pasid] = owner
            s.counts[owner, default: 0] += 1
            return pasid
        }
    }

    static func lowestFree(in bitmap: [UInt64], _ range: ClosedRange<PASID>) -> PASID? {
        var index = Int(range.lowerBound)
        let last = Int(range.upperBound)
        while index <= last {
            let word = bitmap[index / 64] | ((1 << UInt64(index % 64)) - 1)  // ignore bits below `index`
            if word != .max {
                let candidate = (index / 64) * 64 + (~word).trailingZeroBitCount
                return candidate <= last ? PASID(candidate) : nil
            }
            index = (index / 64 + 1) * 64
        }
        return nil
    }

    public func free(_ pasid: PASID, owner: String) throws(PASIDStoreError) {
        try state.withLock { s throws(PASIDStoreError) in
            guard s.owners[pasid] == owner else { throw .notHeld(pasid) }
            s.owners[pasid] = nil
            s.bitmap[Int(pasid) / 64] &= ~(1 << (UInt64(pasid) % 64))
            s.counts[owner, default: 1] -= 1
        }
    }

    public func releaseAll(owner: String) throws(PASIDStoreError) -> Int {
        state.withLock { s in
            let held = s.owners.filter { $0.value == owner }.map(\.key)
            for pasid in held {
                s.owners[pasid] = nil
                s.bitmap[Int(pasid) / 64] &= ~(1 << (UInt64(pasid) % 64))
            }
            s.counts[owner] = nil
            return held.count
        }
    }

    public func setQuota(_ quota: Int, owner: String?) throws(PASIDStoreError) {
        guard quota >= 0 else { throw .invalidRange }
        state.withLock { s in
            if let owner { s.quotas[owner] = quota } else { s.defaultQuota = quota }
        }
    }

    public func allocations() throws(PASIDStoreError) -> [PASIDAllocation] {
        state.withLock { s in s.owners.map { PASIDAllocation(pasid: $0.key, owner: $0.value) }.sorted { $0.pasid < $1.pasid } }
    }

    public func statistics() throws(PASIDStoreError) -> PASIDStoreStatistics {
        state.withLock { s in
            let names = Set(s.counts.keys).union(s.quotas.keys).sorted()
            return PASIDStoreStatistics(
                width: width, capacity: (1 << width) - 1, allocated: s.owners.count, defaultQuota: s.defaultQuota,
                owners: names.map { .init(name: $0, allocated: s.counts[$0] ?? 0, quota: s.quotas[$0], pid: nil, alive: true) })
        }
    }
}

