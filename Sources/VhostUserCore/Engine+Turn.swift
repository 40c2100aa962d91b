/// What a driver (the Posix event loop, the embedded driver) calls, turn by turn: bytes from the
/// front-end, descriptors that became ready, the polling of the request rings, and the end of a turn.
extension VhostUserEngine {
    // MARK: Input

    /// How many bytes the message in progress still needs: a reader that asks for no more never mixes
    /// two messages' descriptors.
    public var bytesWanted: Int { decoder.bytesWanted }
    /// The largest message the decoder accepts, header included: what a driver's read buffer must hold.
    public var largestMessage: Int { decoder.maxPayloadSize + MessageHeader.size }

    /// Feeds bytes from the front-end (and the descriptors that came with them); handles every message
    /// they complete. A fatal protocol error asks for the connection to end (`disconnectRequested`).
    public func receive(_ bytes: UnsafeRawBufferPointer, descriptors: [Int32]) {
        do {
            try decoder.feed(bytes, descriptors: descriptors) { message in handle(message) }
        } catch {
            warnAboutInput("protocol error, closing the connection: \(error)")
            disconnectRequested = true
        }
    }

    /// The host can no longer talk to the front-end (a send or receive failed, or it stopped reading
    /// replies): the connection ends like after a protocol error.
    public func transportFailed() { disconnectRequested = true }

    /// The front-end's stream ended.
    public func endOfStream() {
        if decoder.isMidMessage { warnAboutInput("front-end disconnected in the middle of a message") }
        disconnectRequested = true
    }

    /// A descriptor the engine asked its host to watch is readable.
    public func ready(token: UInt64) {
        if token >= Self.watchedTokenBase {
            let index = Int(token - Self.watchedTokenBase)
            if index < watched.count { device.watchedDescriptorReady(watched[index]) }
        } else if token >= Self.kickTokenBase, token - Self.kickTokenBase < UInt64(queues.count) {
            kicked(queues[Int(token - Self.kickTokenBase)])
        }
    }

    /// Another thread woke the loop (`waker`): the device runs what it queued for the loop thread.
    public func woken() { device.loopWoken() }

    // MARK: Polling

    /// Turns the driver's kicks off on every ring the loop may poll; false when there is nothing to poll
    /// now (polling off, the window closed, no runnable request ring), with kicks back on.
    public func startPolling() -> Bool {
        guard polling.window > 0, queues.contains(where: isPollable) else {
            resumeKicks()
            return false
        }
        do {
            for queue in queues where isPollable(queue) && !queue.kicksSuppressed { try queue.setKicks(enabled: false) }
            return true
        } catch {
            resumeKicks()
            return false  // the kick path meets the same ring error and stops the queue
        }
    }

    /// Whether a polled ring has work: one acquire load per ring, nothing validated.
    public var polledRingsHaveWork: Bool { queues.contains { isPollable($0) && $0.hasAvailable } }

    /// Ends a poll that found nothing: kicks back on; true if entries slipped in meanwhile (they count as found).
    public func stopPolling() -> Bool {
        var found = false
        for queue in queues where queue.kicksSuppressed {
            if (try? queue.setKicks(enabled: true)) == true { found = true }
        }
        return found
    }

    /// Turns kicks back on wherever polling had turned them off.
    public func resumeKicks() { _ = stopPolling() }

    /// Adjusts the polling window after a wait of `nanoseconds` (poll and block together) that ended in
    /// work found by polling or not.
    public func recordWait(nanoseconds: UInt64, polled: Bool) {
        guard polling.maximum > 0 else { return }
        polling.record(waited: nanoseconds)
        record { polled ? ($0.polledTurns += 1) : ($0.blockingTurns += 1) }
    }

    /// Processes every polled ring that has work.
    public func processPolledQueues() {
        for queue in queues where isPollable(queue) && queue.hasAvailable { process(queue) }
    }

    func isPollable(_ queue: Virtqueue) -> Bool {
        queue.isRunnable && queue.enabled && queue.isResolved && device.mode(ofQueue: queue.index) == .onKick
    }

    // MARK: End of a turn

    /// What follows the ready descriptors of a turn: completions the device now lets go, ring anomalies
    /// settled against the messages already sent, the device's wish to disconnect, and (when the driver
    /// checked its descriptors this turn) event queues, counts for other threads and rate-limit notices.
    public func finishTurn(checkedDescriptors: Bool) {
        releaseWaitingCompletions()
        // A ring anomaly counts only once the messages already sent are handled (a reset explains it).
        settleSuspectedRings()
        if disconnectRequested { return }
        if device.wantsDisconnect {
            logger.error("closing the connection at the device's request")
            disconnectRequested = true
            return
        }
        // Event buffers and faults: faults raised off the loop wake it (and so a descriptor check).
        if checkedDescriptors {
            serviceOnDemandQueues()
            publishAvailableCounts()
            if let dropped = inputWarnings.takeExpiredSuppressions(at: host.now) {
                logger.warning("\(dropped) more warnings about guest or front-end input were suppressed")
            }
        }
        if configChangePending.exchange(false, ordering: .acquiringAndReleasing) { sendConfigChange() }
    }

    /// A non-negative duration in whole nanoseconds (a negative one is 0), as `recordWait` takes it.
    public static func nanoseconds(_ duration: Duration) -> UInt64 {
        let (seconds, attoseconds) = duration.components
        return seconds < 0 ? 0 : UInt64(clamping: seconds) &* 1_000_000_000 &+ UInt64(attoseconds / 1_000_000_000)
    }
}
