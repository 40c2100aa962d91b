import Foundation
import Glibc
import PASIDAllocators
import PASIDStore
import Synchronization
import VhostUser

/// PASIDStore: alloc+free latency, p50 and p99, for one process and for 4 processes contending on one
/// store, in durable mode (SQLite, WAL, synchronous=NORMAL) and in memory (one process: 4 threads).
/// Each contender holds some PASIDs throughout; afterwards the held sets must be disjoint and match
/// the store exactly (no PASID handed to two owners).
enum PASIDStoreBenchmark {
    static let pairs = 2_000
    static let held = 32
    static let contenders = 4

    static func run(report: inout Report) {
        let folder = "/tmp/vhost-iommu-bench-pasid-\(getpid())"
        mkdir(folder, 0o700)
        defer { _ = system("rm -rf '\(folder)'") }
        do {
            // Durable, one process.
            let single = try SQLitePASIDStore(path: folder + "/single.sqlite")
            try single.register(owner: "vm-0")
            let (samples, _) = try timedPairs(single, owner: "vm-0")
            note(&report, "durable, 1 process", samples)

            // Durable, 4 processes on one store. They stay alive (holding their PASIDs) until checked.
            let shared = folder + "/shared.sqlite"
            _ = try SQLitePASIDStore(path: shared)  // created once, before the contenders open it
            var all: [Double] = []
            var heldBy: [String: Set<PASID>] = [:]
            let workers = spawnWorkers(path: shared)
            for worker in workers {
                let lines = worker.output.split(separator: "\n")
                guard lines.count == 3, lines[2] == "done" else { print("worker \(worker.owner) failed: \(worker.output)"); return }
                all += lines[0].split(separator: " ").compactMap { Double($0) }
                heldBy[worker.owner] = Set(lines[1].split(separator: " ").compactMap { PASID($0) })
            }
            note(&report, "durable, \(contenders) processes", all)
            let store = try SQLitePASIDStore(path: shared)
            let union = heldBy.values.reduce(into: Set<PASID>()) { $0.formUnion($1) }
            let disjoint = union.count == heldBy.values.reduce(0) { $0 + $1.count } && union.count == contenders * held
            let matches = Set(try store.allocations().map { "\($0.pasid)/\($0.owner)" })
                == Set(heldBy.flatMap { owner, set in set.map { "\($0)/\(owner)" } })
            report.note("PASIDStore durable", "contenders' PASIDs disjoint and as stored (1 = yes)", disjoint && matches ? 1 : 0)
            for worker in workers { worker.finish() }

            // In memory: one process, then 4 threads on one store.
            let memory = try InMemoryPASIDStore()
            note(&report, "in memory, 1 thread", try timedPairs(memory, owner: "vm-0").0)
            let results = Mutex<[(String, [Double], [PASID])]>([])
            let threads = (0..<contenders).map { i in
                OSThread {
                    if let (samples, held) = try? timedPairs(memory, owner: "vm-\(i)") {
                        results.withLock { $0.append(("vm-\(i)", samples, held)) }
                    }
                }
            }
            threads.forEach { $0.join() }
            let collected = results.withLock { $0 }
            note(&report, "in memory, \(contenders) threads", collected.flatMap(\.1))
            let heldInMemory = collected.flatMap(\.2)
            report.note("PASIDStore in memory", "contenders' PASIDs disjoint (1 = yes)",
                        Set(heldInMemory).count == heldInMemory.count && collected.count == contenders ? 1 : 0)
        } catch {
            print("PASIDStore benchmark failed: \(error)")
        }
    }

    /// Holds `held` PASIDs, then times `pairs` alloc+free pairs; returns the samples (ns) and the held set.
    static func timedPairs(_ store: any PASIDAllocator, owner: String) throws -> ([Double], [PASID]) {
        var kept: [PASID] = []
        for _ in 0..<held { kept.append(try store.allocate(owner: owner, in: nil)) }
        var samples: [Double] = []
        samples.reserveCapacity(pairs)
        let clock = ContinuousClock()
        for _ in 0..<pairs {
            let start = clock.now
            let pasid = try store.allocate(owner: owner, in: nil)
            try store.free(pasid, owner: owner)
            let elapsed = clock.now - start
            samples.append(Double(elapsed.components.seconds) * 1e9 + Double(elapsed.components.attoseconds) / 1e9)
        }
        return (samples, kept)
    }

    static func note(_ report: inout Report, _ label: String, _ samples: [Double]) {
        guard !samples.isEmpty else { return }
        let sorted = samples.sorted()
        report.note("PASIDStore \(label)", "alloc+free p50 (µs)", sorted[sorted.count / 2] / 1000)
        report.note("PASIDStore \(label)", "alloc+free p99 (µs)", sorted[sorted.count * 99 / 100] / 1000)
    }

    /// A contender process: its report, and the pipe whose closing lets it exit.
    struct Worker {
        var owner: String
        var process: Process?
        var output: String
        var release: FileHandle

        func finish() {
            try? release.close()
            process?.waitUntilExit()
        }
    }

    /// Starts the contenders (this executable in worker mode) together; returns once each has reported.
    static func spawnWorkers(path: String) -> [Worker] {
        guard let me = ownExecutablePath() else { return [] }
        var running: [(owner: String, process: Process?, output: FileHandle, release: FileHandle)] = []
        for i in 0..<contenders {
            // Process closes every other descriptor in the child, so later contenders do not inherit (and
            // hold open) earlier ones' pipes; it also closes our copies of the ends the child uses.
            let output = Pipe(), input = Pipe()
            let owner = "vm-\(i)"
            let process = Process()
            process.executableURL = URL(fileURLWithPath: me)
            process.arguments = ["--pasid-worker", path, owner]
            process.standardOutput = output
            process.standardInput = input
            let started = (try? process.run()) != nil
            running.append((owner, started ? process : nil, output.fileHandleForReading, input.fileHandleForWriting))
        }
        return running.map { owner, process, output, release in
            // Read until the worker's "done" line (it keeps running, and its PASIDs, until released).
            var text: [UInt8] = []
            let done = Array("done\n".utf8)
            if process != nil {
                while !text.suffix(done.count).elementsEqual(done) {
                    let chunk = output.availableData
                    if chunk.isEmpty { break }
                    text += chunk
                }
            }
            try? output.close()
            return Worker(owner: owner, process: process, output: String(decoding: text, as: UTF8.self), release: release)
        }
    }

    /// Worker mode: registers `owner`, runs `timedPairs`, prints the samples and the held PASIDs.
    static func worker(path: String, owner: String) -> Int32 {
        do {
            let store = try SQLitePASIDStore(path: path)
            try store.register(owner: owner)
            let (samples, held) = try timedPairs(store, owner: owner)
            print(samples.map { String(Int($0)) }.joined(separator: " "))
            print(held.map(String.init).joined(separator: " "))
            print("done")
            fflush(nil)
            _ = try? FileHandle.standardInput.readToEnd()  // alive, holding its PASIDs, until the parent has checked
            return 0
        } catch {
            print("error: \(error)")
            return 1
        }
    }
}
