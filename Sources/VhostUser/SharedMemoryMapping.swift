import Glibc
import SystemPackage

/// Guest memory the front-end shares through a descriptor, mapped shared into this process; unmapped
/// when the engine's last region over it goes.
final class SharedMemoryMapping: MemoryMapping, @unchecked Sendable {
    let bytes: UnsafeMutableRawBufferPointer
    private let mapping: UnsafeMutableRawPointer
    private let mappingLength: Int

    /// Maps `size` bytes of `fd` at `offset` (any offset: the mapping starts at the page below it).
    init(_ fd: FileDescriptor, size: UInt64, offset: UInt64) throws(MemoryError) {
        // A mapping larger than its file would raise SIGBUS on access: the region must fit the file.
        guard let info = try? fd.stat() else { throw .invalidRegion }
        if info.type == .regular {
            let (end, overflow) = offset.addingReportingOverflow(size)
            guard !overflow, info.size >= 0, end <= UInt64(info.size) else { throw .invalidRegion }
        }
        let page = UInt64(SystemCall.pageSize())
        let alignedOffset = offset & ~(page - 1)
        let slack = Int(offset - alignedOffset)
        let length = Int(size) + slack
        do {
            mapping = try SystemCall.mapShared(fd, length: length, offset: Int(alignedOffset))
        } catch {
            throw .mapFailed("\(error)")
        }
        mappingLength = length
        bytes = UnsafeMutableRawBufferPointer(start: mapping + slack, count: Int(size))
    }

    deinit { munmap(mapping, mappingLength) }
}
