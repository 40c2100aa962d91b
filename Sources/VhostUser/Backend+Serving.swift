import CVhostUser
import Glibc
import Logging
import Synchronization
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
            device.loopWoken()
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
        try loop.add(fd, token: Self.connectionToken)
        connection = fd
        disconnectRequested = false
        waitingToWrite = false
        watchDeviceDescriptors()
        defer {
            loop.remove(fd)
            connection = nil
            disconnectCleanup()
            _ = owned
        }
        var ready: [(UInt64, UInt32)] = []
        ready.reserveCapacity(64)
        var lastDescriptorCheck = ContinuousClock.now
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
                if polled { resumeKicks() }
                try loop.wait(timeout: polled ? 0 : -1) { ready.append(($0, $1)) }
                lastDescriptorCheck = ContinuousClock.now
            }
            if polling.maximum > 0 {
                polling.record(waited: Self.nanoseconds(ContinuousClock.now - waitStarted))
                record { polled ? ($0.polledTurns += 1) : ($0.blockingTurns += 1) }
            }
            if polled { for queue in queues where isPollable(queue) && queue.hasAvailable { process(queue) } }
            for (token, events) in ready {
                switch token {
                case EventLoop.wakeToken:
                    SystemCall.drain(loop.wakeDescriptor.descriptor)
                    device.loopWoken()
                case Self.connectionToken:
                    let hangup = events & (cvu_epollhup | cvu_epollerr) != 0
                    if events & cvu_epollout != 0 || hangup { flushOutput() }
                    if hangup && outputOffset < output.count {
                        // The front-end is gone with replies unread: nothing more can be said to it.
                        disconnectRequested = true
                    } else if events & cvu_epollin != 0 || hangup {
                        readMessages()
                    }
                default:
                    if token >= Self.watchedTokenBase {
                        watchedDescriptorReady(token: token)
                    } else if token >= Self.kickTokenBase, Int(token - Self.kickTokenBase) < queues.count {
                        kicked(queues[Int(token - Self.kickTokenBase)])
                    }
                }
                if disconnectRequested { return .disconnected }
            }
            releaseWaitingCompletions()
            // A ring anomaly counts only once the messages already sent are handled (a reset explains it).
            settleSuspectedRings()
            if disconnectRequested { return .disconnected }
            if device.wantsDisconnect {
                logger.error("closing the connection at the device's request")
                return .disconnected
            }
            // Event buffers and faults: faults raised off the loop wake it (and so a descriptor check).
            if checkDescriptors {
                serviceOnDemandQueues()
                publishAvailableCounts()
                if let dropped = inputWarnings.takeExpiredSuppressions(at: .now) {
                    logger.warning("\(dropped) more warnings about guest or front-end input were suppressed")
                }
            }
            if configChangePending.exchange(false, ordering: .acquiringAndReleasing) { sendConfigChange() }
        }
    }

    /// Spins on the request rings for up to the polling window, with the driver's kicks suppressed;
    /// true when a ring has work (then the loop does not block, and kicks stay off while it keeps
    /// finding work: turning them on and off per request would cost a fence and a cache line each).
    func pollRings() -> Bool {
        guard polling.window > 0, queues.contains(where: isPollable) else {
            resumeKicks()
            return false
        }
        do {
            for queue in queues where isPollable(queue) && !queue.kicksSuppressed { try queue.setKicks(enabled: false) }
            let started = ContinuousClock.now
            let deadline = started + .nanoseconds(Int64(polling.window))
            // Past yieldAfter, each check is followed by a sched_yield instead of a pause (AdaptivePolling).
            let yieldFrom = polling.yieldAfter.flatMap { $0 < polling.window ? started + .nanoseconds(Int64($0)) : nil }
            while true {
                if queues.contains(where: { isPollable($0) && $0.hasAvailable }) { return true }
                let now = ContinuousClock.now
                if now >= deadline { break }
                if let yieldFrom, now >= yieldFrom { sched_yield() } else { for _ in 0..<4 { cvu_cpu_relax() } }
            }
            // Kicks back on before blocking; entries that slipped in meanwhile count as found.
            var found = false
            for queue in queues where queue.kicksSuppressed { if try queue.setKicks(enabled: true) { found = true } }
            return found
        } catch {
            resumeKicks()
            return false  // the kick path meets the same ring error and stops the queue
        }
    }

    /// Turns kicks back on wherever polling had turned them off.
    func resumeKicks() {
        for queue in queues where queue.kicksSuppressed { _ = try? queue.setKicks(enabled: true) }
    }

    func isPollable(_ queue: Virtqueue) -> Bool {
        queue.isRunnable && queue.enabled && queue.isResolved && device.mode(ofQueue: queue.index) == .onKick
    }

    static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return seconds < 0 ? 0 : UInt64(clamping: seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
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
            logger.info("serving the front-end on descriptor \(fd.rawValue)")
            _ = try serve(connection: fd)
        case .listener(let path, let reconnect):
            let listener = try Listener(path: path)
            logger.info("listening on \(listener.path)")
            while let connection = try accept(listener) {
                logger.info("front-end connected")
                let outcome = try serve(connection: connection)
                if outcome == .stopped || !reconnect { break }
                logger.info("waiting for the next front-end")
            }
        }
    }
}
