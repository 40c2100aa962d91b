import Glibc
import SystemPackage
import VhostUser
import VhostUserEmbedded

/// Where the back-end a test drives runs: on a thread of its own behind real descriptors (a socket,
/// memfds, eventfds), or in the embedded driver, in memory, which every wait of the test side runs turn
/// by turn instead of letting time pass. The same front-end, memory and rings serve both.
public enum TestBackendSide: @unchecked Sendable {
    case posix
    case embedded(EmbeddedVhostUser)

    /// Embedded: runs the engine until a turn finds nothing to do. Posix: nothing (the back-end's
    /// thread runs by itself).
    public func settle() {
        if case .embedded(let driver) = self { driver.run() }
    }
}

/// A descriptor the test side passes to the back-end: a Posix descriptor it owns (closed with this
/// object, which can be shared), or a number the embedded host gave it. `rawValue` is what goes into a
/// message.
public final class TestDescriptor: @unchecked Sendable {
    public let rawValue: CInt
    private let owned: OwnedFileDescriptor?

    init(posix descriptor: FileDescriptor) {
        rawValue = descriptor.rawValue
        owned = OwnedFileDescriptor(descriptor)
    }

    init(embedded descriptor: HostDescriptor) {
        rawValue = descriptor.rawValue
        owned = nil
    }

    public var fileDescriptor: FileDescriptor { FileDescriptor(rawValue: rawValue) }
}

/// An eventfd of the test side (a kick, call or error descriptor): a real one, or the embedded host's.
public final class Doorbell: @unchecked Sendable {
    public let side: TestBackendSide
    public let descriptor: TestDescriptor
    private let event: EmbeddedEvent?

    public init(side: TestBackendSide) throws {
        self.side = side
        switch side {
        case .posix:
            descriptor = TestDescriptor(posix: try SystemCall.eventFD())
            event = nil
        case .embedded(let driver):
            let event = EmbeddedEvent()
            descriptor = TestDescriptor(embedded: driver.host.open(.event(event)))
            self.event = event
        }
    }

    public var rawValue: CInt { descriptor.rawValue }

    public func signal() {
        if let event { event.signal() } else { SystemCall.signal(descriptor.fileDescriptor) }
    }

    /// The count so far, cleared (0: not signalled).
    @discardableResult
    public func drain() -> UInt64 {
        if let event { return event.drain() }
        return SystemCall.drain(descriptor.fileDescriptor)
    }

    /// Whether it is signalled and not yet drained.
    public var isSignalled: Bool {
        if let event { return event.count > 0 }
        return SystemCall.isReadable(descriptor.fileDescriptor, within: 0)
    }

    /// Waits until the back-end signals it (consumed); embedded: runs the engine until it settles first.
    public func waitForSignal(timeout: Duration) -> Bool {
        if event != nil {
            side.settle()
            return drain() > 0
        }
        let deadline = ContinuousClock.now + timeout
        while true {
            if drain() > 0 { return true }
            guard ContinuousClock.now < deadline else { return false }
            _ = SystemCall.isReadable(descriptor.fileDescriptor, before: deadline)  // EINTR or a timeout: the loop re-checks
        }
    }
}
