import Foundation
import Testing

/// What a thread spent, from its schedstat (fields 1 and 2), in seconds: on a CPU and waiting on a run
/// queue. The benchmarks read QEMU's and the daemon's threads around each step.
struct ThreadTime {
    var cpu: Double = 0
    var wait: Double = 0

    /// Every thread of `pid` by "process/thread name" (threads of one name summed); a thread that ended
    /// meanwhile is left out.
    static func byThread(_ pid: pid_t, _ process: String) -> [String: ThreadTime] {
        var times: [String: ThreadTime] = [:]
        for task in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? [] {
            guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/schedstat", encoding: .utf8),
                  let comm = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/comm", encoding: .utf8) else { continue }
            let fields = stat.split(separator: " ").compactMap { Double($0) }
            guard fields.count >= 2 else { continue }
            let key = "\(process)/\(comm.trimmingCharacters(in: .whitespacesAndNewlines))"
            times[key, default: ThreadTime()].cpu += fields[0] / 1e9
            times[key, default: ThreadTime()].wait += fields[1] / 1e9
        }
        return times
    }

    /// The CPU seconds of all of `pid`'s threads.
    static func cpuSeconds(_ pid: pid_t) throws -> Double {
        let seconds = byThread(pid, "").values.reduce(0) { $0 + $1.cpu }
        try #require(seconds > 0, "no schedstat for \(pid)")
        return seconds
    }
}
