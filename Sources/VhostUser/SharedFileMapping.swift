import CVhostUser
import Glibc
import SystemPackage

/// A whole file (a sealed memfd another process shares with us) mapped shared and writable, with the
/// ordered 64-bit loads and stores that protocols over shared memory need. The file must not be able to
/// shrink under the mapping (F_SEAL_SHRINK), or an access past its new end would raise SIGBUS; its size
/// must be exactly what the peer announced. Unmapped on deinit.
public final class SharedFileMapping: @unchecked Sendable {
    public enum MappingError: Error, Hashable, Sendable {
        case notARegularFile
        case sizeMismatch(announced: UInt64, actual: UInt64)
        case notSealed
        case tooLarge
        case system(Errno)
    }

    public let byteCount: Int
    private let base: UnsafeMutableRawPointer

    public init(descriptor: borrowing OwnedFileDescriptor, size: UInt64, maximumSize: UInt64) throws(MappingError) {
        guard size > 0 else { throw .tooLarge }
        try Self.checkSealedFile(descriptor, size: size, maximumSize: maximumSize)
        do {
            base = try SystemCall.mapShared(descriptor.descriptor, length: Int(size), offset: 0)
        } catch {
            throw .system(error)
        }
        byteCount = Int(size)
    }

    deinit { munmap(base, byteCount) }

    /// Offsets come from a validated layout; a wrong one is a bug of the caller, so it traps.
    private func pointer(_ offset: Int, _ count: Int) -> UnsafeMutableRawPointer {
        precondition(offset >= 0 && count >= 0 && offset <= byteCount - count, "offset outside the mapping")
        return base + offset
    }

    public func copyBytes(at offset: Int, into destination: UnsafeMutableRawBufferPointer) {
        guard let target = destination.baseAddress else { return }
        target.copyMemory(from: pointer(offset, destination.count), byteCount: destination.count)
    }

    public func storeBytes(_ source: UnsafeRawBufferPointer, at offset: Int) {
        guard let from = source.baseAddress else { return }
        pointer(offset, source.count).copyMemory(from: from, byteCount: source.count)
    }

    public func loadAcquire(at offset: Int) -> UInt64 { UInt64(littleEndian: cvu_load_acquire_u64(pointer(offset, 8))) }
    public func storeRelease(_ value: UInt64, at offset: Int) { cvu_store_release_u64(pointer(offset, 8), value.littleEndian) }
    public func loadByte(at offset: Int) -> UInt8 { pointer(offset, 1).load(as: UInt8.self) }
    public func fullFence() { cvu_full_fence() }
}

extension SharedFileMapping {
    /// Reads the whole of a sealed file another process handed us (it can neither shrink nor grow while
    /// we read), after checking that its size is exactly `size` (at most `maximumSize`).
    public static func readSealedFile(_ descriptor: borrowing OwnedFileDescriptor, size: UInt64,
                                      maximumSize: UInt64) throws(MappingError) -> [UInt8] {
        try checkSealedFile(descriptor, size: size, maximumSize: maximumSize)
        var bytes = [UInt8](repeating: 0, count: Int(size))
        var done = 0
        let fd = descriptor.descriptor
        while done < bytes.count {
            let n: Int
            do {
                n = try bytes.withUnsafeMutableBufferPointer { buffer throws(Errno) in
                    let rest = UnsafeMutableRawBufferPointer(UnsafeMutableBufferPointer(rebasing: buffer[done...]))
                    return try SystemCall.read(fd, fromAbsoluteOffset: done, into: rest)
                }
            } catch {
                throw .system(error)
            }
            guard n > 0 else { throw .system(.ioError) }
            done += n
        }
        return bytes
    }

    /// A regular file of exactly `size` bytes (at most `maximumSize`) that can neither shrink nor grow.
    private static func checkSealedFile(_ descriptor: borrowing OwnedFileDescriptor, size: UInt64,
                                        maximumSize: UInt64) throws(MappingError) {
        guard size <= maximumSize, size <= UInt64(Int.max / 2) else { throw .tooLarge }
        let info: Stat
        do { info = try descriptor.descriptor.stat() } catch { throw .system(error) }
        guard info.type == .regular else { throw .notARegularFile }
        guard info.size >= 0, UInt64(info.size) == size else {
            throw .sizeMismatch(announced: size, actual: UInt64(clamping: info.size))
        }
        let seals = cvu_get_seals(descriptor.rawValue)
        guard seals >= 0, seals & cvu_seal_shrink != 0, seals & cvu_seal_grow != 0 else { throw .notSealed }
    }
}
