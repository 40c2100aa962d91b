import DaemonTestSupport
import Foundation
import Glibc
import Testing

/// Issue 15 §4, the gate's measurement: guest O_DIRECT virtio-blk I/O behind vhost-user-iommu-pci against
/// QEMU's built-in virtio-iommu-pci, side by side in one run (`scripts/bench-guest --disk [ROUNDS]`).
/// Bench-only: it prints `disk-bench:` figures and asserts only that the workload ran; it runs only when
/// VHOST_IOMMU_DISK_BENCH_ROUNDS is set.
///
/// DiskDMATests' set-up (`iommu.strict=1`, bypass off, `-boot strict=on`, TCG, 1 vCPU, 512 MiB), with the
/// root-bus disk only. Each round boots one VM per configuration, alternating which goes first, and runs
/// `repeats` times: blk-io `write` and `read` of `size` bytes at 64 KiB, then blk-io `bench` over 4 MiB with
/// `randomSeconds` of random 4 KiB reads (its IOPS figure; its 8 MiB of sequential I/O first take ~2 % of
/// the step). Around each step the CPU time and run-queue wait (schedstat fields 1 and 2) of every thread
/// of QEMU and of the daemon. Printed: each configuration's median and range over all samples; the ratio to
/// the built-in device per round (round medians), median and range; CPU per GiB at 64 KiB and per 4 KiB
/// read; and where the CPU and the waits go, by thread name.
///
/// The image is on /dev/shm unless VHOST_IOMMU_DISK_BENCH_FOLDER says otherwise (`imageFolder`).
/// Environment: VHOST_IOMMU_DISK_BENCH_ROUNDS (rounds), VHOST_IOMMU_DISK_BENCH_REPEATS (steps per boot,
/// default 3), VHOST_IOMMU_DISK_BENCH_MIB (sequential size, default 64, at most the 64 MiB image),
/// VHOST_IOMMU_DISK_BENCH_SECONDS (random reads, default 3), VHOST_IOMMU_DAEMON_ARGS (extra options of the
/// daemon as shipped, the "vhost-user" configuration),
/// and VHOST_IOMMU_DISK_BENCH_VARIANTS to compare more vhost-user configurations in the same run:
/// `NAME:daemon=PATH,qemu=PATH,args=OPT OPT,nice=N,pin=ROLE:CPUS/ROLE:CPUS;NAME2:…` (each key optional;
/// qemu= changes only that configuration's binary, so give it a binary that differs from the stock one only
/// in the front-end; nice= sets the daemon's nice value on all its threads once the guest is up; pin=
/// replaces VHOST_IOMMU_DISK_BENCH_PIN for that configuration, `pin=none` pins nothing; CPU lists there
/// take ranges such as `0-1`, not commas). A value that does not parse stops the run.
/// The configurations: the built-in device, the daemon as shipped, and the daemon "deployed" (`deployedPinning`).
/// VHOST_IOMMU_DISK_BENCH_PIN=`vcpu=0,emulator=1,daemon=1` pins, in every configuration without its own,
/// QEMU's vCPU thread, its other threads (main loop; AIO workers inherit the main loop's mask) and all the
/// daemon's threads to those CPUs once the guest is up (unset: no pinning).
@Suite(.serialized, .enabled(if: GuestFiles.unavailableReason == nil && DiskBenchSettings.rounds != nil,
                             "set VHOST_IOMMU_DISK_BENCH_ROUNDS (scripts/bench-guest --disk)"))
struct DiskBenchmark: GuestWorkload {
    static let environment = ProcessInfo.processInfo.environment
    static func integer(_ name: String) -> Int? { environment[name].flatMap { Int($0) }.map { max(1, $0) } }
    static let rounds = DiskBenchSettings.rounds
    static let repeats = integer("VHOST_IOMMU_DISK_BENCH_REPEATS") ?? 3
    static let size = min(integer("VHOST_IOMMU_DISK_BENCH_MIB") ?? 64, DiskDMATests.imageSize >> 20) << 20
    static let randomSeconds = integer("VHOST_IOMMU_DISK_BENCH_SECONDS") ?? 3
    static let randomRange = 4 << 20
    /// The gate's configuration ("deployed"), as the README deploys the daemon as a polling back-end: a CPU
    /// of its own (the last this process may use) and QEMU, vCPU and all, on the others; a polling window
    /// of 1 ms, so that the spin lasts through the guest's I/O and fewer bursts of requests start with a
    /// wake-up. The built-in device and the daemon as shipped run unpinned, QEMU free on every CPU (the
    /// built-in device's best layout). Nil, and the configuration left out, with fewer than 2 CPUs.
    static let deployedPinning: [String: String]? = {
        let allowed = allowedCPUs()
        guard allowed.count >= 2, let daemon = allowed.last else { return nil }
        let qemu = allowed.dropLast().map(String.init).joined(separator: ",")
        return ["vcpu": qemu, "emulator": qemu, "daemon": String(daemon)]
    }()
    static let deployedArguments = ["--poll-max-us", "1000"]

    /// The CPUs this process may run on (`Cpus_allowed_list` of /proc/self/status, e.g. `0-1` or `0,2-3`).
    static func allowedCPUs() -> [Int] {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("Cpus_allowed_list:") }) else { return [] }
        return line.dropFirst("Cpus_allowed_list:".count).trimmingCharacters(in: .whitespaces).split(separator: ",").flatMap { part -> [Int] in
            let bounds = part.split(separator: "-").compactMap { Int($0) }
            guard let first = bounds.first, let last = bounds.last, first <= last else { return [] }
            return Array(first...last)
        }
    }
    /// CPU lists by role ("vcpu", "emulator", "daemon"), for `taskset -c`, for the configurations without their own.
    static let pinning = parsePinning(environment["VHOST_IOMMU_DISK_BENCH_PIN"] ?? "", separators: (",", "="))

    /// `role=cpus,role=cpus` (or, inside a variant, `role:cpus/role:cpus`) as a dictionary.
    static func parsePinning(_ text: String, separators: (list: Character, pair: Character)) -> [String: String] {
        Dictionary(text.split(separator: separators.list).compactMap { pair in
            let parts = pair.split(separator: separators.pair, maxSplits: 1).map(String.init)
            return parts.count == 2 ? (parts[0], parts[1]) : nil
        }, uniquingKeysWith: { _, last in last })
    }

    /// Where the disk image lives: tmpfs by default, so that the guest's fdatasync (timed in blk-io's write)
    /// and the host's writeback do not put the host disk's speed into the figures (both devices alike).
    static let imageFolder = environment["VHOST_IOMMU_DISK_BENCH_FOLDER"]
        ?? (access("/dev/shm", W_OK) == 0 ? "/dev/shm" : FileManager.default.temporaryDirectory.path)

    /// A VHOST_IOMMU_DISK_BENCH_VARIANTS entry that does not parse.
    struct VariantError: Error, CustomStringConvertible { var text: String; var description: String { text } }

    struct Configuration {
        var name: String
        var iommu: DiskDMATests.IOMMU
        var daemon = RealGuestTests.daemonExecutable
        var daemonArguments: [String] = []
        var qemu: String?
        /// The daemon's nice value, set on each of its threads once the guest is up (like the pinning).
        var nice: Int?
        /// This configuration's own pinning instead of VHOST_IOMMU_DISK_BENCH_PIN's.
        var pinning: [String: String]?

        var summary: String {
            var text = "\(name) \(iommu) \(daemonArguments.joined(separator: " ")) \(qemu ?? "")"
            if let nice { text += " nice \(nice)" }
            if let pinning, !pinning.isEmpty {
                text += " pinned " + pinning.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            }
            return text
        }
    }

    static func configurations() throws -> [Configuration] {
        var list = [Configuration(name: "built-in", iommu: .builtIn),
                    Configuration(name: "vhost-user", iommu: .vhostUser, daemonArguments: RealGuestTests.extraDaemonArguments)]
        if let deployedPinning {
            list.append(Configuration(name: "deployed", iommu: .vhostUser, daemonArguments: deployedArguments, pinning: deployedPinning))
        } else {
            print("disk-bench: no \"deployed\" configuration: it needs 2 CPUs, this process may use \(allowedCPUs())")
        }
        for variant in (environment["VHOST_IOMMU_DISK_BENCH_VARIANTS"] ?? "").split(separator: ";") {
            let parts = variant.split(separator: ":", maxSplits: 1)
            var configuration = Configuration(name: String(parts[0]), iommu: .vhostUser)
            for option in parts.count > 1 ? parts[1].split(separator: ",") : [] {
                let pair = option.split(separator: "=", maxSplits: 1).map(String.init)
                guard pair.count == 2 else { throw VariantError(text: "variant \(parts[0]): \(option) is not KEY=VALUE") }
                switch pair[0] {
                case "daemon": configuration.daemon = URL(fileURLWithPath: pair[1])
                case "qemu": configuration.qemu = pair[1]
                case "args": configuration.daemonArguments = pair[1].split(separator: " ").map(String.init)
                case "nice":
                    guard let value = Int(pair[1]) else { throw VariantError(text: "variant \(parts[0]): nice=\(pair[1])") }
                    configuration.nice = value
                case "pin":
                    let pinning = parsePinning(pair[1], separators: ("/", ":"))
                    guard pair[1] == "none" || !pinning.isEmpty else { throw VariantError(text: "variant \(parts[0]): pin=\(pair[1])") }
                    configuration.pinning = pinning
                default: throw VariantError(text: "variant \(parts[0]): unknown key \(pair[0])")
                }
            }
            list.append(configuration)
        }
        return list
    }

    /// One step's figures: its rate and what every thread spent during it.
    struct Step {
        var rate: Double
        var units: Double  // bytes for the 64 KiB steps, reads for the random step
        var threads: [String: ThreadTime]
        func cpu(of process: String) -> Double { threads.filter { $0.key.hasPrefix(process + "/") }.values.reduce(0) { $0 + $1.cpu } }
    }

    /// What one boot measured: each step kind's samples.
    struct Boot { var write: [Step] = [], read: [Step] = [], random: [Step] = [] }

    @Test func diskThroughputBothIOMMUsSideBySide() throws {
        let files = try GuestFiles.install()
        let configurations = try Self.configurations()
        let rounds = Self.rounds ?? 1
        print("disk-bench: \(rounds) rounds × \(Self.repeats) per boot; image in \(Self.imageFolder); 64 KiB O_DIRECT write and read of \(Self.size >> 20) MiB, "
              + "\(Self.randomSeconds) s random 4 KiB reads over \(Self.randomRange >> 20) MiB; iommu.strict=1, TCG, 1 vCPU; "
              + (Self.pinning.isEmpty ? "" : "pinned \(Self.pinning.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")); ")
              + configurations.map(\.summary).joined(separator: "; "))
        // boots[configuration][round]
        var boots = Array(repeating: [Boot](), count: configurations.count)
        for round in 0..<rounds {
            let order = round % 2 == 0 ? Array(configurations.indices) : configurations.indices.reversed()
            for index in order {
                let boot = try measure(files, configurations[index])
                boots[index].append(boot)
                func summary(_ steps: [Step]) -> String { steps.map { String(format: "%.0f", $0.rate) }.joined(separator: " ") }
                print("disk-bench: round \(round + 1) \(configurations[index].name): write MB/s \(summary(boot.write)); "
                      + "read MB/s \(summary(boot.read)); IOPS \(summary(boot.random))")
            }
        }

        func spread(_ values: [Double], _ format: String = "%.1f") -> String {
            let sorted = values.sorted()
            return String(format: "\(format) [\(format)–\(format)]", median(values), sorted.first ?? 0, sorted.last ?? 0)
        }
        let kinds: [(String, KeyPath<Boot, [Step]>)] = [("64 KiB write MB/s", \.write), ("64 KiB read MB/s", \.read), ("4 KiB IOPS", \.random)]
        for (index, configuration) in configurations.enumerated() {
            let all = { (kind: KeyPath<Boot, [Step]>) in boots[index].flatMap { $0[keyPath: kind] } }
            var line = "disk-bench: \(configuration.name): median [min–max] of \(all(\.write).count): "
            line += kinds.map { "\($0.0) \(spread(all($0.1).map(\.rate), "%.0f"))" }.joined(separator: ", ")
            let sequential = all(\.write) + all(\.read)
            let gib = sequential.reduce(0) { $0 + $1.units } / Double(1 << 30)
            let reads = all(\.random).reduce(0) { $0 + $1.units }
            let perGiB = { (process: String) in sequential.reduce(0) { $0 + $1.cpu(of: process) } / gib }
            let perRead = { (process: String) in all(\.random).reduce(0) { $0 + $1.cpu(of: process) } / reads * 1e6 }
            line += String(format: "; CPU at 64 KiB: QEMU %.2f + daemon %.2f s per GiB; per 4 KiB read: QEMU %.1f + daemon %.1f µs",
                           perGiB("qemu"), perGiB("daemon"), perRead("qemu"), perRead("daemon"))
            print(line)
            if index > 0 {
                var ratios = "disk-bench: \(configuration.name) / built-in, per round (median [min–max] of \(rounds)): "
                ratios += kinds.map { kind in
                    let perRound = zip(boots[index], boots[0]).map { ours, theirs in
                        median(ours[keyPath: kind.1].map(\.rate)) / median(theirs[keyPath: kind.1].map(\.rate))
                    }
                    return "\(kind.0.replacingOccurrences(of: " MB/s", with: "")) \(spread(perRound, "%.2f"))"
                }.joined(separator: ", ")
                print(ratios)
            }
            // Where the CPU and the run-queue waits go, by thread, per GiB at 64 KiB and per 4 KiB read.
            for (label, steps, unit, scale) in [("64 KiB, s per GiB", sequential, gib, 1.0), ("4 KiB random, µs per read", all(\.random), reads, 1e6)] {
                var threads: [String: ThreadTime] = [:]
                for step in steps {
                    for (name, time) in step.threads { threads[name, default: ThreadTime()].cpu += time.cpu; threads[name, default: ThreadTime()].wait += time.wait }
                }
                let listed = threads.filter { $0.value.cpu + $0.value.wait > 0.0005 * unit / scale }.sorted { $0.value.cpu > $1.value.cpu }
                print("disk-bench: \(configuration.name) threads, \(label) (CPU / run-queue wait): "
                      + listed.map { String(format: "%@ %.2f / %.2f", $0.key, $0.value.cpu / unit * scale, $0.value.wait / unit * scale) }
                          .joined(separator: ", "))
            }
        }
    }

    /// One boot of `configuration`: `repeats` × (write, read, random) with the threads' times around each.
    private func measure(_ files: GuestFiles, _ configuration: Configuration) throws -> Boot {
        let folder = URL(fileURLWithPath: Self.imageFolder).appendingPathComponent("vhost-iommu-disk-bench-\(getpid())")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        var files = files
        if let qemu = configuration.qemu { files.qemu = qemu }
        let placement = DiskDMATests.rootBus
        let vm = try startDiskMachine(configuration.iommu, placements: [placement], endpoints: [placement.endpoint],
                                      daemonArguments: ["--log-level", "warning"] + configuration.daemonArguments, files: files,
                                      folder: folder, tag: "disk-bench-\(getpid())", daemonExecutable: configuration.daemon,
                                      qemuArguments: ["-name", "debug-threads=on"])  // thread names only, both devices alike
        let (machine, daemon) = (vm.machine, vm.daemon)
        try machine.waitFor("@@READY")
        let name = try #require(try disksByPCIAddress(machine, names: ["vda"])[placement.bdf], "no disk at \(placement.bdf)")
        let qemuPID = machine.process.processIdentifier
        let daemonPID = daemon?.process.processIdentifier

        try Self.pin(qemu: qemuPID, daemon: daemonPID, configuration.pinning ?? Self.pinning)
        if let nice = configuration.nice, let daemonPID { try Self.renice(daemonPID, to: nice) }

        func threads() -> [String: ThreadTime] {
            var all = ThreadTime.byThread(qemuPID, "qemu")
            if let daemonPID { all.merge(ThreadTime.byThread(daemonPID, "daemon")) { a, _ in a } }
            return all
        }
        func step(_ arguments: String, rate: String, units: ([String: String]) -> Double) throws -> Step {
            let before = threads()
            let result = try blkIO(machine, "/dev/\(name) \(arguments)")
            let after = threads()
            try #require(result["status"] == "ok", "\(configuration.name): blk-io \(arguments): \(result)\n\(machine.log)")
            var spent: [String: ThreadTime] = [:]
            for (thread, time) in after {
                let earlier = before[thread] ?? ThreadTime()  // a thread that started during the step counts from 0
                spent[thread] = ThreadTime(cpu: time.cpu - earlier.cpu, wait: time.wait - earlier.wait)
            }
            return Step(rate: try #require(result[rate].flatMap(Double.init), "\(result)"), units: units(result), threads: spent)
        }
        var boot = Boot()
        let seed = "0xbe0c"
        for _ in 0..<Self.repeats {
            boot.write.append(try step("write \(Self.size) 64K \(seed)", rate: "mbps") { _ in Double(Self.size) })
            boot.read.append(try step("read \(Self.size) 64K \(seed)", rate: "mbps") { _ in Double(Self.size) })
            boot.random.append(try step("bench \(Self.randomRange) 64K \(seed) --seconds \(Self.randomSeconds)", rate: "iops") {
                Double($0["random_reads"] ?? "") ?? 1
            })
        }
        machine.send("poweroff -f")
        #expect(machine.waitForExit() == 0, "QEMU exit\n\(machine.log)")
        if let daemon { #expect(daemon.waitForExit(timeout: .seconds(20)) == 0, "daemon exit\n\(daemon.log)") }
        return boot
    }

    /// Applies `pinning` with taskset: QEMU's vCPU threads, QEMU's other threads, the daemon's threads.
    static func pin(qemu: pid_t, daemon: pid_t?, _ pinning: [String: String]) throws {
        guard !pinning.isEmpty else { return }
        let taskset = URL(fileURLWithPath: "/usr/bin/taskset")
        func set(_ cpus: String?, _ options: [String] = [], _ pid: String) throws {
            guard let cpus else { return }
            let result = try runCommand(taskset, options + ["-c", "-p", cpus, pid])
            try #require(result.status == 0, "taskset \(options) \(pid): \(result.errors)")
        }
        for task in try FileManager.default.contentsOfDirectory(atPath: "/proc/\(qemu)/task") {
            let comm = (try? String(contentsOfFile: "/proc/\(qemu)/task/\(task)/comm", encoding: .utf8)) ?? ""
            try set(comm.hasPrefix("CPU ") ? pinning["vcpu"] : pinning["emulator"], [], task)
        }
        if let daemon { try set(pinning["daemon"], ["-a"], "\(daemon)") }
    }
}

extension DiskBenchmark {
    /// Sets `nice` on every thread of `pid` (on Linux a nice value belongs to a thread, not to the process).
    static func renice(_ pid: pid_t, to nice: Int) throws {
        let renice = URL(fileURLWithPath: "/usr/bin/renice")
        for task in try FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task") {
            let result = try runCommand(renice, ["-n", "\(nice)", "-p", task])
            try #require(result.status == 0, "renice \(nice) \(task): \(result.errors)")
        }
    }
}

/// The suite's switch, outside it (a suite's traits cannot refer to the suite's own members).
enum DiskBenchSettings {
    static let rounds = ProcessInfo.processInfo.environment["VHOST_IOMMU_DISK_BENCH_ROUNDS"].flatMap { Int($0) }.map { max(1, $0) }
}
