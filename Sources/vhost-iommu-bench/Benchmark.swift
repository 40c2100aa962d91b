import Glibc
/// A small timing harness: the median of several repetitions, reported in nanoseconds per operation,
/// with ratios against a baseline measured in the same run.
@inline(never)
func measure(iterations: Int, repetitions: Int = 5, _ body: () -> Void) -> Double {
    var samples: [Double] = []
    let clock = ContinuousClock()
    for _ in 0..<repetitions {
        let start = clock.now
        for _ in 0..<iterations { body() }
        let elapsed = clock.now - start
        let ns = Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9
        samples.append(ns / Double(iterations))
    }
    return samples.sorted()[samples.count / 2]
}

struct Report {
    var lines: [String] = []

    mutating func add(_ group: String, _ name: String, _ ns: Double, baseline: Double? = nil) {
        var line = "\(group.padded(22)) \(name.padded(40)) \(format(ns)) ns"
        if let baseline { line += "   sorted array \(format(baseline)) ns, ratio \(format(baseline / ns))×" }
        lines.append(line)
        print(line)
    }

    mutating func note(_ group: String, _ name: String, _ value: Double) {
        let line = "\(group.padded(22)) \(name.padded(40)) \(format(value))"
        lines.append(line)
        print(line)
    }

    /// A ratio measured side by side; two decimals, since a refused request costs a few hundredths of a normal one.
    mutating func ratio(_ group: String, _ name: String, _ value: Double) {
        let line = "\(group.padded(22)) \(name.padded(40)) \(String((value * 100).rounded() / 100))×"
        lines.append(line)
        print(line)
    }

    func format(_ value: Double) -> String {
        let rounded = (value * 10).rounded() / 10
        return String(rounded)
    }
}

@main
struct BenchmarkMain {
    static func main() {
        let arguments = CommandLine.arguments.dropFirst()
        if arguments.first == "--pasid-worker", arguments.count == 3 {
            exit(PASIDStoreBenchmark.worker(path: arguments[arguments.startIndex + 1], owner: arguments[arguments.startIndex + 2]))
        }
        var sizes = arguments.contains("--quick") ? [1_000, 100_000] : [1_000, 100_000, 1_000_000]
        if let i = arguments.firstIndex(of: "--size"), i + 1 < arguments.endIndex, let n = Int(arguments[i + 1]) { sizes = [n] }
        var report = Report()
        if arguments.contains("--flood-only") {
            print("flood (test front-end → real daemon): waits and costs a guest can cause")
            FloodBenchmark.run(report: &report)
            return
        }
        if arguments.contains("--bounds-only") {
            print("device model, bounded work per request (ns per operation; median of 5)")
            var count = 65_536
            if let i = arguments.firstIndex(of: "--endpoints"), i + 1 < arguments.endIndex, let n = Int(arguments[i + 1]) { count = n }
            BoundedWorkBenchmark.run(report: &report, endpoints: count)
            return
        }
        if !arguments.contains("--vhost-user-only") && !arguments.contains("--pasid-only") {
            print("device model (ns per operation; median of 5)")
            DeviceModelBenchmark.run(sizes: sizes, report: &report)
            BoundedWorkBenchmark.run(report: &report)
        }
        if !arguments.contains("--device-model-only") && !arguments.contains("--pasid-only") {
            print("vhost-user path (test front-end → real daemon)")
            VhostUserPathBenchmark.run(report: &report)
        }
        if !arguments.contains("--device-model-only") && !arguments.contains("--vhost-user-only") {
            print("PASID store (alloc+free)")
            PASIDStoreBenchmark.run(report: &report)
        }
        if !arguments.contains("--device-model-only") && !arguments.contains("--vhost-user-only")
            && !arguments.contains("--pasid-only") && !arguments.contains("--quick") {
            print("flood (test front-end → real daemon): waits and costs a guest can cause")
            FloodBenchmark.run(report: &report)
        }
    }
}

extension String {
    func padded(_ width: Int) -> String { count >= width ? self : self + String(repeating: " ", count: width - count) }
}

/// This executable's path: the daemon and the PASID-store workers start from the same build folder.
func ownExecutablePath() -> String? {
    var path = [CChar](repeating: 0, count: 4096)
    let n = readlink("/proc/self/exe", &path, path.count - 1)
    guard n > 0 else { return nil }
    return String(decoding: path[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Starts `arguments[0]` with `arguments` as its argv; the child's pid, for the caller to signal and reap
/// (the daemon benchmarks kill and waitpid it; Foundation's `Process` would reap it itself).
func spawn(_ arguments: [String]) -> pid_t? {
    var argv = arguments.map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    return posix_spawn(&pid, arguments[0], nil, nil, &argv, environ) == 0 ? pid : nil
}
