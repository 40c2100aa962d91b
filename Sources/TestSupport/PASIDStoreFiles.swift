import Glibc

/// A path for a PASID store of one test's own, under /tmp (unique per process and call).
public func temporaryStorePath() -> String {
    "/tmp/vhost-iommu-pasid-test-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).sqlite"
}

/// Removes a store file and its WAL, shared-memory and lock files.
public func removeStore(_ path: String) {
    for suffix in ["", "-wal", "-shm", ".lock"] { unlink(path + suffix) }
}
