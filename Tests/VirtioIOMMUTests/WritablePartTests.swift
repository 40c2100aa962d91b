import Testing
@_spi(Fuzzing) @testable import VirtioIOMMU

/// Runs one request with its writable part split into buffers of the given sizes, each filled with 0xAA
/// (unwritten bytes stay 0xAA); the used length and the buffers as the driver sees them afterwards.
func handleChain(_ device: inout IOMMUModel, _ request: [UInt8], writableSizes: [Int]) -> (Int, [[UInt8]]) {
    let buffers = writableSizes.map { size -> UnsafeMutableRawBufferPointer in
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 1)
        buffer.initializeMemory(as: UInt8.self, repeating: 0xAA)
        return buffer
    }
    defer { buffers.forEach { $0.deallocate() } }
    let used = request.withUnsafeBytes { readable in
        [readable].withUnsafeBufferPointer { r in buffers.withUnsafeBufferPointer { w in device.handle(readable: r, writable: w) } }
    }
    return (used, buffers.map { Array($0) })
}

/// Issue 13, "write only what the reply owes": the size of the writable part bounds what one request
/// writes, and a used length of 0 always means the writable part is as the driver left it.
@Suite struct WritablePartTests {
    /// The slack beyond what a reply owes that the model still answers (docs/device-behaviour.md).
    static let slack = 64 * 1024

    /// The writable bytes each reply owes, from the layouts: the 4-byte tail (§5.13.6); PROBE's
    /// properties[probe_size] before it (§5.13.6.7; the test devices' probe_size is 512); ALLOC_PASID's
    /// le32 pasid and reserved[4] before it (docs/pasid-extension.md §4).
    static func owed(_ type: RequestType) -> Int {
        switch type {
        case .probe: 512 + 4
        case .allocPASID: 8 + 4
        case .attach, .detach, .map, .unmap, .attachPASID, .detachPASID, .freePASID: 4
        }
    }

    // virtio §2.7.8.2 and §5.13.6.1 (choice, docs/device-behaviour.md "Framing"): a writable part more than
    // 64 KiB beyond what the reply owes is refused: not executed, nothing written, used length 0, counted
    // as unanswered. One byte less is answered as before.
    @Test(arguments: RequestType.allCases)
    func oversizedWritablePartIsRefusedUntouched(type: RequestType) {
        #expect(IOMMUModel.maxWritableSlack == Self.slack)
        var device = makePASIDDevice()
        let size = Self.owed(type) + Self.slack + 1
        let (used, buffers) = handleChain(&device, wellFormedRequest(type), writableSizes: [size])
        #expect(used == 0)
        #expect(buffers[0].allSatisfy { $0 == 0xAA })
        #expect(device.counters.count(type) == 0)  // not executed
        #expect(device.domains.isEmpty && device.heldPASIDs.isEmpty)
        #expect(device.counters.unanswered == 1 && device.counters.oversizedWritableParts == 1)
        // Split across buffers, the total counts.
        let (splitUsed, split) = handleChain(&device, wellFormedRequest(type), writableSizes: [3, size - 3])
        #expect(splitUsed == 0 && split.allSatisfy { $0.allSatisfy { $0 == 0xAA } })
        let (usedAtBound, _) = handleChain(&device, wellFormedRequest(type), writableSizes: [size - 1])
        #expect(usedAtBound == size - 1)
        #expect(device.counters.count(type) == 1)
    }

    // §5.13.6 D9 and virtio §2.7.8.2: up to the bound the reply is as before: every byte before the tail
    // is written (zero), the tail is the last 4 bytes, and the used length is the whole part (the Linux
    // driver accepts a reply only then).
    @Test func slackWithinTheBoundIsZeroed() {
        var device = makePASIDDevice()
        let (used, buffers) = handleChain(&device, wellFormedRequest(.attach), writableSizes: [1000, 4 + Self.slack - 1000])
        #expect(used == 4 + Self.slack)
        let flat = buffers.flatMap { $0 }
        #expect(flat[0..<Self.slack].allSatisfy { $0 == 0 })
        #expect(Array(flat[Self.slack...]) == [0, 0, 0, 0])  // S_OK = 0, reserved 0
    }

    // §5.13.6.7.2 D41 and §5.13.6.8: PROBE with the largest answered part: properties packed from 0,
    // the rest of the area and the slack zeroed, the tail last.
    @Test func probeWithSlackZeroFillsUpToTheTail() {
        var device = makePASIDDevice()
        let size = 516 + Self.slack
        let (used, buffers) = handleChain(&device, wellFormedRequest(.probe), writableSizes: [30, size - 30])
        #expect(used == size)
        let flat = buffers.flatMap { $0 }
        #expect(ResvMemProperty.parse(Array(flat[0..<512])) == [.x86MSIWindow])
        #expect(flat.le(UInt16.self, at: 24) == 0x800)  // the PASID property of endpoint 8 (width 20)
        #expect(flat[32..<(size - 4)].allSatisfy { $0 == 0 })
        #expect(Array(flat[(size - 4)...]) == [0, 0, 0, 0])
    }

    // docs/pasid-extension.md §4 (ALLOC_PASID: reserved2 zeroed) with the largest answered part.
    @Test func allocPASIDWithSlackZeroFillsUpToTheTail() {
        var device = makePASIDDevice()
        let size = 12 + Self.slack
        let (used, buffers) = handleChain(&device, wellFormedRequest(.allocPASID), writableSizes: [size])
        #expect(used == size)
        #expect(buffers[0].le(UInt32.self, at: 0) == 1)
        #expect(buffers[0][4..<(size - 4)].allSatisfy { $0 == 0 })
        #expect(Array(buffers[0][(size - 4)...]) == [0, 0, 0, 0])
    }

    // D8, D36, §5.13.6.1 and docs/device-behaviour.md "Framing": every path that completes a request with
    // used length 0 leaves the writable part untouched, whole or split, and changes no state.
    @Test func usedLengthZeroLeavesTheWritablePartUntouched() {
        let attach = wellFormedRequest(.attach)
        // Feature bits by number (virtio 1.4 §5.13.3): MAP_UNMAP = 2, PROBE = 4, BYPASS_CONFIG = 6; PASID = 63.
        let noFeatures = Features(rawValue: 0)
        let mapUnmapOnly = Features(rawValue: 1 << 2)
        let allButPASID = Features(rawValue: 1 << 0 | 1 << 1 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 6)
        let cases: [(String, Features, [UInt8], Int)] = [
            ("unknown type (D8)", allButPASID, [0x42, 0, 0, 0] + [UInt8](repeating: 0, count: 60), 64),
            ("type 0 (D8)", allButPASID, [0, 0, 0, 0] + [UInt8](repeating: 0, count: 60), 64),
            ("no readable head", allButPASID, [1, 0, 0], 64),
            ("no readable part", allButPASID, [], 64),
            ("no room for the tail (§5.13.6.1)", allButPASID, attach, 3),
            ("MAP without F_MAP_UNMAP", noFeatures, wellFormedRequest(.map), 64),
            ("UNMAP without F_MAP_UNMAP", noFeatures, wellFormedRequest(.unmap), 64),
            ("PROBE without F_PROBE (D36)", mapUnmapOnly, wellFormedRequest(.probe), 600),
            ("ATTACH_PASID without F_PASID", allButPASID, wellFormedRequest(.attachPASID), 64),
            ("DETACH_PASID without F_PASID", allButPASID, wellFormedRequest(.detachPASID), 64),
            ("ALLOC_PASID without F_PASID", allButPASID, wellFormedRequest(.allocPASID), 64),
            ("FREE_PASID without F_PASID", allButPASID, wellFormedRequest(.freePASID), 64),
            ("oversized writable part", allButPASID, attach, 4 + Self.slack + 1),
        ]
        for (name, features, request, size) in cases {
            for sizes in [[size], [size / 2, size - size / 2]] where !sizes.contains(0) {
                var device = makePASIDDevice()
                device.negotiate(features)
                let (used, buffers) = handleChain(&device, request, writableSizes: sizes)
                #expect(used == 0, "\(name)")
                #expect(buffers.allSatisfy { $0.allSatisfy { $0 == 0xAA } }, "\(name): written, yet used length 0")
                #expect(device.domains.isEmpty && device.heldPASIDs.isEmpty, "\(name): executed")
                #expect(device.counters.unanswered == 1, "\(name)")
            }
        }
    }

    // §5.13.6.9 and D51: an event buffer comes back untouched when no fault is pending (nil: it stays
    // posted) or when it cannot hold a whole record (used length 0, the fault stays queued).
    @Test func faultDeliveryWritesNothingWhenItReportsNothing() {
        var device = makeDevice(testConfiguration(bypass: false))
        func deliver(_ sizes: [Int]) -> (Int?, [[UInt8]]) {
            let buffers = sizes.map { size -> UnsafeMutableRawBufferPointer in
                let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 1)
                buffer.initializeMemory(as: UInt8.self, repeating: 0xAA)
                return buffer
            }
            defer { buffers.forEach { $0.deallocate() } }
            let used = buffers.withUnsafeBufferPointer { device.deliverFault(into: $0) }
            return (used, buffers.map { Array($0) })
        }
        let (idle, idleBuffers) = deliver([24])
        #expect(idle == nil && idleBuffers[0].allSatisfy { $0 == 0xAA })
        _ = try? device.translate(endpoint: plainEndpoint, iova: 0x7000, length: 1, access: .read)
        for sizes in [[23], [10, 13], [1]] {
            let (used, buffers) = deliver(sizes)
            #expect(used == 0 && buffers.allSatisfy { $0.allSatisfy { $0 == 0xAA } }, "\(sizes)")
            #expect(device.pendingFaultCount == 1)
        }
        let (used, buffers) = deliver([10, 14])
        #expect(used == 24)
        #expect(Fault(event: buffers.flatMap { $0 })?.address == 0x7000)
    }
}
