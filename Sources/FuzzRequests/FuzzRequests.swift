// libFuzzer target: random sequences of virtio-iommu requests (standard and PASID), translations,
// config writes, resets and fault deliveries against the device model, with every invariant checked
// after each step. Built by scripts/fuzz with -sanitize=fuzzer -DFUZZING; otherwise a tiny program.
import FuzzSupport
import PASIDAllocators
@_spi(Fuzzing) import VirtioIOMMU

func fuzzRequests(_ data: UnsafeBufferPointer<UInt8>) {
    var input = ByteReader(data)
    let setup = input.u8()
    let regions: [[ReservedRegion]] = [[], [.x86MSIWindow], [ReservedRegion(.reserved, IOVARange(first: 0x10_0000, last: 0x10_ffff)!)]]
    var endpoints: [UInt32: [ReservedRegion]] = [:]
    for id in 0..<8 as Range<UInt32> { endpoints[id] = regions[Int(id) % 3] }
    var features: Features = [.mapUnmap, .inputRange, .domainRange, .probe, .mmio, .bypassConfig, .pasid]
    if setup & 0x40 != 0 { features = [.mapUnmap, .probe, .bypass, .pasid] }
    var configuration = Configuration(
        endpoints: endpoints, pageSizeMask: setup & 1 != 0 ? 1 : ~0xfff,
        inputRange: features.contains(.inputRange) ? IOVARange(first: 0, last: (1 << 48) - 1)! : .all,
        domainRange: features.contains(.domainRange) ? 0...64 : 0...UInt32.max,
        bypass: setup & 2 != 0, features: features,
        limits: Limits(maxDomains: 6, maxMappingsPerDomain: 300, maxMappingsTotal: 500, maxPendingFaults: 8))
    configuration.pasidWidths = [1: 4, 2: 20, 5: 1]
    guard let store = try? InMemoryPASIDStore(width: 6, defaultQuota: 5),
          var device = try? IOMMUModel(configuration: configuration, pasidStore: store, owner: "fuzz") else { return }
    device.negotiate(Features(rawValue: features.rawValue & (setup & 4 != 0 ? ~0 : ~Features.pasid.rawValue)))
    var steps = 0
    defer { if let problem = device.invariantViolation() { fatalError("invariant broken: \(problem)") } }
    while !input.isAtEnd && steps < 1024 {
        steps += 1
        switch input.u8() % 8 {
        case 0:  // raw request bytes, split at a fuzzed point, with a fuzzed writable part
            let request = input.take(Int(input.u8()) % 96)
            let cut = request.isEmpty ? 0 : Int(input.u8()) % (request.count + 1)
            var reply = [UInt8](repeating: 0xAA, count: Int(input.u8()) * 3)  // 0xAA: not written
            let cutAt = Int(input.u8()) % (reply.count + 1)
            request.withUnsafeBytes { raw in
                reply.withUnsafeMutableBytes { out in
                    let readable = [UnsafeRawBufferPointer(rebasing: raw[..<cut]), UnsafeRawBufferPointer(rebasing: raw[cut...])]
                    let writable = [UnsafeMutableRawBufferPointer(rebasing: out[..<cutAt]), UnsafeMutableRawBufferPointer(rebasing: out[cutAt...])]
                    readable.withUnsafeBufferPointer { r in
                        writable.withUnsafeBufferPointer { w in
                            let used = device.handle(readable: r, writable: w)
                            precondition(used == 0 || used == out.count, "used length \(used) of \(out.count)")
                            // D8, D36, §5.13.6.1: used length 0 means nothing was written.
                            precondition(used != 0 || out.allSatisfy { $0 == 0xAA }, "used length 0, yet written")
                        }
                    }
                }
            }
        case 1:  // a structured MAP/UNMAP/ATTACH to reach deep states quickly
            let domain = UInt32(input.u8() % 8), endpoint = UInt32(input.u8() % 9)
            let start = UInt64(input.u8()) << 12, size = (UInt64(input.u8() % 16) + 1) << 12
            switch input.u8() % 6 {
            case 0: _ = device.handle(request: AttachRequest(domain: domain, endpoint: endpoint, flags: UInt32(input.u8() % 2)).encoded, writableSize: 4)
            case 1: _ = device.handle(request: DetachRequest(domain: domain, endpoint: endpoint).encoded, writableSize: 4)
            case 2: _ = device.handle(request: MapRequest(domain: domain, virtualStart: start, virtualEnd: start + size - 1, physicalStart: start, flags: UInt32(input.u8() % 8)).encoded, writableSize: 4)
            case 3: _ = device.handle(request: UnmapRequest(domain: domain, virtualStart: start, virtualEnd: start + size - 1).encoded, writableSize: 4)
            case 4: _ = device.handle(request: PASIDAttachmentRequest(domain: domain, endpoint: endpoint, pasid: UInt32(input.u8() % 70)).encoded(input.u8() % 2 == 0 ? .attachPASID : .detachPASID), writableSize: 4)
            default: _ = device.handle(request: input.u8() % 2 == 0 ? AllocPASIDRequest(min: UInt32(input.u8() % 70), max: UInt32(input.u8() % 70)).encoded : FreePASIDRequest(pasid: UInt32(input.u8() % 70)).encoded, writableSize: 12)
            }
        case 2:  // translation, with or without a PASID
            let endpoint = UInt32(input.u8() % 10)
            let pasid = input.u8()
            let iova = input.u8() % 4 == 0 ? input.u64() : UInt64(input.u8()) << 12 | UInt64(input.u8())
            let length = input.u8() % 4 == 0 ? input.u64() : UInt64(input.u32() % 0x20000)
            let access = Access(rawValue: input.u8() % 4)
            if let segments = try? device.translate(endpoint: endpoint, pasid: pasid == 0 ? nil : UInt32(pasid), iova: iova, length: length, access: access) {
                let total = segments.reduce(UInt64(0)) { $0 &+ $1.length }
                precondition(total == length, "segments cover \(total) of \(length)")
            }
        case 3:  // config write
            let offset = Int(input.u8() % 44)
            _ = try? device.writeConfig(offset: offset, bytes: input.take(Int(input.u8() % 9)))
        case 4:
            device.reset()
        case 5:  // deliver a fault into an event buffer of fuzzed size
            var buffer = [UInt8](repeating: 0xAA, count: Int(input.u8() % 40))
            buffer.withUnsafeMutableBytes { raw in
                [raw].withUnsafeBufferPointer {
                    let used = device.deliverFault(into: $0)
                    precondition(used == nil || used == 0 || used == 24)
                    // D51: no report, or one that does not fit, leaves the buffer as it was.
                    precondition((used ?? 0) != 0 || raw.allSatisfy { $0 == 0xAA }, "event buffer written, yet not used")
                }
            }
        case 6:
            device.negotiate(Features(rawValue: input.u64()))
        default:
            _ = device.popFault()
        }
        // The full check walks every mapping: run it often enough to pin a failure to a few steps.
        if steps % 16 == 0, let problem = device.invariantViolation() { fatalError("invariant broken: \(problem)") }
    }
}

@main struct FuzzRequestsMain {
    static func main() throws { try runFuzzTarget("FuzzRequests", fuzzRequests) }
}
