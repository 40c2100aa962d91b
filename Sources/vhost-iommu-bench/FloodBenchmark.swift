import Glibc
import Synchronization
import VhostUser
import TestSupport
import VhostUserTestSupport
import VirtioIOMMU

/// What a guest can make the daemon spend (issue 13 §2), measured against the release daemon:
/// - how long a vhost-user message (GET_FEATURES) and a control-socket request (stats) wait while
///   the guest floods the request queue with expensive or plain requests;
/// - what a request with a huge writable part costs next to a normal one;
/// - all 65,536 default endpoints attached to one domain: the time, and a MAP+UNMAP pair there
///   next to the same pair in a one-endpoint domain.
enum FloodBenchmark {
    static func run(report: inout Report) {
        guard let (pid, socket, control) = startDaemon() else { print("cannot start the daemon"); return }
        defer { kill(pid, SIGTERM); var s: Int32 = 0; waitpid(pid, &s, 0); unlink(control) }
        do {
            try measure(socket: socket, control: control, report: &report)
        } catch {
            print("flood benchmark failed: \(error)")
        }
    }

    static func startDaemon() -> (pid_t, String, String)? {
        guard let path = ownExecutablePath(), let slash = path.lastIndex(of: "/") else { return nil }
        let socket = "/tmp/vhost-iommu-flood-\(getpid()).sock"
        let control = "/tmp/vhost-iommu-flood-\(getpid()).ctl"
        guard let pid = spawn([String(path[..<slash]) + "/vhost-iommu", "--socket-path", socket, "--control-socket", control,
                               "--pasid-store", "memory", "--log-level", "error"]) else { return nil }
        _ = waitUntil(.seconds(5)) { access(socket, F_OK) == 0 && access(control, F_OK) == 0 }
        return (pid, socket, control)
    }

    /// One flood: `post` fills the ring and kicks, `wait` collects; meanwhile this thread times
    /// GET_FEATURES and a control-socket stats request, one every 2 ms, until `duration` ends.
    struct Waits { var message: [Double] = []; var control: [Double] = []; var requests = 0 }

    static func measure(socket: String, control: String, report: inout Report) throws {
        let frontend = try TestFrontend(connectingTo: socket)
        let memory = try SharedMemory(size: 320 << 20)
        let requests = try DriverQueue(memory: memory, index: 0, size: 1024)
        let events = try DriverQueue(memory: memory, index: 1, size: 256)
        let offered = try frontend.initialize(queues: [requests, events])
        try frontend.start(features: offered & (TransportFeatures.all | Features.standard.rawValue), memory: [memory],
                           queues: [requests, events])
        let clock = ContinuousClock()
        func milliseconds(_ d: Duration) -> Double { Double(d.components.seconds) * 1e3 + Double(d.components.attoseconds) / 1e15 }

        // Buffers laid out once and shared by every chain, as a driver reuses its own.
        let hugeSize = 256 << 20
        let huge = memory.allocate(hugeSize)
        let attach = memory.allocate(20)
        memory.write(AttachRequest(domain: 1, endpoint: 8).encoded, at: attach)
        let tail = memory.allocate(4)
        let longTable = 32_768  // the largest indirect table the engine accepts
        let oneByte = memory.allocate(1)
        let mark = memory.allocated

        func roundTrip(_ parts: [DriverQueue.Descriptor], count: Int) -> Duration {
            let start = clock.now
            for _ in 0..<count { requests.add(parts: parts, indirect: true) }
            requests.kickNow()
            _ = requests.waitForUsed(count, timeout: .seconds(60), spinning: true)
            memory.resetAllocations(keeping: mark)
            return clock.now - start
        }
        let normalParts = [DriverQueue.Descriptor(address: attach, length: 20, flags: 0),
                           DriverQueue.Descriptor(address: tail, length: 4, flags: DriverQueue.flagWrite)]
        let hugeParts = [DriverQueue.Descriptor(address: attach, length: 20, flags: 0),
                         DriverQueue.Descriptor(address: huge, length: UInt32(hugeSize), flags: DriverQueue.flagWrite)]
        // A chain as long as the engine allows: 32,767 one-byte readable pieces and the tail.
        let longParts = Array(repeating: DriverQueue.Descriptor(address: oneByte, length: 1, flags: 0), count: longTable - 1)
            + [DriverQueue.Descriptor(address: tail, length: 4, flags: DriverQueue.flagWrite)]

        // Cost of one request: 16 per kick, median of 15 kicks each, side by side.
        var normal: [Double] = [], big: [Double] = [], long: [Double] = []
        for _ in 0..<15 {
            normal.append(milliseconds(roundTrip(normalParts, count: 16)) / 16)
            big.append(milliseconds(roundTrip(hugeParts, count: 16)) / 16)
            long.append(milliseconds(roundTrip(longParts, count: 16)) / 16)
        }
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        let group = "flood"
        report.note(group, "ATTACH, 4-byte writable part (µs)", median(normal) * 1000)
        report.note(group, "ATTACH, 256 MiB writable part (µs)", median(big) * 1000)
        report.note(group, "  ratio to the normal ATTACH (≤ 20)", median(big) / median(normal))
        report.note(group, "32,768-descriptor chain (µs)", median(long) * 1000)
        report.note(group, "  ratio to the normal ATTACH", median(long) / median(normal))

        // Waits while the guest keeps the ring full of each kind of request.
        for (name, parts, perKick) in [("256 MiB ATTACH ×16", hugeParts, 16), ("ATTACH ×1000", normalParts, 1000),
                                       ("32,768-descriptor chains ×16", longParts, 16)] {
            let stop = StopFlag()
            let driver = DriverBox(requests: requests, memory: memory, mark: mark, parts: parts, perKick: perKick)
            let flood = OSThread {
                while !stop.value.load(ordering: .acquiring) { driver.cycle() }
            }
            var waits = Waits()
            let end = clock.now + .seconds(2)
            while clock.now < end {
                let start = clock.now
                _ = try frontend.getFeatures()
                waits.message.append(milliseconds(clock.now - start))
                let controlStart = clock.now
                _ = try controlRequest(control, #"{"op":"stats"}"#)
                waits.control.append(milliseconds(clock.now - controlStart))
                usleep(2000)
            }
            stop.value.store(true, ordering: .releasing)
            flood.join()
            report.note(group, "\(name): GET_FEATURES worst wait (ms)", waits.message.max() ?? -1)
            report.note(group, "\(name): GET_FEATURES p99 (ms)", waits.message.sorted()[waits.message.count * 99 / 100])
            report.note(group, "\(name): control stats worst wait (ms)", waits.control.max() ?? -1)
            report.note(group, "\(name): requests served in 2 s", Double(driver.served))
        }

        // Every default endpoint (0–0xffff, each with the MSI window) into domain 2, 256 per kick.
        memory.resetAllocations(keeping: mark)
        let attachStart = clock.now
        var attached = 0
        for first in stride(from: 0, to: 65_536, by: 256) {
            for endpoint in first..<first + 256 {
                requests.add(readable: [AttachRequest(domain: 2, endpoint: UInt32(endpoint)).encoded], writable: [4], indirect: true)
            }
            requests.kickNow()
            attached += requests.waitForUsed(256, timeout: .seconds(60), spinning: true).count
            memory.resetAllocations(keeping: mark)
        }
        report.note(group, "65,536 endpoints attached to one domain (ms)", milliseconds(clock.now - attachStart))
        report.note(group, "  endpoints attached", Double(attached))
        // A MAP+UNMAP pair in that domain and in a one-endpoint domain (endpoint 8, domain 1 above).
        func pairs(domain: UInt32) -> Double {
            let start = clock.now
            for i in 0..<5_000 {
                let iova = UInt64(i % 512) << 12
                requests.add(readable: [MapRequest(domain: domain, virtualStart: iova, virtualEnd: iova + 0xfff, physicalStart: iova, flags: 3).encoded],
                             writable: [4], indirect: true)
                requests.add(readable: [UnmapRequest(domain: domain, virtualStart: iova, virtualEnd: iova + 0xfff).encoded],
                             writable: [4], indirect: true)
                requests.kickNow()
                _ = requests.waitForUsed(2, spinning: true)
                if i % 64 == 0 { memory.resetAllocations(keeping: mark) }
            }
            return milliseconds(clock.now - start) / 5_000 * 1000
        }
        requests.add(readable: [AttachRequest(domain: 3, endpoint: 0xffff).encoded], writable: [4], indirect: true)
        requests.kickNow()
        _ = requests.waitForUsed(1)
        requests.add(readable: [AttachRequest(domain: 1, endpoint: 0xfffe).encoded], writable: [4], indirect: true)
        requests.kickNow()
        _ = requests.waitForUsed(1)
        // Domain 2 now holds 65,534 endpoints; domains 1 and 3 one each.
        var big2: [Double] = [], small: [Double] = []
        for _ in 0..<5 { big2.append(pairs(domain: 2)); small.append(pairs(domain: 3)) }
        report.note(group, "MAP+UNMAP pair, 65,534-endpoint domain (µs)", median(big2))
        report.note(group, "MAP+UNMAP pair, one-endpoint domain (µs)", median(small))
        report.note(group, "  ratio (≤ 2)", median(big2) / median(small))
        frontend.disconnect()
    }

    /// One control-socket request and its reply line.
    static func controlRequest(_ path: String, _ line: String) throws -> String {
        let fd = try SystemCall.socket(AF_UNIX, CInt(SOCK_STREAM.rawValue))
        let owned = OwnedFileDescriptor(fd)
        try SystemCall.connect(owned.descriptor, path: path)
        let bytes = Array((line + "\n").utf8)
        _ = try bytes.withUnsafeBytes { try SystemCall.send(owned.descriptor, $0) }
        var reply: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while !reply.contains(UInt8(ascii: "\n")) {
            var fds: [CInt] = []
            let n = try chunk.withUnsafeMutableBytes { try SystemCall.receive(owned.descriptor, into: $0, fds: &fds) }
            if n == 0 { break }
            reply += chunk[0..<n]
        }
        return String(decoding: reply, as: UTF8.self)
    }
}

/// The flooding driver, on its own thread: fills the ring with `perKick` copies of one chain and
/// waits for them, again and again.
private final class DriverBox: @unchecked Sendable {
    let requests: DriverQueue
    let memory: SharedMemory
    let mark: Int
    let parts: [DriverQueue.Descriptor]
    let perKick: Int
    private(set) var served = 0

    init(requests: DriverQueue, memory: SharedMemory, mark: Int, parts: [DriverQueue.Descriptor], perKick: Int) {
        self.requests = requests; self.memory = memory; self.mark = mark; self.parts = parts; self.perKick = perKick
    }

    func cycle() {
        for _ in 0..<perKick { requests.add(parts: parts, indirect: true) }
        requests.kickNow()
        served += requests.waitForUsed(perKick, timeout: .seconds(60), spinning: true).count
        memory.resetAllocations(keeping: mark)
    }
}

private final class StopFlag: Sendable {
    let value = Atomic<Bool>(false)
}
