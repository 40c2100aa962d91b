import Glibc

/// The open descriptors of a process, from /proc/PID/fd, to show that nothing leaks.
public enum ProcessDescriptors {
    /// What each open descriptor of `pid` refers to (readlink of /proc/PID/fd/N); empty if unreadable.
    public static func targets(of pid: Int32 = getpid()) -> [String] {
        guard let dir = opendir("/proc/\(pid)/fd") else { return [] }
        defer { closedir(dir) }
        var targets: [String] = []
        var buffer = [CChar](repeating: 0, count: 512)
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name != ".", name != ".." else { continue }
            let n = readlink("/proc/\(pid)/fd/\(name)", &buffer, buffer.count - 1)
            guard n > 0 else { continue }
            targets.append(String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return targets
    }

    /// How many descriptors `pid` has open (-1 if /proc/PID/fd cannot be read).
    public static func count(of pid: Int32 = getpid()) -> Int {
        guard let dir = opendir("/proc/\(pid)/fd") else { return -1 }
        defer { closedir(dir) }
        var count = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name != "." && name != ".." { count += 1 }
        }
        return count
    }
}
