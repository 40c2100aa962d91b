import Glibc
import SystemPackage

/// Sole owner of an open file descriptor: closed when the owner ends, unless released first.
public struct OwnedFileDescriptor: ~Copyable, Sendable {
    public let descriptor: FileDescriptor

    public init(_ descriptor: FileDescriptor) { self.descriptor = descriptor }
    public init(raw: CInt) { self.descriptor = FileDescriptor(rawValue: raw) }

    public var rawValue: CInt { descriptor.rawValue }

    /// Gives up ownership without closing.
    public consuming func release() -> FileDescriptor {
        let fd = descriptor
        discard self
        return fd
    }

    deinit { try? descriptor.close() }
}

/// Descriptors that arrived with one message: each is claimed by the handler that uses it;
/// whatever is left unclaimed is closed, so a front-end cannot leak descriptors into us.
public struct ReceivedDescriptors: ~Copyable {
    private var raw: [CInt]

    init(_ raw: [CInt]) { self.raw = raw }

    public var count: Int { raw.count }

    /// Takes ownership of the descriptor at `index`; the rest are closed with the message.
    public mutating func take(_ index: Int) -> OwnedFileDescriptor {
        let fd = raw[index]
        raw[index] = -1
        return OwnedFileDescriptor(raw: fd)
    }

    deinit {
        for fd in raw where fd >= 0 { try? FileDescriptor(rawValue: fd).close() }
    }
}
