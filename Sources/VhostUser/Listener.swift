import Glibc
import SystemPackage

public enum ListenError: Error, Hashable, CustomStringConvertible {
    case pathInUse(String)
    case notASocket(String)
    case system(String, Errno)

    public var description: String {
        switch self {
        case .pathInUse(let path): "\(path): another back-end is listening there"
        case .notASocket(let path): "\(path): exists and is not a socket"
        case .system(let what, let errno): "\(what): \(errno)"
        }
    }
}

/// A listening UNIX socket, created with mode 0600. A stale socket file (nobody listening) is
/// replaced; a live one or a non-socket file is left alone and reported. The socket is bound under a
/// temporary name and renamed into place once it listens, so a client never finds the path without a
/// listener behind it.
public struct Listener: ~Copyable {
    public let socket: OwnedFileDescriptor
    public let path: String

    public init(path: String) throws(ListenError) {
        if let info = try? FilePath(path).stat(followTargetSymlink: false) {  // lstat(2): a symlink is not a socket
            guard info.type == .socket else { throw .notASocket(path) }
            if Self.isLive(path) { throw .pathInUse(path) }
        }
        let fd: FileDescriptor
        do { fd = try SystemCall.socket(AF_UNIX, CInt(SOCK_STREAM.rawValue)) } catch { throw .system("socket", error) }
        let owned = OwnedFileDescriptor(fd)
        // umask decides the mode bind gives the file: 0600 from the start, with no window.
        let temporary = "\(path).\(getpid()).tmp"
        unlink(temporary)
        let oldMask = umask(0o177)
        defer { umask(oldMask) }
        do {
            try SystemCall.bind(fd, path: temporary)
            try SystemCall.listen(fd, backlog: 1)
        } catch {
            unlink(temporary)
            throw .system("bind/listen \(path)", error)
        }
        guard rename(temporary, path) == 0 else {
            let error = Errno(rawValue: errno)
            unlink(temporary)
            throw .system("rename to \(path)", error)
        }
        socket = owned
        self.path = path
    }

    private static func isLive(_ path: String) -> Bool {
        guard let probe = try? SystemCall.socket(AF_UNIX, CInt(SOCK_STREAM.rawValue)) else { return false }
        defer { try? probe.close() }
        do {
            try SystemCall.connect(probe, path: path)
            return true
        } catch {
            return false
        }
    }

    deinit { unlink(path) }
}
