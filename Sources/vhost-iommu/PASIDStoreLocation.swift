import ArgumentParser
import Glibc
import Logging
import PASIDAllocators
import PASIDStore

/// Where the host-wide PASID store lives, shared by the daemon and the `pasid` admin commands.
///
/// One store per host: every daemon of the host, whoever runs it, uses the same well-known file unless
/// told otherwise. There is no per-user fallback, which would give daemons of different users different
/// stores and so hand out the same PASID twice on one host. A daemon that cannot use the store refuses
/// to start and says why (`StoreUnavailable`).
struct PASIDStoreLocation: ParsableArguments {
    @Option(name: .customLong("pasid-store"),
            help: "The PASID store: a SQLite file shared by every daemon of the host, or 'memory' for one private to this VM. Turns the PASID extension on. Default: \(PASIDStoreLocation.systemPath).")
    var path: String?

    @Option(name: .customLong("pasid-width"), help: "PASID width (1-20) when the store is created.")
    var width: Int?

    static let systemPath = "/var/lib/vhost-iommu/pasid.sqlite"

    /// The store file these options name (nil for a memory store).
    var file: String? { path == "memory" ? nil : (path ?? Self.systemPath) }

    /// Opens the store; a store file that cannot be opened or created throws `StoreUnavailable`.
    func open() throws -> any PASIDAllocator {
        guard let file else { return try InMemoryPASIDStore(width: width ?? maxPASIDWidth) }
        do {
            try Self.makeDirectories(for: file)
            return try SQLitePASIDStore(path: file, width: width)
        } catch {
            throw StoreUnavailable(path: file, reason: error)
        }
    }

    /// A store file this process cannot use: one line that says which file, why, and what to do.
    struct StoreUnavailable: Error, CustomStringConvertible {
        var path: String
        var reason: PASIDStoreError

        var description: String {
            let why: String = switch reason {
            case .storage(let message): message
            default: reason.description
            }
            return "cannot use the PASID store \(path) (\(why)); every daemon of a host shares one store, so run "
                + "them as a user that may write it (README, \"PASID store\"), or give this VM a private one with --pasid-store memory"
        }
    }

    /// `mkdir -p` of the file's folder.
    private static func makeDirectories(for path: String) throws(PASIDStoreError) {
        var prefix = path.hasPrefix("/") ? "" : "."
        for component in path.split(separator: "/").dropLast() {
            prefix += "/" + component
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw PASIDStoreError.storage("cannot create \(prefix): \(String(cString: strerror(errno)))")
            }
        }
    }
}
