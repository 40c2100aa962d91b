import Logging
import Synchronization
import VhostUserCore

/// The engine driven fully in memory, in the manner of swift-nio's `EmbeddedChannel`: feed it the
/// front-end's messages and write ring contents into guest memory, `step()` it, and read its replies,
/// used entries and signals. No threads, sockets or sleeps; time moves only through `host.advance(by:)`.
/// A turn is the Posix loop's turn: poll the request rings, handle what is ready (wake-ups, the
/// front-end's bytes, kicks and the device's descriptors), then finish the turn.
public final class EmbeddedVhostUser {
    public let host: EmbeddedHost
    public let engine: VhostUserEngine
    /// False after the engine asked for the connection to end (then it was reset, as on a disconnect),
    /// or after `disconnect()`, until `connect()`: the engine's own flag, which both set through it.
    public var isConnected: Bool { engine.isConnected }
    private var lastTurnEnded: ContinuousClock.Instant

    /// `host`: pass one when the device needs it first (descriptors of its own, for example).
    public init(device: any VhostUserDevice, host: EmbeddedHost = EmbeddedHost(), limits: VhostUserEngine.Limits = .init(),
                polling: AdaptivePolling = AdaptivePolling(maximumNanoseconds: 0),
                logger: Logger = EmbeddedVhostUser.quietLogger) {
        self.host = host
        engine = VhostUserEngine(device: device, limits: limits, polling: polling, logger: logger, host: host,
                                 waker: Waker { host.wakeRequested.store(true, ordering: .releasing) })
        host.engine = engine
        lastTurnEnded = host.now
        engine.connected()
    }

    /// A logger that says nothing (tests that want the engine's log pass their own).
    public static var quietLogger: Logger {
        var logger = Logger(label: "vhost-user-embedded")
        logger.logLevel = .critical
        return logger
    }

    // MARK: The front-end's side

    /// Queues bytes from the front-end with descriptors (each passed as SCM_RIGHTS would: the engine gets
    /// its own number for the same object). They reach the engine at the next `step()`.
    public func sendRaw(_ bytes: [UInt8], descriptors: [HostDescriptor] = []) {
        host.inbound.append((bytes, descriptors.map { host.pass($0) }))
    }

    /// Takes up to `count` bytes the engine wrote to the front-end.
    public func readOutbound(_ count: Int) -> [UInt8] {
        let taken = Array(host.outbound.prefix(count))
        host.outbound.removeFirst(taken.count)
        return taken
    }

    /// Ends the connection as a front-end that hangs up: the engine resets the device.
    public func disconnect() {
        guard isConnected else { return }
        host.dropInbound()
        engine.disconnected()
    }

    /// A new front-end connects.
    public func connect() {
        guard !isConnected else { return }
        host.outbound.removeAll()
        engine.connected()
    }

    // MARK: The loop

    /// One turn of the loop. Returns whether it found anything to do.
    @discardableResult
    public func step() -> Bool {
        guard isConnected else { return false }
        var polled = false
        if engine.startPolling() { polled = engine.polledRingsHaveWork || engine.stopPolling() }
        if polled { engine.resumeKicks() }
        engine.recordWait(nanoseconds: VhostUserEngine.nanoseconds(host.now - lastTurnEnded), polled: polled)
        if polled { engine.processPolledQueues() }
        var busy = polled
        if host.wakeRequested.exchange(false, ordering: .acquiringAndReleasing) {
            busy = true
            engine.woken()
        }
        if !host.inbound.isEmpty {
            busy = true
            _ = host.receiveWaitingMessages()
        }
        if !endIfAsked() {
            for token in host.readyTokens {
                busy = true
                engine.ready(token: token)
                if endIfAsked() { break }
            }
        }
        if isConnected {
            engine.finishTurn(checkedDescriptors: true)
            _ = endIfAsked()
        }
        lastTurnEnded = host.now
        return busy
    }

    /// Steps until a turn finds nothing to do, at most `maximumTurns` times; returns the turns taken.
    @discardableResult
    public func run(maximumTurns: Int = 64) -> Int {
        var turns = 0
        while turns < maximumTurns && isConnected {
            turns += 1
            if !step() { break }
        }
        return turns
    }

    /// What the Posix loop does when the engine asks for the connection to end.
    private func endIfAsked() -> Bool {
        guard isConnected else { return true }
        guard engine.disconnectRequested else { return false }
        disconnect()
        return true
    }
}
