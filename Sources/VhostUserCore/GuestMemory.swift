/// One region of guest memory, mapped by the host from the descriptor the front-end passed.
/// Unmapped when the last reference goes, so a region removed while a ring still points into it
/// stays valid until the ring's pointers are refreshed.
public final class MemoryRegion: Sendable {
    public let guestPhysicalAddress: UInt64
    public let size: UInt64
    public let userAddress: UInt64
    public let mmapOffset: UInt64
    /// The host's mapping; the region's bytes live as long as it does.
    private let mapping: any MemoryMapping

    /// Start of the region's bytes in our address space.
    var base: UnsafeMutableRawPointer { mapping.bytes.baseAddress! }

    /// Maps `size` bytes of `descriptor` at `mmapOffset` through `host`; the descriptor is closed
    /// afterwards (the mapping keeps the memory).
    init(guestPhysicalAddress: UInt64, size: UInt64, userAddress: UInt64, mmapOffset: UInt64,
                descriptor: consuming OwnedDescriptor, host: any VhostUserHost) throws(MemoryError) {
        guard size > 0, size <= UInt64(Int.max / 2),
              !guestPhysicalAddress.addingReportingOverflow(size - 1).overflow,
              !userAddress.addingReportingOverflow(size - 1).overflow,
              mmapOffset <= UInt64(Int.max / 2) else { throw .invalidRegion }
        let mapping = try host.map(descriptor.descriptor, size: size, offset: mmapOffset)
        guard mapping.bytes.count >= Int(size), mapping.bytes.baseAddress != nil else { throw .invalidRegion }
        self.mapping = mapping
        self.guestPhysicalAddress = guestPhysicalAddress
        self.size = size
        self.userAddress = userAddress
        self.mmapOffset = mmapOffset
    }
}

public enum MemoryError: Error, Hashable {
    case invalidRegion
    case overlappingRegion
    case tooManyRegions
    /// The host could not map it (its reason: an errno in the Posix layer).
    case mapFailed(String)
}

/// The guest's memory table: guest-physical and front-end user addresses → our pointers.
/// Every lookup checks bounds without overflow. Only the event-loop thread touches it.
public struct GuestMemory: Sendable {
    /// SET_MEM_TABLE carries at most 8 regions.
    public static let maxTableRegions = 8
    /// The default answer to GET_MAX_MEM_SLOTS, and cap on regions.
    public static let defaultMaxRegions = 32
    /// QEMU caps the slots it uses at 512; 509 is what its own back-ends report.
    public static let maxRegionsLimit = 509

    public private(set) var regions: [MemoryRegion] = []
    public let maxRegions: Int
    /// The regions' bounds and bases as plain values, in the same order: look-ups on the request
    /// path walk these, without reference counting (`regions` keeps the mappings alive).
    private var spans: [Span] = []

    struct Span: @unchecked Sendable {  // a pointer into a mapping that `regions` owns
        var guestPhysicalAddress: UInt64
        var userAddress: UInt64
        var size: UInt64
        var base: UnsafeMutableRawPointer

        init(_ region: MemoryRegion) {
            guestPhysicalAddress = region.guestPhysicalAddress
            userAddress = region.userAddress
            size = region.size
            base = region.base
        }

        /// The bytes of `[address, address+length)` in the space that starts at `start`, or nil.
        @inline(__always)
        func pointer(_ address: UInt64, _ length: UInt64, start: UInt64) -> UnsafeMutableRawPointer? {
            guard address >= start else { return nil }
            let offset = address - start
            guard offset < size, length <= size - offset else { return nil }
            return base + Int(offset)
        }
    }

    public init(maxRegions: Int = GuestMemory.defaultMaxRegions) {
        self.maxRegions = min(max(maxRegions, GuestMemory.maxTableRegions), GuestMemory.maxRegionsLimit)
    }

    public var isEmpty: Bool { regions.isEmpty }

    mutating func add(_ region: MemoryRegion) throws(MemoryError) {
        guard regions.count < maxRegions else { throw .tooManyRegions }
        let last = region.guestPhysicalAddress + (region.size - 1)
        for existing in regions {
            let existingLast = existing.guestPhysicalAddress + (existing.size - 1)
            if region.guestPhysicalAddress <= existingLast && existing.guestPhysicalAddress <= last {
                throw .overlappingRegion
            }
        }
        regions.append(region)
        regions.sort { $0.guestPhysicalAddress < $1.guestPhysicalAddress }
        spans = regions.map(Span.init)
    }

    /// Removes the region with these addresses and size; false if there is none.
    mutating func remove(guestPhysicalAddress: UInt64, size: UInt64, userAddress: UInt64) -> Bool {
        guard let index = regions.firstIndex(where: {
            $0.guestPhysicalAddress == guestPhysicalAddress && $0.size == size && $0.userAddress == userAddress
        }) else { return false }
        regions.remove(at: index)
        spans = regions.map(Span.init)
        return true
    }

    mutating func removeAll() {
        regions.removeAll(keepingCapacity: false)
        spans.removeAll(keepingCapacity: false)
    }

    /// `length` bytes at a guest-physical address, if they lie within one region.
    @inline(__always)
    public func guestPhysical(_ address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for span in spans {
            if let p = span.pointer(address, length, start: span.guestPhysicalAddress) { return p }
        }
        return nil
    }

    /// `length` bytes at a front-end user address (vring addresses are these), if within one region.
    public func userAddress(_ address: UInt64, length: UInt64) -> UnsafeMutableRawPointer? {
        for span in spans {
            if let p = span.pointer(address, length, start: span.userAddress) { return p }
        }
        return nil
    }

    /// Calls `body` for each piece of `[address, address+length)` as it falls into regions.
    /// Returns false (having called `body` for a prefix only) when some byte is outside guest memory.
    func forEachPiece(_ address: UInt64, length: UInt64, _ body: (UnsafeMutableRawBufferPointer) -> Void) -> Bool {
        var address = address
        var remaining = length
        while remaining > 0 {
            // The span holding `address`, and how many bytes from it lie in that span.
            guard let span = spans.first(where: { address >= $0.guestPhysicalAddress && address - $0.guestPhysicalAddress < $0.size })
            else { return false }
            let n = min(remaining, span.size - (address - span.guestPhysicalAddress))
            let p = span.base + Int(address - span.guestPhysicalAddress)
            body(UnsafeMutableRawBufferPointer(start: p, count: Int(n)))
            remaining -= n
            guard remaining == 0 || !address.addingReportingOverflow(n).overflow else { return false }
            address &+= n
        }
        return true
    }
}
