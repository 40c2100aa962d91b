/// The `flags` of a MAP request (virtio 1.4 §5.13.6.5).
public struct MapFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    public static let read = MapFlags(rawValue: 1 << 0)
    public static let write = MapFlags(rawValue: 1 << 1)
    /// A memory type, not a permission; legal only with F_MMIO.
    public static let mmio = MapFlags(rawValue: 1 << 2)
    public static let defined: MapFlags = [.read, .write, .mmio]
}

/// The region created by one MAP: `virtualStart...virtualEnd` (inclusive) → `physicalStart...`.
///
/// Laid out in 32 bytes so that a B-tree leaf of them stays compact.
public struct Mapping: Hashable, Sendable {
    public var virtualStart: UInt64
    public var virtualEnd: UInt64
    public var physicalStart: UInt64
    public var flags: MapFlags

    /// The caller guarantees `virtualStart <= virtualEnd` and that the physical end does not pass 2^64−1.
    public init(virtualStart: UInt64, virtualEnd: UInt64, physicalStart: UInt64, flags: MapFlags) {
        self.virtualStart = virtualStart
        self.virtualEnd = virtualEnd
        self.physicalStart = physicalStart
        self.flags = flags
    }

    public var range: IOVARange { IOVARange(first: virtualStart, last: virtualEnd)! }

    /// The guest-physical address of `iova`, which must lie in the mapping: PA = VA − virt_start + phys_start.
    @inlinable public func physicalAddress(of iova: UInt64) -> UInt64 {
        physicalStart &+ (iova &- virtualStart)
    }
}
