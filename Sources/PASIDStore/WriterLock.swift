import Glibc
import PASIDAllocators
import SystemPackage

/// A blocking lock on a file beside the database that writers take around each write transaction.
///
/// SQLite's own busy handler polls with sleeps of up to 100 ms, so a process that writes back to back
/// (a guest flooding ALLOC_PASID) can starve every other process until its busy timeout. Waiting in
/// the kernel on an open-file-description lock (F_OFD_SETLKW) instead wakes the waiter as soon as the
/// lock is free. OFD locks belong to the open file, so two connections in one process exclude each
/// other too.
final class WriterLock: Sendable {
    private let fd: FileDescriptor
    /// F_OFD_SETLKW on Linux (Glibc exposes it only with _GNU_SOURCE; swift-system has no record locks).
    private static let setLockWait: Int32 = 38

    init(path: String) throws(PASIDStoreError) {
        do {
            fd = try FileDescriptor.open(FilePath(path), .readWrite, options: [.create, .closeOnExec],
                                         permissions: [.ownerReadWrite, .groupRead, .otherRead])
        } catch {
            throw .storage("cannot open \(path): \(error)")
        }
    }

    deinit { try? fd.close() }

    func withLock<T>(_ body: () throws(PASIDStoreError) -> T) throws(PASIDStoreError) -> T {
        try set(Int16(F_WRLCK))
        defer { try? set(Int16(F_UNLCK)) }
        return try body()
    }

    private func set(_ type: Int16) throws(PASIDStoreError) {
        var lock = flock()
        lock.l_type = type
        lock.l_whence = Int16(SEEK_SET)
        while fcntl(fd.rawValue, Self.setLockWait, &lock) != 0 {
            guard errno == EINTR else { throw .storage("writer lock: \(String(cString: strerror(errno)))") }
        }
    }
}
