import CVhostUser
import Glibc
import Logging
import SystemPackage

/// The engine's host on Linux: eventfds, epoll, mmap'd guest memory, and the front-end's Unix socket
/// read and written without blocking. Only the event-loop thread uses it.
final class PosixHost: VhostUserHost, @unchecked Sendable {
    let loop: EventLoop
    /// The engine this host feeds (set right after both exist; the engine owns the host).
    unowned(unsafe) var engine: VhostUserEngine!
    var logger: Logger { engine.logger }

    /// The connection being served, and replies not yet written to it.
    var connection: FileDescriptor?
    var output: [UInt8] = []
    var outputOffset = 0
    /// Whether the connection is watched for writability (replies pending) instead of input.
    var waitingToWrite = false
    /// Replies the front-end has not read yet; beyond this it is considered stuck and dropped.
    static let maxPendingOutput = 64 * 1024
    static let connectionToken: UInt64 = 2

    init(loop: EventLoop) { self.loop = loop }

    var now: ContinuousClock.Instant { .now }

    func close(_ descriptor: HostDescriptor) { try? FileDescriptor(descriptor).close() }

    func signal(_ descriptor: HostDescriptor) { SystemCall.signal(FileDescriptor(descriptor)) }

    func drain(_ descriptor: HostDescriptor) { SystemCall.drain(FileDescriptor(descriptor)) }

    func watch(_ descriptor: HostDescriptor, token: UInt64) throws(HostError) {
        do { try loop.add(FileDescriptor(descriptor), token: token) } catch { throw HostError("epoll: \(error)") }
    }

    func unwatch(_ descriptor: HostDescriptor) { loop.remove(FileDescriptor(descriptor)) }

    func map(_ descriptor: HostDescriptor, size: UInt64, offset: UInt64) throws(MemoryError) -> any MemoryMapping {
        try SharedMemoryMapping(FileDescriptor(descriptor), size: size, offset: offset)
    }

    func sendOnBackendChannel(_ descriptor: HostDescriptor, _ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { try? SystemCall.send(FileDescriptor(descriptor), $0, nonBlocking: true) }
    }

    func receiveWaitingMessages() -> Bool {
        guard connection != nil else { return true }  // no socket: nothing can be waiting
        return readMessages()
    }

    // MARK: The front-end's socket

    /// Reads and feeds messages until the socket is empty (true), or until replies are pending or the
    /// connection ends (false).
    @discardableResult
    func readMessages() -> Bool {
        guard let fd = connection else { return false }
        return withUnsafeTemporaryAllocation(byteCount: engine.largestMessage, alignment: 8) { buffer in
            // Stop reading while replies are pending: a front-end that does not read cannot make us queue without bound.
            while !engine.disconnectRequested && !hasUnsentReplies {
                let want = min(engine.bytesWanted, buffer.count)
                var fds: [CInt] = []
                let n: Int
                do {
                    n = try SystemCall.receive(fd, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]), fds: &fds)
                } catch .wouldBlock {
                    return true
                } catch {
                    logger.error("socket receive failed: \(error)")
                    engine.transportFailed()
                    return false
                }
                if n == 0 {
                    for fd in fds { try? FileDescriptor(rawValue: fd).close() }
                    engine.endOfStream()
                    return false
                }
                engine.receive(UnsafeRawBufferPointer(rebasing: buffer[0..<n]), descriptors: fds)
            }
            return false
        }
    }

    func sendToFrontend(_ bytes: [UInt8]) {
        output.append(contentsOf: bytes)
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
                    engine.transportFailed()
                } else if !waitingToWrite {
                    waitingToWrite = true
                    try? loop.modify(fd, token: Self.connectionToken, writable: true)
                }
                return
            } catch {
                logger.warning("socket send failed, closing the connection: \(error)")
                engine.transportFailed()
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

    var hasUnsentReplies: Bool { outputOffset < output.count }

    /// A new connection: nothing pending from the last one.
    func begin(_ fd: FileDescriptor) {
        end()
        connection = fd
    }

    func end() {
        connection = nil
        output = []
        outputOffset = 0
        waitingToWrite = false
    }
}

extension FileDescriptor {
    /// The Posix meaning of a descriptor the engine holds.
    public init(_ descriptor: HostDescriptor) { self.init(rawValue: descriptor.rawValue) }
}

extension HostDescriptor {
    public init(_ descriptor: FileDescriptor) { self.init(rawValue: descriptor.rawValue) }
}
