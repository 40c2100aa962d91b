import VirtioIOMMU

/// Issue 13, "bounded work per request": the sizes and counts a guest picks must not make one request
/// cost much more than a normal one. Each comparison runs side by side in one run and reports the ratio.
enum BoundedWorkBenchmark {
    /// The slack the model allows beyond what a reply owes (`Device.maxWritableSlack`).
    static let slack = IOMMUModel.maxWritableSlack

    static func run(report: inout Report, endpoints: Int = 65_536) {
        writablePartRows(report: &report)
        reservedRegionRows(report: &report, count: endpoints)
    }

    /// Nanoseconds per call of `body`, with the iteration count chosen so that one repetition takes
    /// about `seconds` (a 256 MiB request may take 100 ms, a normal one 100 ns).
    static func measureAdaptively(seconds: Double = 0.2, _ body: () -> Void) -> Double {
        let probe = measure(iterations: 1, repetitions: 1, body)
        let iterations = max(3, min(1_000_000, Int(seconds * 1e9 / max(probe, 1))))
        return measure(iterations: iterations, repetitions: 5, body)
    }

    /// Normal ATTACH (a 4-byte writable part) against the same ATTACH with a huge writable part in one
    /// buffer, and with the largest part the model still answers (owed bytes + `slack`).
    static func writablePartRows(report: inout Report) {
        var device = try! IOMMUModel(configuration: Configuration(endpoints: [1: [.x86MSIWindow]], bypass: false))
        device.negotiate(.standard)
        // Alternate between two domains, so that each ATTACH moves the endpoint as Linux's do.
        let requests = [AttachRequest(domain: 1, endpoint: 1).encoded, AttachRequest(domain: 2, endpoint: 1).encoded]
        let group = "ATTACH, writable part"
        var results: [(String, Double)] = []
        for (name, size) in [("4 B (normal)", 4), ("4 B + slack bound (\(slack / 1024) KiB)", 4 + slack),
                             ("256 MiB, one buffer", 256 << 20)] {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: 0xAA)  // fault the pages in, as guest memory is
            var i = 0
            let ns = measureAdaptively {
                let request = requests[i & 1]; i &+= 1
                _ = request.withUnsafeBytes { readable in
                    [readable].withUnsafeBufferPointer { r in
                        [buffer].withUnsafeBufferPointer { w in device.handle(readable: r, writable: w) }
                    }
                }
            }
            report.add(group, name, ns)
            results.append((name, ns))
        }
        for (name, ns) in results.dropFirst() { report.ratio(group, "ratio \(name) / normal", ns / results[0].1) }
    }

    /// 65,536 endpoints with the x86 MSI window attached to one domain: the time to attach them all,
    /// and a MAP+UNMAP pair there against a pair in a one-endpoint domain of the same device.
    static func reservedRegionRows(report: inout Report, count: Int = 65_536, deadline: Duration = .seconds(60)) {
        let group = "\(count) endpoints, MSI"
        var endpoints: [UInt32: [ReservedRegion]] = [:]
        for id in 0...UInt32(count) { endpoints[id] = [.x86MSIWindow] }  // id `count` is the lone one
        let limits = Limits(maxMappingsPerDomain: 1 << 12, maxMappingsTotal: 1 << 13)
        var device = try! IOMMUModel(configuration: Configuration(endpoints: endpoints, bypass: false, limits: limits))
        device.negotiate(.standard)
        let clock = ContinuousClock()
        let start = clock.now
        var attached = 0
        while attached < count && clock.now - start < deadline {
            precondition(device.execute(AttachRequest(domain: 1, endpoint: UInt32(attached))) == .ok)
            attached += 1
        }
        let elapsed = clock.now - start
        let ms = Double(elapsed.components.seconds) * 1e3 + Double(elapsed.components.attoseconds) / 1e15
        report.note(group, "ATTACH all to one domain, total ms", ms)
        if attached < count {
            report.note(group, "  stopped at the deadline: attached", Double(attached))
            return
        }
        precondition(device.execute(AttachRequest(domain: 2, endpoint: UInt32(count))) == .ok)
        var pairs: [Double] = []
        for domain: UInt32 in [1, 2] {
            var i: UInt64 = 0
            pairs.append(measureAdaptively {
                let page = (1 << 36) - 1 - (i & 255); i &+= 1
                let map = MapRequest(domain: domain, virtualStart: page << 12, virtualEnd: (page << 12) + 0xfff,
                                     physicalStart: page << 12, flags: 3)
                precondition(device.execute(map) == .ok)
                _ = device.execute(UnmapRequest(domain: domain, virtualStart: page << 12, virtualEnd: (page << 12) + 0xfff))
            })
        }
        report.add(group, "MAP+UNMAP pair, domain of \(count)", pairs[0])
        report.add(group, "MAP+UNMAP pair, domain of 1", pairs[1])
        report.ratio(group, "ratio pair \(count) / 1", pairs[0] / pairs[1])
    }
}
