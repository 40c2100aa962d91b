import Glibc
import Logging
import Synchronization
import SystemPackage
@_exported import VhostUserCore

/// The vhost-user back-end on Linux: the OS-free `VhostUserEngine` driven by an epoll loop, over a Unix
/// socket, eventfds and mmap'd guest memory (`PosixHost`). One thread runs it; from other threads only
/// `requestStop()`, `counters`, `availableChains(queue:)` and the engine's thread-safe members (`waker`,
/// `notifyConfigChange()`) may be used (atomics, a lock or an eventfd only), hence the unchecked `Sendable`.
public final class VhostUserBackend: @unchecked Sendable {
    public enum Outcome: Sendable, Equatable {
        case disconnected
        case stopped
    }

    public let engine: VhostUserEngine
    let loop: EventLoop
    let host: PosixHost
    let stopFlag = Atomic<Bool>(false)

    static let listenerToken: UInt64 = 3

    public init(device: any VhostUserDevice, limits: VhostUserEngine.Limits = .init(),
                polling: AdaptivePolling = AdaptivePolling(maximumNanoseconds: 0),
                logger: Logger = Logger(label: "vhost-user")) throws(Errno) {
        loop = try EventLoop()
        host = PosixHost(loop: loop)
        engine = VhostUserEngine(device: device, limits: limits, polling: polling, logger: logger, host: host, waker: loop.waker)
        host.engine = engine
    }

    /// The engine's counters; safe from any thread.
    public var counters: VhostUserEngine.Counters { engine.counters }

    /// Chains available on `queue` and not yet consumed; safe from any thread.
    public func availableChains(queue: Int) -> Int { engine.availableChains(queue: queue) }

    /// Asks the loop to return `.stopped` soon; safe from any thread or a signal-handling thread.
    public func requestStop() {
        stopFlag.store(true, ordering: .releasing)
        engine.waker.wake()
    }

    public var isStopRequested: Bool { stopFlag.load(ordering: .acquiring) }
}
