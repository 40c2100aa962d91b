/// The rings: kicks, starting a ring, ring errors (suspected until the front-end's messages are handled),
/// turns of chains handed to the device, event queues served on demand, and counts for other threads.
extension VhostUserEngine {
    // MARK: Queues

    func kicked(_ queue: Virtqueue) {
        guard let kick = queue.kick?.descriptor else { return }
        host.drain(kick)
        if !queue.started { start(queue) }
        process(queue)
    }

    func start(_ queue: Virtqueue) {
        queue.started = true
        guard queue.isRunnable else { return }
        do {
            try queue.resolve(in: memory)
            queue.loadUsedIndex()
        } catch {
            ringUnusable(queue, error)
        }
        logger.debug("queue \(queue.index) started", metadata: ["base": "\(queue.lastAvailIndex)"])
    }

    /// A ring whose contents look corrupt is only suspected at first: the front-end may have sent a reset
    /// or a stop before rewriting the ring, and that message may still be waiting in the socket.
    func ringFailed(_ queue: Virtqueue, _ error: RingError) {
        queue.suspectedError = (error, queue.generation)
    }

    /// A ring that what the front-end set up cannot serve (its addresses, the memory table): the message
    /// that made it so has been handled, so there is nothing to wait for; it stops now.
    func ringUnusable(_ queue: Virtqueue, _ error: RingError) {
        record { $0.ringErrors += 1 }  // counted before the error eventfd tells anyone
        queue.markBroken(error, host: host)
        warnAboutInput("queue \(queue.index) stopped until reset: \(error)")
    }

    /// Handles every message waiting in the socket, then stops each queue whose ring error no
    /// message explained (the ring is the same one, and still running). With replies pending the
    /// socket is not read; the queues stay suspended until a later turn gets through.
    func settleSuspectedRings() {
        guard queues.contains(where: { $0.suspectedError != nil }) else { return }
        guard host.receiveWaitingMessages() else { return }
        for queue in queues {
            guard let (error, generation) = queue.suspectedError else { continue }
            queue.suspectedError = nil
            if generation == queue.generation && queue.started {
                ringUnusable(queue, error)
            } else {
                record { $0.ringErrorsExplained += 1 }
                logger.debug("queue \(queue.index): ring anomaly explained by a later message: \(error)")
                if queue.started && queue.enabled { process(queue) }
            }
        }
    }

    /// Handles what the driver made available on `queue`, then notifies the driver once if it wants it.
    /// The turn goes in batches (one device call each, so one lock hold in a device that locks per
    /// call) and ends when the ring is empty, or after `chainBudget` chains or `turnTimeLimit`.
    func process(_ queue: Virtqueue) {
        // A disabled ring is left alone: completing its chains with length 0 would fail the guest's
        // requests and return its event buffers empty (QEMU kicks before it enables). Enabling it
        // processes what is pending (`resumeIfPending`).
        guard queue.isRunnable, queue.enabled else { return }
        if !queue.isResolved {
            do { try queue.resolve(in: memory) } catch { ringUnusable(queue, error); return }
        }
        // Locals, not properties, inside the loop: each read of a class property costs a retain.
        let device = self.device
        let memory = self.memory
        let host = self.host
        let onDemand = device.mode(ofQueue: queue.index) == .onDemand
        let previousUsed = queue.usedIndex
        var handled = 0
        var ringError: RingError?
        var turnOver = false  // the ring is empty, or a completion waits

        /// Pops chains until none is left (with kicks re-armed) or the batch is full; refused chains
        /// complete with used length 0, valid ones go to `handle`.
        func drainBatch(_ handle: (ChainReadable, ChainWritable) -> Int) {
            let batchEnd = handled + Self.lockBatchChains
            let walkedAtStart = queue.descriptorsWalked
            do {
                while true {
                    while handled < batchEnd && queue.descriptorsWalked &- walkedAtStart < Self.lockBatchDescriptors {
                        if onDemand && !device.hasPendingWork(queue: queue.index) { break }
                        guard let (head, chainError) = try queue.popChain(memory: memory) else { break }
                        handled += 1
                        var length = 0
                        if let chainError {
                            queue.countBadChain()
                            record { $0.badChains += 1 }
                            warnAboutInput("queue \(queue.index): bad chain at head \(head): \(chainError)")
                        } else {
                            length = queue.withChain(handle)
                            if !onDemand && device.completionMustWait(queue: queue.index) {
                                // Head-of-line: this completion and every later chain wait for the device.
                                queue.waitingCompletion = (head, UInt32(clamping: length))
                                queue.publishUsed()
                                turnOver = true
                                return
                            }
                        }
                        queue.pushUsed(head: head, length: UInt32(clamping: length))
                        if handled % Self.usedBatch == 0 { queue.publishUsed() }
                    }
                    queue.publishUsed()
                    if handled >= batchEnd || queue.descriptorsWalked &- walkedAtStart >= Self.lockBatchDescriptors { return }
                    guard try queue.armKick() else { turnOver = true; return }
                    if onDemand && !device.hasPendingWork(queue: queue.index) { turnOver = true; return }
                }
            } catch {
                queue.publishUsed()  // what completed before the ring error stands
                ringError = error
            }
        }

        let turnStarted = host.now
        while true {
            if onDemand {
                // Per chain: `hasPendingWork` asks the device between chains.
                drainBatch { readable, writable in device.process(queue: queue.index, readable: readable, writable: writable) }
            } else {
                device.processChains(queue: queue.index, drainBatch)
            }
            if turnOver || ringError != nil { break }
            if handled >= Self.chainBudget || host.now - turnStarted >= Self.turnTimeLimit {
                // Let the socket and other queues run; come back through our own kick.
                if let kick = queue.kick?.descriptor { host.signal(kick) }
                break
            }
        }
        if let ringError {
            ringFailed(queue, ringError)
            return
        }
        if queue.needsNotification(since: previousUsed) { queue.notify(host: host) }
    }

    func serviceOnDemandQueues() {
        for queue in queues where queue.isRunnable && queue.enabled
            && device.mode(ofQueue: queue.index) == .onDemand && device.hasPendingWork(queue: queue.index) {
            process(queue)
        }
    }

    /// Refreshes every ring's pointers after a memory-table change; a started ring that no longer
    /// lies in guest memory stops with a ring error.
    func memoryChanged() {
        for queue in queues where !queue.isBroken {
            if queue.started {
                do { try queue.resolve(in: memory) } catch { ringUnusable(queue, error) }
            } else {
                queue.unresolve()
            }
        }
    }

    func publishAvailableCounts() {
        available.withLock { counts in
            for queue in queues {
                counts[queue.index] = queue.isRunnable ? ((try? queue.pendingCount()) ?? 0) : 0
            }
        }
    }
}
