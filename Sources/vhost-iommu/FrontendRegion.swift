import IOMMUFrontend
import VhostUser

/// The region as `IOMMUFrontend` reads and writes it: the daemon's shared mapping of QEMU's memfd.
final class FrontendRegion: RegionMemory {
    private let mapping: SharedFileMapping
    init(_ mapping: SharedFileMapping) { self.mapping = mapping }
    var byteCount: Int { mapping.byteCount }
    func copyBytes(at offset: Int, into destination: UnsafeMutableRawBufferPointer) { mapping.copyBytes(at: offset, into: destination) }
    func storeBytes(_ source: UnsafeRawBufferPointer, at offset: Int) { mapping.storeBytes(source, at: offset) }
    func loadAcquire(at offset: Int) -> UInt64 { mapping.loadAcquire(at: offset) }
    func storeRelease(_ value: UInt64, at offset: Int) { mapping.storeRelease(value, at: offset) }
    func loadByte(at offset: Int) -> UInt8 { mapping.loadByte(at: offset) }
    func fullFence() { mapping.fullFence() }
}
