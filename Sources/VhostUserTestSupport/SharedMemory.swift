import CVhostUser
import Glibc
import SystemPackage
import VhostUser
import VhostUserEmbedded

/// Guest RAM for tests, with a bump allocator for rings and buffers: a memfd mapped into this process
/// and shared with the back-end (Posix), or the embedded host's memory. Its user address (what the
/// front-end reports in memory tables and vring addresses) is the real address of the bytes here.
public final class SharedMemory: @unchecked Sendable {
    public let guestPhysicalAddress: UInt64
    public let size: Int
    public let side: TestBackendSide
    public let descriptor: TestDescriptor
    public let base: UnsafeMutableRawPointer
    /// The embedded host's memory (kept alive here); nil for a memfd.
    private let embeddedMemory: EmbeddedMemory?
    private var next = 0

    public init(size: Int, guestPhysicalAddress: UInt64 = 0x1_0000_0000, side: TestBackendSide = .posix) throws {
        self.size = size
        self.guestPhysicalAddress = guestPhysicalAddress
        self.side = side
        switch side {
        case .posix:
            let fd = try SystemCall.memfd(name: "test-guest-ram", size: size)
            descriptor = TestDescriptor(posix: fd)
            base = try SystemCall.mapShared(fd, length: size, offset: 0)
            embeddedMemory = nil
        case .embedded(let driver):
            let memory = EmbeddedMemory(size: size)
            descriptor = TestDescriptor(embedded: driver.host.open(.memory(memory)))
            base = memory.bytes.baseAddress!
            embeddedMemory = memory
        }
    }

    deinit { if embeddedMemory == nil { munmap(base, size) } }

    public var userAddress: UInt64 { UInt64(UInt(bitPattern: base)) }

    /// The 32-byte memory-region description: guest address, size, user address, mmap offset.
    public var regionDescription: [UInt8] {
        var out: [UInt8] = []
        let fields: [UInt64] = [guestPhysicalAddress, UInt64(size), userAddress, 0]
        for value in fields {
            withUnsafeBytes(of: value) { out.append(contentsOf: $0) }
        }
        return out
    }

    /// Allocates `count` bytes aligned to `alignment`; returns the guest-physical address.
    public func allocate(_ count: Int, alignment: Int = 16) -> UInt64 {
        next = (next + alignment - 1) & ~(alignment - 1)
        precondition(next + count <= size, "test guest memory exhausted")
        defer { next += count }
        return guestPhysicalAddress + UInt64(next)
    }

    /// Forgets every allocation (buffers are reused by the next test step).
    public func resetAllocations(keeping bytes: Int) { next = bytes }
    public var allocated: Int { next }

    public func pointer(_ guestPhysical: UInt64) -> UnsafeMutableRawPointer {
        precondition(guestPhysical >= guestPhysicalAddress && guestPhysical - guestPhysicalAddress < UInt64(size))
        return base + Int(guestPhysical - guestPhysicalAddress)
    }

    public func userAddress(of guestPhysical: UInt64) -> UInt64 {
        userAddress + (guestPhysical - guestPhysicalAddress)
    }

    public func write(_ bytes: [UInt8], at guestPhysical: UInt64) {
        bytes.withUnsafeBytes { pointer(guestPhysical).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    public func read(_ count: Int, at guestPhysical: UInt64) -> [UInt8] {
        Array(UnsafeRawBufferPointer(start: pointer(guestPhysical), count: count))
    }
}
