import Glibc
import SystemPackage

/// Sole owner of an open file descriptor: closed when the owner ends, unless released first.
public struct OwnedFileDescriptor: ~Copyable, Sendable {
    public let descriptor: FileDescriptor

    public init(_ descriptor: FileDescriptor) { self.descriptor = descriptor }
    /// Takes over a descriptor the engine received (`ReceivedDescriptors.take`).
    public init(_ owned: consuming OwnedDescriptor) { self.descriptor = FileDescriptor(owned.release()) }

    public var rawValue: CInt { descriptor.rawValue }

    /// Gives up ownership without closing.
    public consuming func release() -> FileDescriptor {
        let fd = descriptor
        discard self
        return fd
    }

    deinit { try? descriptor.close() }
}
