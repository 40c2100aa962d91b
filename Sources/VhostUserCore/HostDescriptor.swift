/// A descriptor the front-end passed (a memory file, an eventfd, a socket), as the core sees it: a number
/// it never uses itself. The host (`VhostUserHost`) gives it meaning: a file descriptor in the Posix
/// layer, an in-memory object in the embedded driver.
public struct HostDescriptor: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32

    public init(rawValue: Int32) { self.rawValue = rawValue }

    public var description: String { "\(rawValue)" }
}

/// What closes descriptors for their owners (the host).
public protocol DescriptorCloser: AnyObject, Sendable {
    func close(_ descriptor: HostDescriptor)
}

/// Sole owner of one descriptor: closed through its host when the owner ends, unless released first.
public struct OwnedDescriptor: ~Copyable, Sendable {
    public let descriptor: HostDescriptor
    /// nil once released: then nothing closes it.
    private var closer: (any DescriptorCloser)?

    public init(_ descriptor: HostDescriptor, closer: any DescriptorCloser) {
        self.descriptor = descriptor
        self.closer = closer
    }

    /// Gives up ownership without closing.
    public consuming func release() -> HostDescriptor {
        closer = nil
        return descriptor
    }

    deinit { closer?.close(descriptor) }
}

/// Descriptors that arrived with one message: each is claimed by the handler that uses it;
/// whatever is left unclaimed is closed, so a front-end cannot leak descriptors into us.
public struct ReceivedDescriptors: ~Copyable {
    private var raw: [Int32]
    private let closer: any DescriptorCloser

    public init(_ raw: [Int32], closer: any DescriptorCloser) {
        self.raw = raw
        self.closer = closer
    }

    public var count: Int { raw.count }

    /// Takes ownership of the descriptor at `index`; the rest are closed with the message.
    public mutating func take(_ index: Int) -> OwnedDescriptor {
        let fd = raw[index]
        raw[index] = -1
        return OwnedDescriptor(HostDescriptor(rawValue: fd), closer: closer)
    }

    deinit {
        for fd in raw where fd >= 0 { closer.close(HostDescriptor(rawValue: fd)) }
    }
}
