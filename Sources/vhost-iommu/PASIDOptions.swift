import ArgumentParser
import Glibc
import Logging
import PASIDStore

/// Where the host-wide PASID store lives, shared by the daemon and the `pasid` admin commands.
struct PASIDStoreLocation: ParsableArguments {
    @Option(name: .customLong("pasid-store"),
            help: "The host-wide PASID store: a SQLite file, or 'memory' for one private to this process. Default: /var/lib/vhost-iommu/pasid.sqlite, or a per-user path where that is not writable.")
    var path: String?

    @Option(name: .customLong("pasid-width"), help: "PASID width (1-20) when the store is created.")
    var width: Int?

    static let systemPath = "/var/lib/vhost-iommu/pasid.sqlite"

    /// The per-user fallback: $XDG_STATE_HOME/vhost-iommu, else ~/.local/state/vhost-iommu.
    static var userPath: String {
        if let state = getenv("XDG_STATE_HOME").map({ String(cString: $0) }), !state.isEmpty {
            return state + "/vhost-iommu/pasid.sqlite"
        }
        let home = getenv("HOME").map { String(cString: $0) } ?? "/tmp"
        return home + "/.local/state/vhost-iommu/pasid.sqlite"
    }

    /// Opens the store; the system path falls back to the per-user one with a warning.
    func open(logger: Logger?) throws -> any PASIDAllocator {
        if path == "memory" { return try InMemoryPASIDStore(width: width ?? maxPASIDWidth) }
        if let path { return try Self.openFile(path, width: width) }
        do {
            return try Self.openFile(Self.systemPath, width: width)
        } catch {
            logger?.warning("PASID store \(Self.systemPath) is not usable (\(error)); using \(Self.userPath)")
            return try Self.openFile(Self.userPath, width: width)
        }
    }

    private static func openFile(_ path: String, width: Int?) throws -> SQLitePASIDStore {
        try makeDirectories(for: path)
        return try SQLitePASIDStore(path: path, width: width)
    }

    /// `mkdir -p` of the file's folder.
    private static func makeDirectories(for path: String) throws {
        var prefix = ""
        for component in path.split(separator: "/").dropLast() {
            prefix += "/" + component
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw PASIDStoreError.storage("cannot create \(prefix): \(String(cString: strerror(errno)))")
            }
        }
    }
}
