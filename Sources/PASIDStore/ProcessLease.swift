import Glibc

/// Identifies a live process across pid reuse: its pid and its start time since boot
/// (field 22 of /proc/PID/stat). A lease whose process is gone, or whose pid now names a newer
/// process, is dead.
public struct ProcessLease: Hashable, Sendable {
    public var pid: Int32
    public var startTime: Int64

    public static var current: ProcessLease {
        let pid = getpid()
        return ProcessLease(pid: pid, startTime: startTime(of: pid) ?? 0)
    }

    public var isAlive: Bool {
        guard let now = Self.startTime(of: pid) else { return false }
        return now == startTime
    }

    static func startTime(of pid: Int32) -> Int64? {
        guard let file = fopen("/proc/\(pid)/stat", "r") else { return nil }
        defer { fclose(file) }
        var buffer = [CChar](repeating: 0, count: 1024)
        guard fgets(&buffer, Int32(buffer.count), file) != nil else { return nil }
        let line = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
        guard let close = line.lastIndex(of: ")") else { return nil }
        let fields = line[line.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state), so field 22 is fields[19].
        guard fields.count > 19 else { return nil }
        return Int64(fields[19])
    }
}
