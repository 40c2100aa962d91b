/// The mappings of one domain, ordered by `virtualStart`, in a B+-tree.
///
/// Written here rather than taken from swift-collections because the only sorted containers there
/// (`SortedCollections`) sit behind an "unstable, not for production" trait, and because the device
/// needs interval queries (floor, ceiling, split check) that a plain sorted map does not offer.
/// Nodes live in flat arrays addressed by index: the table is a value type with copy-on-write through
/// its arrays, no per-node allocation or reference counting, and about 32–45 bytes per mapping.
/// Invariants: mappings never overlap; every node but the root holds at least `minimumFill` items;
/// a branch's key `i` (for `i ≥ 1`) is ≤ every start in child `i` and > every start left of it.
public struct MappingTable: Sendable {
    @usableFromInline static let leafCapacity = 32
    @usableFromInline static let branchCapacity = 32
    @usableFromInline static let minimumFill = 8

    // Leaves: `leafCapacity` slots each, plus counts and doubly linked neighbours (-1 = none).
    @usableFromInline var entries: [Mapping] = []
    @usableFromInline var leafCounts: [Int32] = []
    @usableFromInline var leafNext: [Int32] = []
    @usableFromInline var leafPrevious: [Int32] = []
    // Branches: `branchCapacity` keys and children each; key 0 is unused.
    @usableFromInline var keys: [UInt64] = []
    @usableFromInline var children: [Int32] = []
    @usableFromInline var branchCounts: [Int32] = []
    private var freeLeaves: [Int32] = []
    private var freeBranches: [Int32] = []
    @usableFromInline var root: Int32 = -1
    /// Branch levels above the leaves.
    @usableFromInline var height = 0
    public private(set) var count = 0

    public init() {}

    public var isEmpty: Bool { count == 0 }

    // MARK: Queries

    /// The mapping with the greatest start ≤ `key`.
    @inlinable public func floor(_ key: UInt64) -> Mapping? {
        guard root >= 0 else { return nil }
        let leaf = leaf(for: key)
        let position = upperBound(leaf: leaf, key)
        if position > 0 { return entries[Int(leaf) * Self.leafCapacity + position - 1] }
        let previous = leafPrevious[Int(leaf)]
        guard previous >= 0 else { return nil }
        return entries[Int(previous) * Self.leafCapacity + Int(leafCounts[Int(previous)]) - 1]
    }

    /// The mapping with the least start ≥ `key`.
    public func ceiling(_ key: UInt64) -> Mapping? {
        guard root >= 0 else { return nil }
        let leaf = leaf(for: key)
        let position = lowerBound(leaf: leaf, key)
        if position < Int(leafCounts[Int(leaf)]) { return entries[Int(leaf) * Self.leafCapacity + position] }
        let next = leafNext[Int(leaf)]
        guard next >= 0 else { return nil }
        return entries[Int(next) * Self.leafCapacity]
    }

    /// The mapping that contains `address`.
    @inlinable public func mapping(containing address: UInt64) -> Mapping? {
        guard let candidate = floor(address), candidate.virtualEnd >= address else { return nil }
        return candidate
    }

    /// Whether any mapping shares an address with `range`.
    public func overlaps(_ range: IOVARange) -> Bool {
        guard let candidate = floor(range.last) else { return false }
        return candidate.virtualEnd >= range.first
    }

    /// Whether removing the mappings inside `range` would have to split one (a mapping crosses an end).
    public func wouldSplit(_ range: IOVARange) -> Bool {
        if let low = floor(range.first), low.virtualStart < range.first, low.virtualEnd >= range.first {
            return true
        }
        if let high = floor(range.last), high.virtualEnd > range.last, high.virtualStart >= range.first {
            return true
        }
        return false
    }

    /// All mappings in order (for tests, snapshots and the control socket).
    public var mappings: [Mapping] {
        var result: [Mapping] = []
        result.reserveCapacity(count)
        guard root >= 0 else { return result }
        var leaf = root
        for _ in 0..<height { leaf = children[Int(leaf) * Self.branchCapacity] }
        while leaf >= 0 {
            let base = Int(leaf) * Self.leafCapacity
            result.append(contentsOf: entries[base..<base + Int(leafCounts[Int(leaf)])])
            leaf = leafNext[Int(leaf)]
        }
        return result
    }

    /// Bytes held by the table's storage (element counts times strides, not spare capacity).
    public var storageBytes: Int {
        entries.count * MemoryLayout<Mapping>.stride
            + (leafCounts.count + leafNext.count + leafPrevious.count) * 4
            + keys.count * 8 + children.count * 4 + branchCounts.count * 4
            + (freeLeaves.count + freeBranches.count) * 4
    }

    // MARK: Updates

    /// Inserts a mapping. The caller has checked that it overlaps no existing mapping.
    public mutating func insert(_ mapping: Mapping) {
        assert(!overlaps(mapping.range), "MappingTable.insert: overlapping mapping")
        if root < 0 { root = allocateLeaf() }
        if let (separator, right) = insert(mapping, into: root, level: height) {
            let branch = allocateBranch()
            let base = Int(branch) * Self.branchCapacity
            children[base] = root
            children[base + 1] = right
            keys[base + 1] = separator
            branchCounts[Int(branch)] = 2
            root = branch
            height += 1
        }
        count += 1
    }

    /// Removes the mapping that starts exactly at `start`.
    @discardableResult
    public mutating func remove(startingAt start: UInt64) -> Mapping? {
        remove(start, ifEndingAt: nil)
    }

    /// Removes the mapping that is exactly `range`, in one descent; nil (and nothing changes) when no
    /// mapping has those bounds. The common UNMAP: the guest unmaps what it mapped.
    public mutating func remove(exactly range: IOVARange) -> Mapping? {
        remove(range.first, ifEndingAt: range.last)
    }

    private mutating func remove(_ start: UInt64, ifEndingAt end: UInt64?) -> Mapping? {
        guard root >= 0, let removed = remove(start, ifEndingAt: end, from: root, level: height) else { return nil }
        count -= 1
        if height > 0 && branchCounts[Int(root)] == 1 {
            let old = root
            root = children[Int(old) * Self.branchCapacity]
            freeBranches.append(old)
            height -= 1
        } else if height == 0 && leafCounts[Int(root)] == 0 {
            removeAll()
        }
        return removed
    }

    /// Removes every mapping whose start lies in `range`; returns how many.
    /// Use `wouldSplit` first when a mapping must not be cut.
    @discardableResult
    public mutating func removeAll(startingIn range: IOVARange) -> Int {
        var removed = 0
        while let next = ceiling(range.first), next.virtualStart <= range.last {
            remove(startingAt: next.virtualStart)
            removed += 1
        }
        return removed
    }

    public mutating func removeAll() {
        self = MappingTable()
    }

    // MARK: Search helpers

    @inlinable func leaf(for key: UInt64) -> Int32 {
        var node = root
        for _ in 0..<height { node = children[Int(node) * Self.branchCapacity + childIndex(branch: node, key)] }
        return node
    }

    /// The child of `branch` whose subtree holds `key`: the last `i ≥ 1` with `keys[i] ≤ key`, else 0.
    @inlinable func childIndex(branch: Int32, _ key: UInt64) -> Int {
        let base = Int(branch) * Self.branchCapacity
        var low = 1, high = Int(branchCounts[Int(branch)])
        while low < high {
            let middle = (low + high) / 2
            if keys[base + middle] <= key { low = middle + 1 } else { high = middle }
        }
        return low - 1
    }

    /// Number of entries in `leaf` whose start is ≤ `key`.
    @inlinable func upperBound(leaf: Int32, _ key: UInt64) -> Int { bound(leaf: leaf, key, including: true) }

    /// Number of entries in `leaf` whose start is < `key`.
    @inlinable func lowerBound(leaf: Int32, _ key: UInt64) -> Int { bound(leaf: leaf, key, including: false) }

    @inlinable func bound(leaf: Int32, _ key: UInt64, including: Bool) -> Int {
        let base = Int(leaf) * Self.leafCapacity
        var low = 0, high = Int(leafCounts[Int(leaf)])
        while low < high {
            let middle = (low + high) / 2
            let start = entries[base + middle].virtualStart
            if start < key || (including && start == key) { low = middle + 1 } else { high = middle }
        }
        return low
    }

    /// How many of `total` items stay in the left node when a full node splits after an insert at
    /// `position`: edge inserts (ascending or descending IOVA allocation) leave the growing side light,
    /// so sequential patterns fill nodes to about 3/4 instead of 1/2.
    static func leftCountAfterSplit(insertedAt position: Int, total: Int) -> Int {
        if position == 0 { return minimumFill }
        if position == total - 1 { return total - minimumFill }
        return total / 2
    }

    // MARK: Node storage

    private mutating func allocateLeaf() -> Int32 {
        let leaf: Int32
        if let reused = freeLeaves.popLast() {
            leaf = reused
        } else {
            leaf = Int32(leafCounts.count)
            entries.append(contentsOf: repeatElement(Mapping(virtualStart: 0, virtualEnd: 0, physicalStart: 0, flags: []), count: Self.leafCapacity))
            leafCounts.append(0)
            leafNext.append(-1)
            leafPrevious.append(-1)
        }
        leafCounts[Int(leaf)] = 0
        leafNext[Int(leaf)] = -1
        leafPrevious[Int(leaf)] = -1
        return leaf
    }

    private mutating func allocateBranch() -> Int32 {
        if let reused = freeBranches.popLast() {
            branchCounts[Int(reused)] = 0
            return reused
        }
        let branch = Int32(branchCounts.count)
        keys.append(contentsOf: repeatElement(0, count: Self.branchCapacity))
        children.append(contentsOf: repeatElement(-1, count: Self.branchCapacity))
        branchCounts.append(0)
        return branch
    }

    private func itemCount(_ node: Int32, level: Int) -> Int {
        Int(level == 0 ? leafCounts[Int(node)] : branchCounts[Int(node)])
    }

    // MARK: Insertion

    /// Inserts into the subtree at `node`; returns the separator and new right node when `node` split.
    private mutating func insert(_ mapping: Mapping, into node: Int32, level: Int) -> (UInt64, Int32)? {
        if level == 0 { return insertIntoLeaf(node, mapping) }
        let index = childIndex(branch: node, mapping.virtualStart)
        let child = children[Int(node) * Self.branchCapacity + index]
        guard let (separator, right) = insert(mapping, into: child, level: level - 1) else { return nil }
        return insertIntoBranch(node, at: index + 1, key: separator, child: right)
    }

    private mutating func insertIntoLeaf(_ leaf: Int32, _ mapping: Mapping) -> (UInt64, Int32)? {
        let capacity = Self.leafCapacity
        let base = Int(leaf) * capacity
        let n = Int(leafCounts[Int(leaf)])
        let position = lowerBound(leaf: leaf, mapping.virtualStart)
        if n < capacity {
            var i = n
            while i > position { entries[base + i] = entries[base + i - 1]; i -= 1 }
            entries[base + position] = mapping
            leafCounts[Int(leaf)] = Int32(n + 1)
            return nil
        }
        // Split the n+1 items (old entries with `mapping` at `position`) into `leaf` and a new right leaf.
        let total = n + 1
        let leftCount = Self.leftCountAfterSplit(insertedAt: position, total: total)
        let right = allocateLeaf()
        let rightBase = Int(right) * capacity
        func item(_ k: Int) -> Mapping { k < position ? entries[base + k] : (k == position ? mapping : entries[base + k - 1]) }
        for j in 0..<(total - leftCount) { entries[rightBase + j] = item(leftCount + j) }
        var k = leftCount - 1
        while k >= position { entries[base + k] = item(k); k -= 1 }
        leafCounts[Int(leaf)] = Int32(leftCount)
        leafCounts[Int(right)] = Int32(total - leftCount)
        let next = leafNext[Int(leaf)]
        leafNext[Int(right)] = next
        leafPrevious[Int(right)] = leaf
        if next >= 0 { leafPrevious[Int(next)] = right }
        leafNext[Int(leaf)] = right
        return (entries[rightBase].virtualStart, right)
    }

    private mutating func insertIntoBranch(_ branch: Int32, at position: Int, key: UInt64, child: Int32) -> (UInt64, Int32)? {
        let capacity = Self.branchCapacity
        let base = Int(branch) * capacity
        let n = Int(branchCounts[Int(branch)])
        if n < capacity {
            var i = n
            while i > position {
                keys[base + i] = keys[base + i - 1]
                children[base + i] = children[base + i - 1]
                i -= 1
            }
            keys[base + position] = key
            children[base + position] = child
            branchCounts[Int(branch)] = Int32(n + 1)
            return nil
        }
        let total = n + 1
        let leftCount = Self.leftCountAfterSplit(insertedAt: position, total: total)
        let right = allocateBranch()
        let rightBase = Int(right) * capacity
        func item(_ k: Int) -> (UInt64, Int32) {
            k < position ? (keys[base + k], children[base + k])
                : (k == position ? (key, child) : (keys[base + k - 1], children[base + k - 1]))
        }
        for j in 0..<(total - leftCount) {
            (keys[rightBase + j], children[rightBase + j]) = item(leftCount + j)
        }
        var k = leftCount - 1
        while k >= position { (keys[base + k], children[base + k]) = item(k); k -= 1 }
        branchCounts[Int(branch)] = Int32(leftCount)
        branchCounts[Int(right)] = Int32(total - leftCount)
        // The right node's first key moves up as the separator.
        return (keys[rightBase], right)
    }

    // MARK: Removal

    private mutating func remove(_ start: UInt64, ifEndingAt end: UInt64?, from node: Int32, level: Int) -> Mapping? {
        if level == 0 {
            let base = Int(node) * Self.leafCapacity
            let n = Int(leafCounts[Int(node)])
            let position = lowerBound(leaf: node, start)
            guard position < n, entries[base + position].virtualStart == start else { return nil }
            if let end, entries[base + position].virtualEnd != end { return nil }
            let removed = entries[base + position]
            for i in position..<(n - 1) { entries[base + i] = entries[base + i + 1] }
            leafCounts[Int(node)] = Int32(n - 1)
            return removed
        }
        let index = childIndex(branch: node, start)
        let child = children[Int(node) * Self.branchCapacity + index]
        guard let removed = remove(start, ifEndingAt: end, from: child, level: level - 1) else { return nil }
        if itemCount(child, level: level - 1) < Self.minimumFill {
            rebalance(parent: node, childAt: index, childLevel: level - 1)
        }
        return removed
    }

    /// Merges an under-full child with a sibling, or evens the two out when they do not fit in one node.
    private mutating func rebalance(parent: Int32, childAt index: Int, childLevel: Int) {
        let parentBase = Int(parent) * Self.branchCapacity
        let leftIndex = index > 0 ? index - 1 : 0
        let rightIndex = leftIndex + 1
        let left = children[parentBase + leftIndex]
        let right = children[parentBase + rightIndex]
        if childLevel == 0 {
            rebalanceLeaves(left, right, parent: parent, rightIndex: rightIndex)
        } else {
            rebalanceBranches(left, right, parent: parent, rightIndex: rightIndex)
        }
    }

    private mutating func rebalanceLeaves(_ left: Int32, _ right: Int32, parent: Int32, rightIndex: Int) {
        let capacity = Self.leafCapacity
        let leftBase = Int(left) * capacity, rightBase = Int(right) * capacity
        let leftCount = Int(leafCounts[Int(left)]), rightCount = Int(leafCounts[Int(right)])
        if leftCount + rightCount <= capacity {
            for j in 0..<rightCount { entries[leftBase + leftCount + j] = entries[rightBase + j] }
            leafCounts[Int(left)] = Int32(leftCount + rightCount)
            let next = leafNext[Int(right)]
            leafNext[Int(left)] = next
            if next >= 0 { leafPrevious[Int(next)] = left }
            freeLeaves.append(right)
            removeChild(of: parent, at: rightIndex)
            return
        }
        let newLeftCount = (leftCount + rightCount) / 2
        if leftCount < newLeftCount {
            let moved = newLeftCount - leftCount
            for j in 0..<moved { entries[leftBase + leftCount + j] = entries[rightBase + j] }
            for j in 0..<(rightCount - moved) { entries[rightBase + j] = entries[rightBase + j + moved] }
        } else {
            let moved = leftCount - newLeftCount
            var j = rightCount - 1
            while j >= 0 { entries[rightBase + j + moved] = entries[rightBase + j]; j -= 1 }
            for j in 0..<moved { entries[rightBase + j] = entries[leftBase + newLeftCount + j] }
        }
        leafCounts[Int(left)] = Int32(newLeftCount)
        leafCounts[Int(right)] = Int32(leftCount + rightCount - newLeftCount)
        keys[Int(parent) * Self.branchCapacity + rightIndex] = entries[rightBase].virtualStart
    }

    private mutating func rebalanceBranches(_ left: Int32, _ right: Int32, parent: Int32, rightIndex: Int) {
        let capacity = Self.branchCapacity
        let parentKey = Int(parent) * capacity + rightIndex
        let separator = keys[parentKey]
        let leftBase = Int(left) * capacity, rightBase = Int(right) * capacity
        let leftCount = Int(branchCounts[Int(left)]), rightCount = Int(branchCounts[Int(right)])
        if leftCount + rightCount <= capacity {
            // The separator comes down in front of the right node's first child.
            for j in 0..<rightCount {
                keys[leftBase + leftCount + j] = j == 0 ? separator : keys[rightBase + j]
                children[leftBase + leftCount + j] = children[rightBase + j]
            }
            branchCounts[Int(left)] = Int32(leftCount + rightCount)
            freeBranches.append(right)
            removeChild(of: parent, at: rightIndex)
            return
        }
        let newLeftCount = (leftCount + rightCount) / 2
        if leftCount < newLeftCount {
            let moved = newLeftCount - leftCount
            for j in 0..<moved {
                keys[leftBase + leftCount + j] = j == 0 ? separator : keys[rightBase + j]
                children[leftBase + leftCount + j] = children[rightBase + j]
            }
            keys[parentKey] = keys[rightBase + moved]
            for j in 0..<(rightCount - moved) {
                keys[rightBase + j] = keys[rightBase + j + moved]
                children[rightBase + j] = children[rightBase + j + moved]
            }
        } else {
            let moved = leftCount - newLeftCount
            var j = rightCount - 1
            while j >= 0 {
                keys[rightBase + j + moved] = keys[rightBase + j]
                children[rightBase + j + moved] = children[rightBase + j]
                j -= 1
            }
            keys[rightBase + moved] = separator
            for j in 0..<moved {
                keys[rightBase + j] = keys[leftBase + newLeftCount + j]
                children[rightBase + j] = children[leftBase + newLeftCount + j]
            }
            keys[parentKey] = keys[leftBase + newLeftCount]
        }
        branchCounts[Int(left)] = Int32(newLeftCount)
        branchCounts[Int(right)] = Int32(leftCount + rightCount - newLeftCount)
    }

    private mutating func removeChild(of branch: Int32, at index: Int) {
        let base = Int(branch) * Self.branchCapacity
        let n = Int(branchCounts[Int(branch)])
        for i in index..<(n - 1) {
            keys[base + i] = keys[base + i + 1]
            children[base + i] = children[base + i + 1]
        }
        branchCounts[Int(branch)] = Int32(n - 1)
    }

    // MARK: Invariants (tests and fuzzers)

    /// Checks every structural invariant; returns a description of the first violation.
    @_spi(Fuzzing) public func invariantViolation() -> String? {
        guard root >= 0 else { return count == 0 ? nil : "empty root with count \(count)" }
        var seen = 0
        var leaves: [Int32] = []
        func check(_ node: Int32, level: Int, low: UInt64?, high: UInt64?, isRoot: Bool) -> String? {
            let n = itemCount(node, level: level)
            if !isRoot && n < Self.minimumFill { return "node \(node) level \(level) under-full: \(n)" }
            if level == 0 {
                let base = Int(node) * Self.leafCapacity
                if n == 0 { return "empty leaf \(node)" }
                for i in 0..<n {
                    let m = entries[base + i]
                    if m.virtualEnd < m.virtualStart { return "reversed mapping" }
                    if let low, m.virtualStart < low { return "start below separator" }
                    if let high, m.virtualStart >= high { return "start at/after next separator" }
                    if i > 0 && entries[base + i - 1].virtualEnd >= m.virtualStart { return "overlap or disorder in leaf" }
                }
                seen += n
                leaves.append(node)
                return nil
            }
            if n < 2 { return "branch with \(n) children" }
            let base = Int(node) * Self.branchCapacity
            for i in 0..<n {
                let childLow = i == 0 ? low : keys[base + i]
                let childHigh = i + 1 < n ? keys[base + i + 1] : high
                if i > 0, let low, keys[base + i] < low { return "key below bound" }
                if i + 1 < n && keys[base + i] >= keys[base + i + 1] && i > 0 { return "keys out of order" }
                if let error = check(children[base + i], level: level - 1, low: childLow, high: childHigh, isRoot: false) { return error }
            }
            return nil
        }
        if let error = check(root, level: height, low: nil, high: nil, isRoot: true) { return error }
        if seen != count { return "count \(count) but \(seen) entries" }
        for (i, leaf) in leaves.enumerated() {
            let expectedPrevious: Int32 = i > 0 ? leaves[i - 1] : -1
            let expectedNext: Int32 = i + 1 < leaves.count ? leaves[i + 1] : -1
            if leafPrevious[Int(leaf)] != expectedPrevious || leafNext[Int(leaf)] != expectedNext { return "broken leaf links at \(leaf)" }
        }
        let all = mappings
        for i in 1..<max(all.count, 1) where all[i - 1].virtualEnd >= all[i].virtualStart { return "overlap across leaves" }
        return nil
    }
}
