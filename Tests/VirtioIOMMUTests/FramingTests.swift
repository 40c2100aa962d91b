import Testing
@_spi(Fuzzing) @testable import VirtioIOMMU

/// How requests are framed in descriptor chains (virtio 1.4 §5.13.6, §5.13.6.1).
@Suite struct FramingTests {
    /// Runs a request split into readable pieces of the given sizes, and a writable part split likewise.
    func handleSplit(_ device: inout IOMMUModel, _ request: [UInt8], readableCuts: [Int], writableSizes: [Int]) -> (Int, [[UInt8]]) {
        var pieces: [[UInt8]] = []
        var offset = 0
        for cut in readableCuts + [request.count] {
            pieces.append(Array(request[offset..<max(offset, min(cut, request.count))]))
            offset = max(offset, min(cut, request.count))
        }
        var writables = writableSizes.map { [UInt8](repeating: 0xAA, count: $0) }
        let readablePointers = pieces.map { piece -> UnsafeMutableRawBufferPointer in
            let p = UnsafeMutableRawBufferPointer.allocate(byteCount: piece.count, alignment: 1)
            p.copyBytes(from: piece)
            return p
        }
        let writablePointers = writables.map { w -> UnsafeMutableRawBufferPointer in
            let p = UnsafeMutableRawBufferPointer.allocate(byteCount: w.count, alignment: 1)
            p.copyBytes(from: w)
            return p
        }
        defer { (readablePointers + writablePointers).forEach { $0.deallocate() } }
        let used = readablePointers.map { UnsafeRawBufferPointer($0) }.withUnsafeBufferPointer { r in
            writablePointers.withUnsafeBufferPointer { w in device.handle(readable: r, writable: w) }
        }
        for i in writables.indices { writables[i] = Array(writablePointers[i]) }
        return (used, writables)
    }

    // §5.13.6.1: a writable part shorter than the tail → nothing written, used length 0.
    @Test func writableShorterThanTail() {
        var device = makeDevice()
        let (used, reply) = device.handle(request: AttachRequest(domain: 1, endpoint: plainEndpoint).encoded, writableSize: 3)
        #expect(used == 0 && reply == [0xAA, 0xAA, 0xAA])
        #expect(device.domains.isEmpty)  // not executed either
    }

    // §5.13.6: a body shorter than its request → INVAL (for each type).
    @Test(arguments: RequestType.allCases)
    func shortBody(type: RequestType) {
        var device = makePASIDDevice()
        let full = wellFormedRequest(type)
        // Readable sizes from the layouts (§5.13.6.3–§5.13.6.7, docs/pasid-extension.md §4).
        let specSize: [RequestType: Int] = [.attach: 20, .detach: 20, .map: 36, .unmap: 28, .probe: 72,
                                            .attachPASID: 28, .detachPASID: 28, .allocPASID: 20, .freePASID: 20]
        #expect(full.count == specSize[type])
        let writable = type == .probe ? 516 : (type == .allocPASID ? 12 : 4)
        let (used, reply) = device.handle(request: Array(full.dropLast()), writableSize: writable)
        #expect(used == writable)
        #expect(reply[writable - 4] == 4)  // S_INVAL
        #expect(device.counters.count(type, .invalid) == 1)
    }

    // §5.13.6: requests split over several buffers, at every cut point, give the same answer.
    @Test func everySplitOfAMapRequest() {
        let request = MapRequest(domain: 1, virtualStart: 0x1000, virtualEnd: 0x1fff, physicalStart: 0x8000, flags: 3).encoded
        for cut in 0...request.count {
            var device = makeDevice()
            _ = device.attach(plainEndpoint, to: 1)
            let (used, replies) = handleSplit(&device, request, readableCuts: [cut], writableSizes: [2, 2])
            #expect(used == 4)
            #expect(replies == [[0, 0], [0, 0]])
            #expect(device.mappings(of: 1).first?.physicalStart == 0x8000)
        }
    }

    // §5.13.6: the tail is the last 4 bytes of the writable part, even across buffers; bytes before it are zeroed.
    @Test func tailAtEndOfLargerWritablePart() {
        var device = makeDevice()
        let (used, replies) = handleSplit(&device, AttachRequest(domain: 1, endpoint: 999).encoded,
                                          readableCuts: [7, 13], writableSizes: [3, 3, 2])
        #expect(used == 8)
        #expect(replies == [[0, 0, 0], [0, 6, 0], [0, 0]])  // tail = bytes 4..7: S_NOENT = 6
    }

    // §5.13.6.7: PROBE properties then tail, split over writable buffers.
    @Test func probeAcrossBuffers() {
        var device = makeDevice()
        let (used, replies) = handleSplit(&device, ProbeRequest(endpoint: msiEndpoint).encoded,
                                          readableCuts: [1, 40], writableSizes: [10, 500, 6])
        #expect(used == 516)
        let flat = replies.flatMap { $0 }
        #expect(ResvMemProperty.parse(Array(flat[0..<512])) == [.x86MSIWindow])
        #expect(flat[512...] == [0, 0, 0, 0])  // S_OK = 0, tail.reserved = 0
    }

    // Extra readable bytes after the request are ignored.
    @Test func extraReadableBytesIgnored() {
        var device = makeDevice()
        #expect(device.send(AttachRequest(domain: 1, endpoint: plainEndpoint).encoded + [1, 2, 3, 4]) == .ok)
    }

    // Request types are counted by status; unanswered ones separately.
    @Test func countersByTypeAndStatus() {
        var device = makeDevice()
        _ = device.attach(plainEndpoint, to: 1)
        _ = device.attach(999, to: 1)
        _ = device.map(1, 0x1000, 0x1fff)
        _ = device.send([9, 0, 0, 0])
        #expect(device.counters.count(.attach, .ok) == 1)
        #expect(device.counters.count(.attach, .noEntry) == 1)
        #expect(device.counters.count(.attach) == 2)
        #expect(device.counters.count(.map, .ok) == 1)
        #expect(device.counters.unanswered == 1)
    }
}

/// Edge arithmetic: ranges at 0 and 2^64−1, reversed ranges, one-byte ranges, huge counts.
@Suite struct EdgeArithmeticTests {
    func byteDevice() -> IOMMUModel {
        var device = makeDevice(testConfiguration(features: [.mapUnmap, .probe, .mmio, .bypassConfig], pageSizeMask: 1, bypass: false))
        _ = device.attach(plainEndpoint, to: 1)
        return device
    }

    @Test func oneByteMappings() throws {
        var device = byteDevice()
        #expect(device.map(1, 0, 0, phys: 7) == .ok)
        #expect(device.map(1, .max, .max, phys: .max) == .ok)
        #expect(try device.translate(endpoint: plainEndpoint, iova: 0, length: 1, access: .read) == [Segment(address: 7, length: 1)])
        #expect(try device.translate(endpoint: plainEndpoint, iova: .max, length: 1, access: .write) == [Segment(address: .max, length: 1)])
        #expect(device.unmap(1, .max, .max) == .ok)
        #expect(device.unmap(1, 0, 0) == .ok)
        #expect(device.mappingCount == 0)
    }

    @Test func wholeSpaceMapping() throws {
        var device = byteDevice()
        #expect(device.map(1, 0, .max, phys: 0) == .ok)
        #expect(device.map(1, 5, 5) == .invalid)
        #expect(try device.translate(endpoint: plainEndpoint, iova: 1, length: .max, access: .read)
                == [Segment(address: 1, length: .max)])
        #expect(device.unmap(1, 1, .max) == .range)
        #expect(device.unmap(1, 0, .max) == .ok)
    }

    @Test func reversedRanges() {
        var device = byteDevice()
        #expect(device.map(1, 10, 9) == .invalid)
        #expect(device.unmap(1, 10, 9) == .invalid)
        #expect(device.map(1, .max, 0) == .invalid)
    }

    @Test func physicalOverflow() {
        var device = byteDevice()
        #expect(device.map(1, 0, 1, phys: .max) == .range)
        #expect(device.map(1, 0, 0, phys: .max) == .ok)
    }

    @Test func translateRangeArithmetic() {
        var device = byteDevice()
        #expect(throws: TranslationError.invalidRange) {
            try device.translate(endpoint: plainEndpoint, iova: .max, length: 2, access: .read)
        }
        #expect(throws: TranslationError.invalidRange) {
            try device.translate(endpoint: plainEndpoint, iova: 0, length: 0, access: .read)
        }
        #expect(device.pendingFaultCount == 0)
    }

    @Test func translateAcrossAdjacentMappings() throws {
        var device = makeDevice(testConfiguration(bypass: false))
        _ = device.attach(plainEndpoint, to: 1)
        _ = device.map(1, 0x1000, 0x1fff, phys: 0x10000)
        _ = device.map(1, 0x2000, 0x2fff, phys: 0x11000)  // physically contiguous: merged
        _ = device.map(1, 0x3000, 0x3fff, phys: 0x50000)  // not contiguous: new segment
        #expect(try device.translate(endpoint: plainEndpoint, iova: 0x1800, length: 0x2000, access: .read)
                == [Segment(address: 0x10800, length: 0x1800), Segment(address: 0x50000, length: 0x800)])
        #expect(throws: TranslationError.self) {
            try device.translate(endpoint: plainEndpoint, iova: 0x3800, length: 0x1000, access: .read)
        }
        #expect(device.popFault()?.address == 0x4000)
    }

    @Test func msiWindowIsIdentityWhenAttached() throws {
        var device = makeDevice(testConfiguration(bypass: false))
        _ = device.attach(msiEndpoint, to: 1)
        #expect(try device.translate(endpoint: msiEndpoint, iova: 0xfee0_0000, length: 4, access: .write)
                == [Segment(address: 0xfee0_0000, length: 4)])
    }

    @Test func resetClearsStateButKeepsBypass() throws {
        var device = makeDevice(testConfiguration(bypass: false))
        _ = device.attach(plainEndpoint, to: 1)
        _ = device.map(1, 0x1000, 0x1fff)
        _ = try? device.translate(endpoint: plainEndpoint, iova: 0x9000, length: 1, access: .read)
        device.reset()
        #expect(device.domains.isEmpty && device.mappingCount == 0 && device.pendingFaultCount == 0)
        #expect(device.endpoints.values.allSatisfy { $0.domain == nil })
        #expect(device.configSpace.bypass == 0)
        // INPUT_RANGE, DOMAIN_RANGE, MAP_UNMAP, PROBE, MMIO, BYPASS_CONFIG (bits 0, 1, 2, 4, 5, 6; §5.13.3)
        #expect(device.negotiatedFeatures.rawValue == 1 << 0 | 1 << 1 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 6)
    }
}
