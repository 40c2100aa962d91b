/// Completions a device keeps back (`VhostUserDevice.completionMustWait`), and the descriptors the
/// loop watches for it so that it learns when they may go.
extension VhostUserEngine {
    /// Publishes every waiting completion the device now lets go, then carries on with its ring.
    func releaseWaitingCompletions() {
        for queue in queues where queue.waitingCompletion != nil && device.completionMayProceed(queue: queue.index) {
            completeWaiting(queue)
            if queue.started && queue.enabled { process(queue) }
        }
    }

    /// Writes the waiting used entry, publishes it, and calls the driver if it wants a call.
    func completeWaiting(_ queue: Virtqueue) {
        guard let (head, length) = queue.waitingCompletion else { return }
        queue.waitingCompletion = nil
        let previous = queue.usedIndex
        queue.pushUsed(head: head, length: length)
        queue.publishUsed()
        if queue.needsNotification(since: previous) { queue.notify(host: host) }
    }

    /// Brings the loop's watch list in line with the device's `watchedDescriptors`, or empties it while no
    /// front-end is connected. Everything is registered anew (this runs only after device requests, resets
    /// and connects): a descriptor number the device closed and reused must not be taken for the one
    /// epoll already dropped.
    func watchDeviceDescriptors() {
        for fd in watched { host.unwatch(fd) }
        watched = []
        guard isConnected else { return }
        for fd in device.watchedDescriptors {
            do {
                try host.watch(fd, token: Self.watchedTokenBase + UInt64(watched.count))
                watched.append(fd)
            } catch {
                logger.error("cannot watch the device's descriptor \(fd): \(error)")
            }
        }
    }
}
