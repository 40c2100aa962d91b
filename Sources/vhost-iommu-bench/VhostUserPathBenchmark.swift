import Glibc
import VhostUser
import TestSupport
import VhostUserTestSupport
import VirtioIOMMU

/// The vhost-user path: the test front-end drives the real daemon over a real socket, with memfd
/// guest memory and eventfds, polling the used ring the way the Linux driver spins.
enum VhostUserPathBenchmark {
    /// Starts `vhost-iommu` from the same build folder; returns its pid and socket path.
    static func startDaemon(pollMaxMicroseconds: Int) -> (pid_t, String)? {
        guard let path = ownExecutablePath(), let slash = path.lastIndex(of: "/") else { return nil }
        let daemon = String(path[..<slash]) + "/vhost-iommu"
        let socket = "/tmp/vhost-iommu-bench-\(getpid()).sock"
        guard let pid = spawn([daemon, "--socket-path", socket, "--pasid-store", "memory", "--log-level", "error",
                               "--bypass", "off", "--poll-max-us", "\(pollMaxMicroseconds)"]) else { return nil }
        _ = waitUntil(.seconds(5)) { access(socket, F_OK) == 0 }
        return (pid, socket)
    }

    /// Each configuration in turn, in one run: the daemon blocking in epoll (--poll-max-us 0) and polling
    /// adaptively (its default, 100 µs), with EVENT_IDX on and off.
    static func run(report: inout Report) {
        for poll in [0, 100] {
            for eventIndex in [true, false] {
                guard let (pid, socket) = startDaemon(pollMaxMicroseconds: poll) else { print("cannot start the daemon"); return }
                defer { kill(pid, SIGTERM); var s: Int32 = 0; waitpid(pid, &s, 0) }
                do {
                    try measureOne(socket: socket, eventIndex: eventIndex, label: "\(poll == 0 ? "blocking" : "poll ≤\(poll)µs"), EVENT_IDX \(eventIndex ? "on" : "off")", report: &report)
                } catch {
                    print("vhost-user benchmark failed: \(error)")
                }
            }
        }
    }

    static func measureOne(socket: String, eventIndex: Bool, label: String, report: inout Report) throws {
        let frontend = try TestFrontend(connectingTo: socket)
        let memory = try SharedMemory(size: 64 << 20)
        let requests = try DriverQueue(memory: memory, index: 0, size: 256)
        let events = try DriverQueue(memory: memory, index: 1, size: 256)
        let offered = try frontend.initialize(queues: [requests, events])
        var features = offered & (TransportFeatures.all | Features.standard.rawValue)
        if !eventIndex { features &= ~TransportFeatures.eventIndex }
        try frontend.start(features: features, memory: [memory], queues: [requests, events])
        let mark = memory.allocated

        // Requests are written once into guest memory and re-posted, as a driver reuses its buffers.
        func post(_ bytes: [UInt8]) -> UInt16 { requests.add(readable: [bytes], writable: [4], indirect: true) }
        _ = post(AttachRequest(domain: 1, endpoint: 8).encoded); requests.kickNow(); _ = requests.waitForUsed(1)

        // Single-request round trip: kick → used, MAP then UNMAP, 20k pairs.
        var samples: [Double] = []
        samples.reserveCapacity(40_000)
        let clock = ContinuousClock()
        for i in 0..<20_000 {
            let iova = UInt64(i % 1024) << 12
            for request in [MapRequest(domain: 1, virtualStart: iova, virtualEnd: iova + 0xfff, physicalStart: iova, flags: 3).encoded,
                            UnmapRequest(domain: 1, virtualStart: iova, virtualEnd: iova + 0xfff).encoded] {
                _ = post(request)
                let start = clock.now
                requests.kickNow()
                while requests.collectUsed().isEmpty {}
                let elapsed = clock.now - start
                samples.append(Double(elapsed.components.attoseconds) / 1e9 + Double(elapsed.components.seconds) * 1e9)
            }
            if i % 64 == 0 { memory.resetAllocations(keeping: mark) }
        }
        samples.sort()
        report.note(label, "round trip p50 (µs)", samples[samples.count / 2] / 1000)
        report.note(label, "round trip p99 (µs)", samples[samples.count * 99 / 100] / 1000)

        // Throughput: 256 requests per kick (128 MAP + 128 UNMAP), 400 kicks. First as Linux adds them
        // (avail.idx published per request, a polling device starts before the kick), then all 256
        // published at once so that kick → 256 used times the device alone; the driver's own cost
        // (writing requests and descriptors) is timed apart.
        let maps = (0..<128).map { MapRequest(domain: 1, virtualStart: UInt64($0) << 12, virtualEnd: UInt64($0) << 12 + 0xfff, physicalStart: 0, flags: 3).encoded }
        let unmaps = (0..<128).map { UnmapRequest(domain: 1, virtualStart: UInt64($0) << 12, virtualEnd: UInt64($0) << 12 + 0xfff).encoded }
        func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }
        for batched in [false, true] {
            memory.resetAllocations(keeping: mark)
            var posting = Duration.zero
            let start = clock.now
            var total = 0
            for _ in 0..<400 {
                let postStart = clock.now
                memory.resetAllocations(keeping: mark)
                let heads = (maps + unmaps).map { requests.add(readable: [$0], writable: [4], indirect: true, publish: !batched) }
                posting += clock.now - postStart
                if batched { requests.publish(heads) }
                requests.kickNow()
                total += requests.waitForUsed(256, spinning: true).count
            }
            let elapsed = clock.now - start
            if batched {
                report.note(label, "requests/s, 256 published at once, kick → used", Double(total) / seconds(elapsed - posting))
            } else {
                report.note(label, "requests/s with 256 per kick, driver included", Double(total) / seconds(elapsed))
                report.note(label, "  of which driver-side posting (%)", 100 * seconds(posting) / seconds(elapsed))
            }
        }
        frontend.disconnect()
    }
}
