import CVhostUser
import Glibc
import SystemPackage

/// One thin wrapper per system call: retries EINTR, turns -1 into a typed `Errno`.
public enum SystemCall {
    @inline(__always)
    public static func retrying<T: FixedWidthInteger>(_ body: () -> T) throws(Errno) -> T {
        while true {
            let result = body()
            if result != -1 { return result }
            let error = Errno(rawValue: errno)
            if error != .interrupted { throw error }
        }
    }

    public static func socket(_ domain: CInt, _ type: CInt) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try retrying { Glibc.socket(domain, type | CInt(SOCK_CLOEXEC.rawValue), 0) })
    }

    public static func socketPair() throws(Errno) -> (FileDescriptor, FileDescriptor) {
        var fds: [CInt] = [-1, -1]
        _ = try retrying { Glibc.socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue) | CInt(SOCK_CLOEXEC.rawValue), 0, &fds) }
        return (FileDescriptor(rawValue: fds[0]), FileDescriptor(rawValue: fds[1]))
    }

    /// Calls `body` with a `sockaddr_un` for `path`; throws ENAMETOOLONG when it does not fit.
    public static func withUnixAddress<R>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> R) throws(Errno) -> R {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard bytes.count < capacity else { throw .fileNameTooLong }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    public static func bind(_ fd: FileDescriptor, path: String) throws(Errno) {
        let result = try withUnixAddress(path) { Glibc.bind(fd.rawValue, $0, $1) }
        if result == -1 { throw Errno(rawValue: errno) }
    }

    public static func connect(_ fd: FileDescriptor, path: String) throws(Errno) {
        let result = try withUnixAddress(path) { Glibc.connect(fd.rawValue, $0, $1) }
        if result == -1 { throw Errno(rawValue: errno) }
    }

    public static func listen(_ fd: FileDescriptor, backlog: CInt) throws(Errno) {
        _ = try retrying { Glibc.listen(fd.rawValue, backlog) }
    }

    public static func accept(_ fd: FileDescriptor) throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try retrying { cvu_accept_cloexec(fd.rawValue) })
    }

    public static func setNonBlocking(_ fd: FileDescriptor) throws(Errno) {
        let flags = try retrying { fcntl(fd.rawValue, F_GETFL) }
        _ = try retrying { fcntl(fd.rawValue, F_SETFL, flags | O_NONBLOCK) }
    }

    /// Receives into `buffer` and appends any SCM_RIGHTS descriptors to `fds`.
    /// Returns the byte count (0 at end of stream). Truncated control data is an error (EMSGSIZE),
    /// after the descriptors that did arrive are closed.
    public static func receive(_ fd: FileDescriptor, into buffer: UnsafeMutableRawBufferPointer, fds: inout [CInt]) throws(Errno) -> Int {
        let maxFDs = 16
        let controlSize = cvu_cmsg_space(maxFDs * MemoryLayout<CInt>.size)
        return try withUnsafeTemporaryAllocation(byteCount: controlSize, alignment: MemoryLayout<cmsghdr>.alignment) { control throws(Errno) -> Int in
            var iov = iovec(iov_base: buffer.baseAddress, iov_len: buffer.count)
            var message = msghdr()
            let received: Int = try withUnsafeMutablePointer(to: &iov) { iovPointer throws(Errno) -> Int in
                message.msg_iov = iovPointer
                message.msg_iovlen = 1
                message.msg_control = control.baseAddress
                message.msg_controllen = controlSize
                return try retrying { Glibc.recvmsg(fd.rawValue, &message, CInt(MSG_CMSG_CLOEXEC)) }
            }
            var arrived: [CInt] = []
            var header = cvu_cmsg_firsthdr(&message)
            while let h = header {
                if h.pointee.cmsg_level == SOL_SOCKET && h.pointee.cmsg_type == SCM_RIGHTS {
                    let count = (Int(h.pointee.cmsg_len) - cvu_cmsg_len(0)) / MemoryLayout<CInt>.size
                    let data = UnsafeRawPointer(cvu_cmsg_data(h)!)
                    for i in 0..<count { arrived.append(data.loadUnaligned(fromByteOffset: i * 4, as: CInt.self)) }
                }
                header = cvu_cmsg_nxthdr(&message, h)
            }
            if message.msg_flags & CInt(MSG_CTRUNC) != 0 {
                for fd in arrived { try? FileDescriptor(rawValue: fd).close() }
                throw .messageTooLong
            }
            fds.append(contentsOf: arrived)
            return received
        }
    }

    /// Sends `bytes`, attaching `fds` as SCM_RIGHTS when there are any. Returns bytes sent.
    /// `nonBlocking`: this send never waits, whatever the socket's own mode (MSG_DONTWAIT).
    public static func send(_ fd: FileDescriptor, _ bytes: UnsafeRawBufferPointer, fds: [CInt] = [],
                            nonBlocking: Bool = false) throws(Errno) -> Int {
        let controlSize = fds.isEmpty ? 0 : cvu_cmsg_space(fds.count * MemoryLayout<CInt>.size)
        return try withUnsafeTemporaryAllocation(byteCount: max(controlSize, 1), alignment: MemoryLayout<cmsghdr>.alignment) { control throws(Errno) -> Int in
            var iov = iovec(iov_base: UnsafeMutableRawPointer(mutating: bytes.baseAddress), iov_len: bytes.count)
            var message = msghdr()
            return try withUnsafeMutablePointer(to: &iov) { iovPointer throws(Errno) -> Int in
                message.msg_iov = iovPointer
                message.msg_iovlen = 1
                if !fds.isEmpty {
                    control.initializeMemory(as: UInt8.self, repeating: 0)
                    message.msg_control = control.baseAddress
                    message.msg_controllen = controlSize
                    let header = cvu_cmsg_firsthdr(&message)!
                    header.pointee.cmsg_level = SOL_SOCKET
                    header.pointee.cmsg_type = CInt(SCM_RIGHTS)
                    header.pointee.cmsg_len = cvu_cmsg_len(fds.count * MemoryLayout<CInt>.size)
                    let data = UnsafeMutableRawPointer(cvu_cmsg_data(header)!)
                    for (i, fd) in fds.enumerated() { data.storeBytes(of: fd, toByteOffset: i * 4, as: CInt.self) }
                }
                let flags = CInt(MSG_NOSIGNAL) | (nonBlocking ? CInt(MSG_DONTWAIT) : 0)
                return try retrying { Glibc.sendmsg(fd.rawValue, &message, flags) }
            }
        }
    }

    public static func eventFD(nonBlocking: Bool = true) throws(Errno) -> FileDescriptor {
        let flags = CInt(EFD_CLOEXEC) | (nonBlocking ? CInt(EFD_NONBLOCK) : 0)
        return FileDescriptor(rawValue: try retrying { eventfd(0, flags) })
    }

    /// Adds 1 to an eventfd's counter; a full counter (EAGAIN) already means "signalled".
    public static func signal(_ fd: FileDescriptor) {
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(fd.rawValue, $0.baseAddress, 8) }
    }

    /// Reads and clears an eventfd's counter; returns 0 when it was not signalled.
    @discardableResult
    public static func drain(_ fd: FileDescriptor) -> UInt64 {
        var value: UInt64 = 0
        let n = withUnsafeMutableBytes(of: &value) { Glibc.read(fd.rawValue, $0.baseAddress, 8) }
        return n == 8 ? value : 0
    }

    public static func epollCreate() throws(Errno) -> FileDescriptor {
        FileDescriptor(rawValue: try retrying { epoll_create1(CInt(EPOLL_CLOEXEC)) })
    }

    public static func epollControl(_ epoll: FileDescriptor, _ operation: CInt, _ fd: FileDescriptor, events: UInt32, data: UInt64) throws(Errno) {
        var event = epoll_event()
        event.events = events
        event.data.u64 = data
        _ = try retrying { epoll_ctl(epoll.rawValue, operation, fd.rawValue, &event) }
    }

    public static func epollWait(_ epoll: FileDescriptor, _ events: UnsafeMutableBufferPointer<epoll_event>, timeout: CInt) throws(Errno) -> Int {
        let n = epoll_wait(epoll.rawValue, events.baseAddress, CInt(events.count), timeout)
        if n == -1 {
            let error = Errno(rawValue: errno)
            if error == .interrupted { return 0 }
            throw error
        }
        return Int(n)
    }

    public static func mapShared(_ fd: FileDescriptor, length: Int, offset: Int) throws(Errno) -> UnsafeMutableRawPointer {
        let pointer = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue, off_t(offset))
        guard let pointer, pointer != MAP_FAILED else { throw Errno(rawValue: errno) }
        return pointer
    }

    /// A memfd of `size` bytes that can no longer shrink or grow (what a peer needs before mapping it).
    public static func sealedMemfd(name: String, size: Int) throws(Errno) -> FileDescriptor {
        let fd = FileDescriptor(rawValue: try retrying { cvu_memfd_create(name, CUnsignedInt(MFD_CLOEXEC) | cvu_mfd_allow_sealing) })
        do {
            try resize(fd, to: size)
            _ = try retrying { cvu_add_seals(fd.rawValue, cvu_seal_shrink | cvu_seal_grow) }
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }

    public static func memfd(name: String, size: Int) throws(Errno) -> FileDescriptor {
        let fd = FileDescriptor(rawValue: try retrying { cvu_memfd_create(name, CUnsignedInt(MFD_CLOEXEC)) })
        do {
            try resize(fd, to: size)
        } catch {
            try? fd.close()
            throw error
        }
        return fd
    }

    /// ftruncate(2) through swift-system's `resize(to:)`, its untyped error as the `Errno` it is.
    public static func resize(_ fd: FileDescriptor, to size: Int) throws(Errno) {
        do { try fd.resize(to: Int64(size)) } catch { throw (error as? Errno) ?? .ioError }
    }

    /// pread(2) through swift-system's `read(fromAbsoluteOffset:into:)` (EINTR retried), its untyped error as the
    /// `Errno` it is. Returns the byte count (0 at end of file).
    public static func read(_ fd: FileDescriptor, fromAbsoluteOffset offset: Int,
                            into buffer: UnsafeMutableRawBufferPointer) throws(Errno) -> Int {
        do { return try fd.read(fromAbsoluteOffset: Int64(offset), into: buffer) } catch { throw (error as? Errno) ?? .ioError }
    }

    /// poll(2) over `fds`, retried on EINTR; the number of entries with events.
    public static func poll(_ fds: inout [pollfd], timeout: CInt) throws(Errno) -> Int {
        let count = nfds_t(fds.count)
        return Int(try fds.withUnsafeMutableBufferPointer { buffer throws(Errno) in
            try retrying { Glibc.poll(buffer.baseAddress, count, timeout) }
        })
    }

    /// Whether `fd` is readable within `milliseconds` (0: now; -1: no limit). An interrupted or failed
    /// poll counts as not readable: callers re-check their condition.
    public static func isReadable(_ fd: FileDescriptor, within milliseconds: CInt) -> Bool {
        var fds = [pollfd(fd: fd.rawValue, events: Int16(POLLIN), revents: 0)]
        return ((try? poll(&fds, timeout: milliseconds)) ?? 0) > 0
    }

    /// Whether `fd` becomes readable before `deadline`; false once it has passed. The wait is rounded up
    /// to whole milliseconds (at least one), so it never ends early while the deadline is still ahead.
    public static func isReadable(_ fd: FileDescriptor, before deadline: ContinuousClock.Instant) -> Bool {
        let remaining = deadline - .now
        guard remaining > .zero else { return false }
        let (seconds, attoseconds) = remaining.components
        let milliseconds = Int32(clamping: seconds * 1000 + (attoseconds + 999_999_999_999_999) / 1_000_000_000_000_000)
        return isReadable(fd, within: max(1, milliseconds))
    }

    public static func pageSize() -> Int { Int(sysconf(Int32(_SC_PAGESIZE))) }
}
