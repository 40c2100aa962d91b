import CVhostUser
import Glibc
import Logging
import Synchronization
import SystemPackage

/// The front-end's socket and the back-end channel: reading and decoding messages, queuing and flushing
/// replies without blocking, and the messages the back-end sends on its own.
extension VhostUserBackend {
    // MARK: Socket I/O

    /// Reads and handles messages until the socket is empty (true), or until replies are pending or
    /// the connection ends (false).
    @discardableResult
    func readMessages() -> Bool {
        guard let fd = connection else { return false }
        return withUnsafeTemporaryAllocation(byteCount: decoder.maxPayloadSize + MessageHeader.size, alignment: 8) { buffer in
            // Stop reading while replies are pending: a front-end that does not read cannot make us queue without bound.
            while !disconnectRequested && outputOffset >= output.count {
                let want = decoder.bytesWanted
                var fds: [CInt] = []
                let n: Int
                do {
                    n = try SystemCall.receive(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), fds: &fds)
                } catch .wouldBlock {
                    return true
                } catch {
                    logger.error("socket receive failed: \(error)")
                    disconnectRequested = true
                    return false
                }
                if n == 0 {
                    for fd in fds { try? FileDescriptor(rawValue: fd).close() }
                    if decoder.isMidMessage { warnAboutInput("front-end disconnected in the middle of a message") }
                    disconnectRequested = true
                    return false
                }
                do {
                    try decoder.feed(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), descriptors: fds) { message in
                        handle(message)
                    }
                } catch {
                    warnAboutInput("protocol error, closing the connection: \(error)")
                    disconnectRequested = true
                }
            }
            return false
        }
    }

    func send(_ header: MessageHeader, _ payload: [UInt8]) {
        output.append(contentsOf: header.bytes)
        output.append(contentsOf: payload)
        flushOutput()
    }

    func flushOutput() {
        guard let fd = connection else { return }
        while outputOffset < output.count {
            let sent: Int
            do {
                sent = try output.withUnsafeBytes { bytes throws(Errno) in
                    try SystemCall.send(fd, UnsafeRawBufferPointer(rebasing: bytes[outputOffset...]))
                }
            } catch .wouldBlock {
                if output.count - outputOffset > Self.maxPendingOutput {
                    logger.error("front-end is not reading replies; closing the connection")
                    disconnectRequested = true
                } else if !waitingToWrite {
                    waitingToWrite = true
                    try? loop.modify(fd, token: Self.connectionToken, writable: true)
                }
                return
            } catch {
                logger.warning("socket send failed, closing the connection: \(error)")
                disconnectRequested = true
                return
            }
            outputOffset += sent
        }
        output.removeAll(keepingCapacity: true)
        outputOffset = 0
        if waitingToWrite {
            // Back to reading; epoll is level-triggered, so messages left unread show up again.
            waitingToWrite = false
            try? loop.modify(fd, token: Self.connectionToken, writable: false)
        }
    }

    // MARK: Back-end channel

    /// Asks the loop to tell the front-end to re-read the config space; safe from any thread.
    public func notifyConfigChange() {
        configChangePending.store(true, ordering: .releasing)
        loop.waker.wake()
    }

    /// Sends BACKEND_CONFIG_CHANGE_MSG on the back-end channel, if the front-end gave one.
    func sendConfigChange() {
        guard let channel = backendChannel?.descriptor else { return }
        let header = MessageHeader(request: BackendRequest.configChange.rawValue, flags: MessageHeader.version, size: 0)
        _ = header.bytes.withUnsafeBytes { try? SystemCall.send(channel, $0) }
    }
}
