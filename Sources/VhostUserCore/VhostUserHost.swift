/// What the OS-free engine needs from the place it runs in: the Posix layer (epoll, eventfds, mmap, a
/// Unix socket) or the embedded driver (all in memory, for deterministic tests and fuzzing). Every call
/// comes from the engine's thread. Tokens below `VhostUserEngine.firstToken` are the host's own.
public protocol VhostUserHost: DescriptorCloser {
    /// Maps `size` bytes of a memory descriptor at `offset`, shared with the front-end. The mapping
    /// must lie within what the descriptor holds (an access past a file's end raises SIGBUS).
    func map(_ descriptor: HostDescriptor, size: UInt64, offset: UInt64) throws(MemoryError) -> any MemoryMapping
    /// Signals an eventfd-like descriptor (a call, an error, or a kick the engine sends itself).
    func signal(_ descriptor: HostDescriptor)
    /// Consumes what made an eventfd-like descriptor readable.
    func drain(_ descriptor: HostDescriptor)
    /// Reports `descriptor` to the engine (`VhostUserEngine.ready(token:)`) whenever it is readable.
    func watch(_ descriptor: HostDescriptor, token: UInt64) throws(HostError)
    func unwatch(_ descriptor: HostDescriptor)
    /// Queues bytes for the front-end (a reply); never blocks.
    func sendToFrontend(_ bytes: [UInt8])
    /// Sends one message on the back-end channel, without blocking; dropped if it cannot go now.
    func sendOnBackendChannel(_ descriptor: HostDescriptor, _ bytes: [UInt8])
    /// Feeds the engine every message the front-end has already sent (`VhostUserEngine.receive`).
    /// False when that could not finish (replies pending, the connection ending).
    func receiveWaitingMessages() -> Bool
    /// The host's clock: polling windows, turn limits and the warnings' rate limit run on it.
    var now: ContinuousClock.Instant { get }
}

/// A host's failure to do what the engine asked, in its own words.
public struct HostError: Error, Hashable, Sendable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Guest memory a host mapped: valid until the mapping object goes (it unmaps then).
public protocol MemoryMapping: AnyObject, Sendable {
    var bytes: UnsafeMutableRawBufferPointer { get }
}

/// Wakes the engine's loop from any thread: for example when a fault is raised off the loop thread,
/// or to ask the loop to stop. The host decides how (an eventfd in the Posix layer).
public struct Waker: Sendable {
    private let body: @Sendable () -> Void

    public init(_ body: @escaping @Sendable () -> Void) { self.body = body }

    public func wake() { body() }
}
