/// A PASID: the 20-bit Process Address Space ID of PCIe. 0 is reserved for traffic without a PASID.
public typealias PASID = UInt32

/// The largest PASID width PCIe defines (Max PASID Width field, 0…20).
public let maxPASIDWidth = 20

/// The host-wide allocator that every vhost-iommu process shares. An allocation names only its owner
/// (a VM) and optional bounds, never a device: on a real host the PASID space belongs to the whole
/// system. Owners have quotas, so that one guest cannot exhaust the space.
public protocol PASIDAllocator: Sendable {
    /// The space is `1...(1 << width) - 1`.
    var width: Int { get }

    /// Allocates the lowest free PASID in `range` (the whole space when nil) for `owner`.
    func allocate(owner: String, in range: ClosedRange<PASID>?) throws(PASIDStoreError) -> PASID

    /// Frees a PASID that `owner` holds.
    func free(_ pasid: PASID, owner: String) throws(PASIDStoreError)

    /// Frees every PASID of `owner`; returns how many.
    @discardableResult
    func releaseAll(owner: String) throws(PASIDStoreError) -> Int

    /// Sets the quota of `owner`, or the default quota for owners without one when `owner` is nil.
    func setQuota(_ quota: Int, owner: String?) throws(PASIDStoreError)

    /// Every allocation, in PASID order.
    func allocations() throws(PASIDStoreError) -> [PASIDAllocation]

    func statistics() throws(PASIDStoreError) -> PASIDStoreStatistics
}

public struct PASIDAllocation: Hashable, Sendable, Codable {
    public var pasid: PASID
    public var owner: String
    public init(pasid: PASID, owner: String) {
        self.pasid = pasid
        self.owner = owner
    }
}

public struct PASIDStoreStatistics: Hashable, Sendable, Codable {
    public struct Owner: Hashable, Sendable, Codable {
        public var name: String
        public var allocated: Int
        /// The owner's own quota, if set (otherwise the default applies).
        public var quota: Int?
        /// The process that holds the owner's lease, if one is registered.
        public var pid: Int32?
        public var alive: Bool

        public init(name: String, allocated: Int, quota: Int? = nil, pid: Int32? = nil, alive: Bool = false) {
            self.name = name
            self.allocated = allocated
            self.quota = quota
            self.pid = pid
            self.alive = alive
        }
    }

    public var width: Int
    public var capacity: Int
    public var allocated: Int
    public var defaultQuota: Int
    public var owners: [Owner]

    public init(width: Int, capacity: Int, allocated: Int, defaultQuota: Int, owners: [Owner]) {
        self.width = width
        self.capacity = capacity
        self.allocated = allocated
        self.defaultQuota = defaultQuota
        self.owners = owners
    }
}

/// Why the store refused. Exhaustion and quota are what a device turns into NOMEM.
public enum PASIDStoreError: Error, Hashable, Sendable, CustomStringConvertible {
    /// No free PASID in the requested range.
    case exhausted
    /// The owner holds as many PASIDs as its quota allows.
    case quotaExceeded(owner: String, quota: Int)
    /// Bounds outside `1...(1 << width) - 1`, or reversed.
    case invalidRange
    /// The owner does not hold that PASID.
    case notHeld(PASID)
    /// Another live process holds this owner's lease.
    case ownerInUse(owner: String, pid: Int32)
    case invalidWidth(Int)
    /// The database could not be opened, read or written.
    case storage(String)

    public var description: String {
        switch self {
        case .exhausted: "no free PASID in the range"
        case .quotaExceeded(let owner, let quota): "owner \(owner) reached its quota of \(quota)"
        case .invalidRange: "PASID range outside the store's space"
        case .notHeld(let pasid): "PASID \(pasid) is not held by this owner"
        case .ownerInUse(let owner, let pid): "owner \(owner) is held by live process \(pid)"
        case .invalidWidth(let width): "PASID width \(width) is not in 1...\(maxPASIDWidth)"
        case .storage(let message): "PASID store: \(message)"
        }
    }
}

extension PASIDAllocator {
    /// The whole space of this store.
    public var space: ClosedRange<PASID> { 1...PASID((1 << width) - 1) }

    /// Checks requested bounds against the space.
    public func resolve(_ range: ClosedRange<PASID>?) throws(PASIDStoreError) -> ClosedRange<PASID> {
        guard let range else { return space }
        guard space.contains(range.lowerBound), space.contains(range.upperBound) else { throw .invalidRange }
        return range
    }
}

/// The default quota for owners that have none: a quarter of the space, so that no single guest can
/// take it all.
public func standardQuota(width: Int) -> Int { max(1, ((1 << width) - 1) / 4) }
