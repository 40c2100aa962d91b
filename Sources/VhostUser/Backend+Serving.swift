import CVhostUser
import Glibc
import SystemPackage

/// The event loop of one connection: waiting, ring polling, and dispatch of what became ready.
extension VhostUserBackend {
    // MARK: Serving

    /// Waits for a front-end on `listener`; nil when a stop was requested first.
    public func accept(_ listener: borrowing Listener) throws(Errno) -> FileDescriptor? {
        try loop.add(listener.socket.descriptor, token: Self.listenerToken)
        defer { loop.remove(listener.socket.descriptor) }
        while !isStopRequested {
            var ready = false
            try loop.wait(timeout: -1) { token, _ in if token == Self.listenerToken { ready = true } }
            SystemCall.drain(loop.wakeDescriptor.descriptor)
            engine.woken()
            if ready, !isStopRequested {
                do { return try SystemCall.accept(listener.socket.descriptor) } catch .wouldBlock { continue }
            }
        }
        return nil
    }

    /// Serves one connected front-end until it disconnects or a stop is requested.
    /// The descriptor is closed on return, and the device is reset (a disconnect resets it).
    public func serve(connection fd: FileDescriptor) throws(Errno) -> Outcome {
        let owned = OwnedFileDescriptor(fd)
        try SystemCall.setNonBlocking(fd)
        try loop.add(fd, token: PosixHost.connectionToken)
        host.begin(fd)
        engine.connected()
        defer {
            loop.remove(fd)
            host.end()
            engine.disconnected()
            _ = owned
        }
        var ready: [(UInt64, UInt32)] = []
        ready.reserveCapacity(64)
        var lastDescriptorCheck = ContinuousClock.now
        func ending() -> Bool { engine.disconnectRequested }
        while true {
            if isStopRequested { return .stopped }
            ready.removeAll(keepingCapacity: true)
            let waitStarted = ContinuousClock.now
            let polled = pollRings()
            // After a poll that found work, the other descriptors (socket, wake-ups) are checked at most
            // every 50 µs: a syscall per request would be a good part of the request's cost. Kicks are
            // back on first, so that no message is handled while a ring tells the driver not to kick.
            let checkDescriptors = !polled || waitStarted - lastDescriptorCheck >= .microseconds(50)
            if checkDescriptors {
                if polled { engine.resumeKicks() }
                try loop.wait(timeout: polled ? 0 : -1) { ready.append(($0, $1)) }
                lastDescriptorCheck = ContinuousClock.now
            }
            if engine.polling.maximum > 0 {
                engine.recordWait(nanoseconds: VhostUserEngine.nanoseconds(ContinuousClock.now - waitStarted), polled: polled)
            }
            if polled { engine.processPolledQueues() }
            for (token, events) in ready {
                switch token {
                case EventLoop.wakeToken:
                    SystemCall.drain(loop.wakeDescriptor.descriptor)
                    engine.woken()
                case PosixHost.connectionToken:
                    let hangup = events & (cvu_epollhup | cvu_epollerr) != 0
                    if events & cvu_epollout != 0 || hangup { host.flushOutput() }
                    if hangup && host.hasUnsentReplies {
                        // The front-end is gone with replies unread: nothing more can be said to it.
                        engine.transportFailed()
                    } else if events & cvu_epollin != 0 || hangup {
                        host.readMessages()
                    }
                default:
                    engine.ready(token: token)
                }
                if ending() { return .disconnected }
            }
            engine.finishTurn(checkedDescriptors: checkDescriptors)
            if ending() { return .disconnected }
        }
    }

    /// Spins on the request rings for up to the polling window, with the driver's kicks suppressed;
    /// true when a ring has work (then the loop does not block, and kicks stay off while it keeps
    /// finding work: turning them on and off per request would cost a fence and a cache line each).
    func pollRings() -> Bool {
        guard engine.startPolling() else { return false }
        let started = ContinuousClock.now
        let deadline = started + .nanoseconds(Int64(engine.polling.window))
        // Past yieldAfter, each check is followed by a sched_yield instead of a pause (AdaptivePolling).
        let yieldFrom = engine.polling.yieldAfter.flatMap { $0 < engine.polling.window ? started + .nanoseconds(Int64($0)) : nil }
        while true {
            if engine.polledRingsHaveWork { return true }
            let now = ContinuousClock.now
            if now >= deadline { break }
            if let yieldFrom, now >= yieldFrom { sched_yield() } else { for _ in 0..<4 { cvu_cpu_relax() } }
        }
        // Kicks back on before blocking; entries that slipped in meanwhile count as found.
        return engine.stopPolling()
    }
}

extension VhostUserBackend {
    /// Where the front-end comes from: a listening socket (QEMU connects, and may connect again after a
    /// disconnect), or one already connected descriptor (a launcher passed it).
    public enum FrontendSource {
        case listener(path: String, reconnect: Bool)
        case connected(FileDescriptor)
    }

    /// Serves front-ends from `source` until a stop is requested, the only connection ends, or (with
    /// `reconnect` off) the first one does. Each disconnect resets the device.
    public func run(_ source: FrontendSource) throws {
        switch source {
        case .connected(let fd):
            engine.logger.info("serving the front-end on descriptor \(fd.rawValue)")
            _ = try serve(connection: fd)
        case .listener(let path, let reconnect):
            let listener = try Listener(path: path)
            engine.logger.info("listening on \(listener.path)")
            while let connection = try accept(listener) {
                engine.logger.info("front-end connected")
                let outcome = try serve(connection: connection)
                if outcome == .stopped || !reconnect { break }
                engine.logger.info("waiting for the next front-end")
            }
        }
    }
}
