import Atomics

/// Ordered 16-bit loads and stores on ring indices and flags in guest memory (virtio 1.x §2.7.13:
/// avail.idx read with acquire, used.idx published with release). Ring fields are 2-byte aligned: the
/// engine refuses misaligned rings before it resolves them. The test driver (VhostUserTestSupport) uses the same
/// operations on the driver's side of the ring.
public enum RingAtomics {
    @inline(__always)
    private static func atomic(_ pointer: UnsafeMutableRawPointer) -> UnsafeAtomic<UInt16> {
        UnsafeAtomic(at: pointer.assumingMemoryBound(to: UInt16.AtomicRepresentation.self))
    }

    @inline(__always)
    public static func loadAcquire(_ pointer: UnsafeMutableRawPointer) -> UInt16 { atomic(pointer).load(ordering: .acquiring) }

    @inline(__always)
    public static func loadRelaxed(_ pointer: UnsafeMutableRawPointer) -> UInt16 { atomic(pointer).load(ordering: .relaxed) }

    @inline(__always)
    public static func storeRelease(_ pointer: UnsafeMutableRawPointer, _ value: UInt16) { atomic(pointer).store(value, ordering: .releasing) }

    @inline(__always)
    public static func storeRelaxed(_ pointer: UnsafeMutableRawPointer, _ value: UInt16) { atomic(pointer).store(value, ordering: .relaxed) }

    /// A full fence, between a store that re-enables notifications and the load that checks for work.
    @inline(__always)
    public static func fullFence() { atomicMemoryFence(ordering: .sequentiallyConsistent) }
}
