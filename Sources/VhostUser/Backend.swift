import Glibc
import Logging
import Synchronization
import SystemPackage
@_exported import VhostUserCore

/// The vhost-user back-end on Linux: the OS-free `VhostUserEngine` driven by an epoll loop, over a Unix
/// socket, eventfds and mmap'd guest memory (`PosixHost`). One thread runs it; from other threads only
/// `waker`, `requestStop()`, `notifyConfigChange()`, `counters` and `availableChains(queue:)` may be used
/// (they touch atomics, a lock or an eventfd only), hence the unchecked `Sendable`.
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

    public var device: any VhostUserDevice { engine.device }
    public var limits: VhostUserEngine.Limits { engine.limits }
    public var counters: VhostUserEngine.Counters { engine.counters }
    public var polling: AdaptivePolling { engine.polling }
    public var logger: Logger {
        get { engine.logger }
        set { engine.logger = newValue }
    }

    /// Chains available on `queue` and not yet consumed; safe from any thread.
    public func availableChains(queue: Int) -> Int { engine.availableChains(queue: queue) }

    /// Wakes the loop from any thread (for example after the device queued an event).
    public var waker: Waker { engine.waker }

    /// Asks the loop to return `.stopped` soon; safe from any thread or a signal-handling thread.
    public func requestStop() {
        stopFlag.store(true, ordering: .releasing)
        engine.waker.wake()
    }

    public var isStopRequested: Bool { stopFlag.load(ordering: .acquiring) }

    /// The device status as GET_STATUS reports it (with DEVICE_NEEDS_RESET after a ring error).
    public var deviceStatus: UInt8 { engine.deviceStatus }

    /// Asks the loop to tell the front-end to re-read the config space; safe from any thread.
    public func notifyConfigChange() { engine.notifyConfigChange() }
}
