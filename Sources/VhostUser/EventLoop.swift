import CVhostUser
import Glibc
import SystemPackage

/// epoll over the descriptors the engine watches. Each registration carries a token.
final class EventLoop {
    let epoll: OwnedFileDescriptor
    let wakeDescriptor: OwnedFileDescriptor
    private var events: UnsafeMutableBufferPointer<epoll_event>

    static let wakeToken: UInt64 = 1

    init() throws(Errno) {
        epoll = OwnedFileDescriptor(try SystemCall.epollCreate())
        wakeDescriptor = OwnedFileDescriptor(try SystemCall.eventFD())
        events = .allocate(capacity: 64)
        try add(wakeDescriptor.descriptor, token: Self.wakeToken)
    }

    deinit { events.deallocate() }

    /// Wakes `wait` from any thread, through the wake eventfd.
    var waker: Waker {
        let fd = wakeDescriptor.descriptor
        return Waker { SystemCall.signal(fd) }
    }

    func add(_ fd: FileDescriptor, token: UInt64, writable: Bool = false) throws(Errno) {
        try SystemCall.epollControl(epoll.descriptor, EPOLL_CTL_ADD, fd, events: events(writable), data: token)
    }

    /// Switches a descriptor between waiting to read and waiting to write. While writing it is not
    /// watched for input, so unread input cannot spin the loop (hang-ups are reported either way).
    func modify(_ fd: FileDescriptor, token: UInt64, writable: Bool) throws(Errno) {
        try SystemCall.epollControl(epoll.descriptor, EPOLL_CTL_MOD, fd, events: writable ? cvu_epollout : cvu_epollin, data: token)
    }

    func remove(_ fd: FileDescriptor) {
        try? SystemCall.epollControl(epoll.descriptor, EPOLL_CTL_DEL, fd, events: 0, data: 0)
    }

    private func events(_ writable: Bool) -> UInt32 {
        cvu_epollin | (writable ? cvu_epollout : 0)
    }

    /// Waits for events (-1: forever) and calls `body` with each ready token and its event bits.
    func wait(timeout: CInt, _ body: (UInt64, UInt32) -> Void) throws(Errno) {
        let n = try SystemCall.epollWait(epoll.descriptor, events, timeout: timeout)
        for i in 0..<n { body(events[i].data.u64, events[i].events) }
    }
}
