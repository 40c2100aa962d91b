import Testing
@_spi(Fuzzing) @testable import VirtioIOMMU

/// One test per device requirement of virtio 1.4 §5.13 that a device can observe
/// (numbering from shared/reference/virtio-iommu.md §1.10; D5's system reset and D46 are not observable).
@Suite struct FeatureAndConfigRules {
    // §5.13.3.2 D1: the device offers F_MAP_UNMAP, bit 2 (a configuration without it is refused).
    @Test func d1_mapUnmapIsOffered() {
        #expect(Configuration(endpoints: [:]).features.rawValue & 1 << 2 != 0)
        var config = testConfiguration()
        config.features.remove(.mapUnmap)
        #expect(throws: ConfigurationError.mapUnmapNotOffered) { try IOMMUModel(configuration: config) }
    }

    // §5.13.3.2 D2: a new device does not offer legacy F_BYPASS (bit 3) by default.
    @Test func d2_legacyBypassNotOfferedByDefault() {
        #expect(Configuration(endpoints: [:]).features.rawValue & 1 << 3 == 0)
    }

    // §5.13.3: what a default device offers, by bit number: INPUT_RANGE (0), DOMAIN_RANGE (1),
    // MAP_UNMAP (2), PROBE (4), MMIO (5), BYPASS_CONFIG (6); not the legacy BYPASS (3, D2, D3).
    @Test func defaultOfferedFeatures() {
        #expect(Configuration(endpoints: [:]).features.rawValue == 1 << 0 | 1 << 1 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 6)
        #expect(makeDevice().negotiatedFeatures.rawValue == 1 << 0 | 1 << 1 | 1 << 2 | 1 << 4 | 1 << 5 | 1 << 6)
    }

    // §5.13.3.2 D3: never F_BYPASS together with F_BYPASS_CONFIG.
    @Test func d3_bothBypassFeaturesRefused() {
        var config = testConfiguration()
        config.features.insert(.bypass)
        #expect(throws: ConfigurationError.bothBypassFeatures) { try IOMMUModel(configuration: config) }
    }

    // §5.13.4.2 D4: page_size_mask has at least one bit set.
    @Test func d4_pageSizeMaskNotEmpty() {
        #expect(throws: ConfigurationError.emptyPageSizeMask) {
            try IOMMUModel(configuration: testConfiguration(pageSizeMask: 0))
        }
        #expect(makeDevice().configSpace.pageSizeMask == ~0xfff)
    }

    // §5.13.4.2 D5: bypass is initialized to 1 with BYPASS_CONFIG, and does not change on device reset.
    @Test func d5_bypassInitialValueAndStickyOnReset() throws {
        var device = makeDevice()
        #expect(device.configSpace.bypass == 1)
        var bytes = device.configSpace.bytes
        bytes[36] = 0
        try device.writeConfig(offset: 0, bytes: bytes)
        device.reset()
        #expect(device.configSpace.bypass == 0)
    }

    // §5.13.4.2 D6 / §5.13.4.1: bypass only ever 0 or 1, written only with BYPASS_CONFIG negotiated.
    @Test func d6_bypassOnlyZeroOrOne() throws {
        var device = makeDevice()
        #expect(throws: ConfigWriteError.invalidBypass(2)) { try device.writeConfig(offset: 36, bytes: [2]) }
        #expect(device.configSpace.bypass == 1)
        var unnegotiated = try IOMMUModel(configuration: testConfiguration())
        unnegotiated.negotiate([.mapUnmap])
        #expect(throws: ConfigWriteError.bypassNotNegotiated) { try unnegotiated.writeConfig(offset: 36, bytes: [0]) }
        #expect(throws: ConfigWriteError.readOnly(offset: 0)) { try device.writeConfig(offset: 0, bytes: [1]) }
        // Rewriting read-only bytes unchanged is accepted (QEMU's generic device sends the whole space).
        try device.writeConfig(offset: 0, bytes: device.configSpace.bytes)
    }

    // §5.13.4: the 40-byte layout, little-endian, fields of unoffered features read as 0.
    @Test func configLayout() {
        let device = makeDevice()
        let bytes = device.configSpace.bytes
        #expect(bytes.count == 40)
        #expect(Array(bytes[0..<8]) == [0x00, 0xf0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        #expect(bytes.le(UInt64.self, at: 16) == (1 << 48) - 1)
        #expect(bytes.le(UInt32.self, at: 28) == UInt32.max)
        #expect(bytes.le(UInt32.self, at: 32) == 512)
        #expect(bytes[36] == 1 && bytes[37] == 0 && bytes[38] == 0 && bytes[39] == 0)
        #expect(ConfigSpace(bytes: bytes) == device.configSpace)
        let bare = makeDevice(testConfiguration(features: [.mapUnmap]))
        #expect(bare.configSpace.bytes[8...].allSatisfy { $0 == 0 })
    }
}

@Suite struct OperationRules {
    // §5.13.6.2 D7: OK on success.
    @Test func d7_okOnSuccess() {
        var device = makeDevice()
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
    }

    // §5.13.6.2 D8: unrecognized type → nothing written, used length 0.
    @Test func d8_unknownTypeNotAnswered() {
        var device = makeDevice()
        #expect(device.send([0x42, 0, 0, 0] + [UInt8](repeating: 0, count: 60)) == nil)
        #expect(device.send([0, 0, 0, 0]) == nil)
        #expect(device.counters.unanswered == 2)
    }

    // §5.13.6.2 D9: head.reserved ignored, tail.reserved written as 0.
    @Test func d9_headReservedIgnoredTailReservedZero() {
        var device = makeDevice()
        var request = AttachRequest(domain: 1, endpoint: plainEndpoint).encoded
        request[1] = 0xff; request[2] = 0xff; request[3] = 0xff
        let (used, reply) = device.handle(request: request, writableSize: 4)
        #expect(used == 4)
        #expect(reply == [0, 0, 0, 0])  // S_OK = 0
    }

    // §5.13.6.2 D10: an unattached endpoint that is not in bypass has no access.
    @Test func d10_unattachedWithoutBypassHasNoAccess() throws {
        var device = makeDevice(testConfiguration(bypass: false))
        #expect(throws: TranslationError.self) {
            try device.translate(endpoint: plainEndpoint, iova: 0x1000, length: 8, access: .read)
        }
        #expect(device.popFault()?.reason == .domain)
        var open = makeDevice(testConfiguration(bypass: true))
        #expect(try open.translate(endpoint: plainEndpoint, iova: 0x1000, length: 8, access: .read)
                == [Segment(address: 0x1000, length: 8)])
    }
}

@Suite struct AttachRules {
    // §5.13.6.3.2 D11: reserved ≠ 0 → INVAL.
    @Test func d11_reservedRejected() {
        var device = makeDevice()
        #expect(device.send(AttachRequest(domain: 1, endpoint: plainEndpoint, reserved: 1).encoded) == .invalid)
        #expect(device.domains.isEmpty)
    }

    // §5.13.6.3.2 D12: unknown flags → INVAL; ATTACH_F_BYPASS is unknown without BYPASS_CONFIG.
    @Test func d12_unknownFlagsRejected() {
        var device = makeDevice()
        #expect(device.attach(plainEndpoint, to: 1, flags: 2) == .invalid)
        var legacy = makeDevice(testConfiguration(features: [.mapUnmap, .probe]))
        #expect(legacy.attach(plainEndpoint, to: 1, flags: AttachRequest.flagBypass) == .invalid)
        #expect(device.domains.isEmpty && legacy.domains.isEmpty)
    }

    // §5.13.6.3.2 D13: unknown endpoint → NOENT.
    @Test func d13_unknownEndpoint() {
        var device = makeDevice()
        #expect(device.attach(77, to: 1) == .noEntry)
    }

    // §5.13.6.3.2 D14: several endpoints may share a domain.
    @Test func d14_sharedDomain() {
        var device = makeDevice()
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        #expect(device.attach(msiEndpoint, to: 1) == .ok)
        #expect(device.domains[1]?.endpoints == Set([plainEndpoint, msiEndpoint]))
    }

    // §5.13.6.3.2 D15: existing domain with the other bypass kind → INVAL, and nothing changes.
    @Test func d15_bypassMismatch() {
        var device = makeDevice()
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        #expect(device.attach(msiEndpoint, to: 2, flags: AttachRequest.flagBypass) == .ok)
        #expect(device.attach(plainEndpoint, to: 2) == .invalid)
        // QEMU leaves the endpoint detached here; the model validates first, so it stays in domain 1.
        #expect(device.endpoints[plainEndpoint]?.domain == 1)
    }

    // §5.13.6.3.2 D16: attach while attached elsewhere = DETACH then ATTACH.
    @Test func d16_implicitDetach() {
        var device = makeDevice()
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        #expect(device.map(1, 0x1000, 0x1fff) == .ok)
        #expect(device.attach(plainEndpoint, to: 2) == .ok)
        #expect(device.domains[1] == nil)  // its last endpoint left
        #expect(device.mappingCount == 0)
        #expect(device.endpoints[plainEndpoint]?.domain == 2)
    }

    // §5.13.6.3.2 D16 + domain lifetime, as the real Linux guest drives it (VFIO: default domain 0 →
    // blocking domain 1 → VFIO domain 2 with mappings → back to 1 and 0, then a new container reuses
    // domain 2): an ID re-attached after its domain died names a fresh, empty domain.
    @Test func reattachedDomainIDIsFresh() {
        var device = makeDevice()
        #expect(device.attach(plainEndpoint, to: 0) == .ok)
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        #expect(device.attach(plainEndpoint, to: 2) == .ok)
        #expect(device.map(2, 0x1_0000_0000, 0x1_0000_0fff) == .ok)
        #expect(device.attach(plainEndpoint, to: 1) == .ok)  // domain 2 dies with its mapping
        #expect(device.attach(plainEndpoint, to: 0) == .ok)
        #expect(device.domains[2] == nil && device.mappingCount == 0)
        #expect(device.attach(plainEndpoint, to: 2) == .ok)
        #expect(device.mappings(of: 2).isEmpty)
        #expect(device.map(2, 0x1_0000_0000, 0x1_0000_0fff) == .ok)  // no stale overlap
        #expect(device.invariantViolation() == nil)
    }

    // §5.13.6.3.2 D17: reserved regions that overlap the domain's mappings → UNSUPP.
    @Test func d17_incompatibleReservedRegions() {
        var device = makeDevice()
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        #expect(device.map(1, reservedWindow.first, reservedWindow.first + 0xfff) == .ok)
        #expect(device.attach(reservedEndpoint, to: 1) == .unsupported)
        #expect(device.endpoints[reservedEndpoint]?.domain == nil)
        #expect(device.attach(reservedEndpoint, to: 2) == .ok)
    }

    // §5.13.6.3.2 D18: a request that is not rejected attaches; re-attach to the same domain keeps mappings.
    @Test func d18_attachHappens() throws {
        var device = makeDevice(testConfiguration(bypass: false))
        #expect(device.attach(plainEndpoint, to: 5) == .ok)
        #expect(device.map(5, 0x4000, 0x4fff, phys: 0x9000) == .ok)
        #expect(device.attach(plainEndpoint, to: 5) == .ok)
        #expect(try device.translate(endpoint: plainEndpoint, iova: 0x4010, length: 4, access: .read)
                == [Segment(address: 0x9010, length: 4)])
    }

    // §5.13.6.3: ATTACH outside domain_range (negotiated) → RANGE.
    @Test func domainRangeEnforced() {
        var config = testConfiguration()
        config.domainRange = 1...10
        var device = makeDevice(config)
        #expect(device.attach(plainEndpoint, to: 11) == .range)
        #expect(device.attach(plainEndpoint, to: 10) == .ok)
    }

    // Limits: a new domain beyond maxDomains → NOMEM; moving the only member of a domain is allowed.
    @Test func domainLimit() {
        var device = makeDevice(testConfiguration(limits: Limits(maxDomains: 1)))
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        #expect(device.attach(msiEndpoint, to: 2) == .noMemory)
        #expect(device.attach(plainEndpoint, to: 3) == .ok)
    }
}

@Suite struct DetachRules {
    // §5.13.6.4.2 D19: reserved is ignored.
    @Test func d19_reservedIgnored() {
        var device = makeDevice()
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        #expect(device.send(DetachRequest(domain: 1, endpoint: plainEndpoint, reserved: .max).encoded) == .ok)
    }

    // §5.13.6.4.2 D20: unknown endpoint → NOENT.
    @Test func d20_unknownEndpoint() {
        var device = makeDevice()
        #expect(device.detach(1234, from: 1) == .noEntry)
    }

    // §5.13.6.4.2 D21: unknown domain, or endpoint not in it → INVAL.
    @Test func d21_wrongDomain() {
        var device = makeDevice()
        #expect(device.detach(plainEndpoint, from: 1) == .invalid)
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        #expect(device.attach(msiEndpoint, to: 2) == .ok)
        #expect(device.detach(plainEndpoint, from: 2) == .invalid)
        #expect(device.endpoints[plainEndpoint]?.domain == 1)
    }

    // §5.13.6.4.2 D22: after DETACH the endpoint reaches none of the domain's mappings.
    @Test func d22_noAccessAfterDetach() {
        var device = makeDevice(testConfiguration(bypass: false))
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        #expect(device.attach(msiEndpoint, to: 1) == .ok)
        #expect(device.map(1, 0x1000, 0x1fff) == .ok)
        #expect(device.detach(plainEndpoint, from: 1) == .ok)
        #expect(throws: TranslationError.self) {
            try device.translate(endpoint: plainEndpoint, iova: 0x1000, length: 1, access: .read)
        }
        #expect(device.domains[1]?.mappings.count == 1)  // still there for the other endpoint
        #expect(device.detach(msiEndpoint, from: 1) == .ok)
        #expect(device.domains.isEmpty && device.mappingCount == 0)  // gone with its last endpoint
    }
}

@Suite struct MapRules {
    func attached() -> IOMMUModel {
        var device = makeDevice(testConfiguration(bypass: false))
        _ = device.attach(plainEndpoint, to: 1)
        return device
    }

    // §5.13.6.5.2 D23: virt_start, phys_start or virt_end+1 not granule-aligned → RANGE.
    @Test func d23_alignment() {
        var device = attached()
        #expect(device.map(1, 0x1001, 0x1fff) == .range)
        #expect(device.map(1, 0x1000, 0x1ffe) == .range)
        #expect(device.map(1, 0x1000, 0x1fff, phys: 0x2001) == .range)
        #expect(device.map(1, 0x1000, 0x1fff, phys: 0x2000) == .ok)
        // virt_end = 2^64−1: virt_end+1 wraps to 0, which is aligned.
        #expect(device.map(1, 0xffff_ffff_ffff_f000, .max, phys: 0x3000) == .range)  // outside input_range
        var full = makeDevice(testConfiguration(features: [.mapUnmap, .probe, .mmio, .bypassConfig]))
        _ = full.attach(plainEndpoint, to: 1)
        #expect(full.map(1, 0xffff_ffff_ffff_f000, .max, phys: 0x3000) == .ok)
    }

    // §5.13.6.5.2 D24: an existing mapping in the range → INVAL.
    @Test func d24_overlap() {
        var device = attached()
        #expect(device.map(1, 0x1000, 0x2fff) == .ok)
        #expect(device.map(1, 0x2000, 0x3fff) == .invalid)
        #expect(device.map(1, 0x0000, 0x1fff) == .invalid)
        #expect(device.map(1, 0x3000, 0x3fff) == .ok)  // adjacent is fine
    }

    // §5.13.6.5.2 D25: unknown flags → INVAL; MMIO only with F_MMIO.
    @Test func d25_unknownFlags() {
        var device = attached()
        #expect(device.map(1, 0x1000, 0x1fff, flags: MapFlags(rawValue: 8)) == .invalid)
        #expect(device.map(1, 0x1000, 0x1fff, flags: [.write, .mmio]) == .ok)
        var noMMIO = makeDevice(testConfiguration(features: [.mapUnmap, .probe, .bypassConfig]))
        _ = noMMIO.attach(plainEndpoint, to: 1)
        #expect(noMMIO.map(1, 0x1000, 0x1fff, flags: [.write, .mmio]) == .invalid)
    }

    // §5.13.6.5.2 D26: unknown domain → NOENT.
    @Test func d26_unknownDomain() {
        var device = attached()
        #expect(device.map(9, 0x1000, 0x1fff) == .noEntry)
    }

    // §5.13.6.5.2 D27: bypass domain → INVAL.
    @Test func d27_bypassDomain() {
        var device = makeDevice()
        _ = device.attach(plainEndpoint, to: 3, flags: AttachRequest.flagBypass)
        #expect(device.map(3, 0x1000, 0x1fff) == .invalid)
    }

    // §5.13.6.5.2 D28: never a write through a mapping without WRITE (reads need READ too).
    @Test func d28_permissions() throws {
        var device = attached()
        #expect(device.map(1, 0x1000, 0x1fff, flags: .read) == .ok)
        #expect(device.map(1, 0x2000, 0x2fff, flags: .write) == .ok)
        #expect(throws: TranslationError.fault(Fault(reason: .mapping, flags: [.write, .address], endpoint: plainEndpoint, address: 0x1000))) {
            try device.translate(endpoint: plainEndpoint, iova: 0x1000, length: 4, access: .write)
        }
        #expect(throws: TranslationError.fault(Fault(reason: .mapping, flags: [.read, .address], endpoint: plainEndpoint, address: 0x2000))) {
            try device.translate(endpoint: plainEndpoint, iova: 0x2000, length: 4, access: .read)
        }
        #expect(try device.translate(endpoint: plainEndpoint, iova: 0x2000, length: 4, access: .write).count == 1)
    }

    // §5.13.6.5: virt_end < virt_start → INVAL; a MAP outside input_range → RANGE;
    // a physical end past 2^64−1 → RANGE.
    @Test func mapRangeChecks() {
        var device = attached()
        #expect(device.map(1, 0x2000, 0x0fff) == .invalid)
        #expect(device.map(1, 1 << 48, (1 << 48) + 0xfff) == .range)
        #expect(device.map(1, 0x1000, 0x2fff, phys: 0xffff_ffff_ffff_f000) == .range)
        #expect(device.mappingCount == 0)
    }

    // Limits: per-domain and total mapping caps → NOMEM.
    @Test func mappingLimits() {
        var device = makeDevice(testConfiguration(limits: Limits(maxMappingsPerDomain: 2, maxMappingsTotal: 3)))
        _ = device.attach(plainEndpoint, to: 1)
        _ = device.attach(msiEndpoint, to: 2)
        #expect(device.map(1, 0x1000, 0x1fff) == .ok)
        #expect(device.map(1, 0x2000, 0x2fff) == .ok)
        #expect(device.map(1, 0x3000, 0x3fff) == .noMemory)
        #expect(device.map(2, 0x1000, 0x1fff) == .ok)
        #expect(device.map(2, 0x2000, 0x2fff) == .noMemory)
    }
}

@Suite struct UnmapRules {
    func attached(byteGranule: Bool = false) -> IOMMUModel {
        var device = makeDevice(testConfiguration(pageSizeMask: byteGranule ? 1 : ~0xfff))
        _ = device.attach(plainEndpoint, to: 1)
        return device
    }

    // §5.13.6.6.2 D29: reserved ≠ 0 → INVAL (the model chooses not to unmap then).
    @Test func d29_reserved() {
        var device = attached()
        #expect(device.map(1, 0x1000, 0x1fff) == .ok)
        #expect(device.send(UnmapRequest(domain: 1, virtualStart: 0, virtualEnd: .max, reserved: 1).encoded) == .invalid)
        #expect(device.mappingCount == 1)
    }

    // §5.13.6.6.2 D30: unknown domain → NOENT.
    @Test func d30_unknownDomain() {
        var device = attached()
        #expect(device.unmap(2, 0, 0xfff) == .noEntry)
    }

    // §5.13.6.6.2 D31: bypass domain → INVAL.
    @Test func d31_bypassDomain() {
        var device = attached()
        _ = device.attach(msiEndpoint, to: 2, flags: AttachRequest.flagBypass)
        #expect(device.unmap(2, 0, 0xfff) == .invalid)
    }

    // §5.13.6.6.2 D32: split → RANGE, with nothing removed (also for fully covered mappings before it).
    @Test func d32_splitRemovesNothing() {
        var device = attached(byteGranule: true)
        #expect(device.map(1, 0, 4) == .ok)
        #expect(device.map(1, 10, 19) == .ok)
        #expect(device.unmap(1, 0, 14) == .range)
        #expect(device.mappings(of: 1).count == 2)
        #expect(device.unmap(1, 15, 30) == .range)
        #expect(device.mappingCount == 2)
    }

    // §5.13.6.6.2 D33: partly or wholly unmapped ranges remove what they cover and return OK.
    @Test func d33_partlyUnmapped() {
        var device = attached(byteGranule: true)
        #expect(device.map(1, 100, 199) == .ok)
        #expect(device.unmap(1, 0, 1000) == .ok)
        #expect(device.mappingCount == 0)
        #expect(device.unmap(1, 0, 1000) == .ok)
    }

    /// One of the spec's UNMAP examples (§5.13.6.6), with byte granularity and the spec's sizes: what is
    /// mapped (inclusive ranges), what UNMAP asks, its status, and the ranges that stay.
    struct UnmapExample: Sendable, CustomTestStringConvertible {
        var name: String
        var mapped: [ClosedRange<UInt64>]
        var unmap: ClosedRange<UInt64>
        var status: Status
        var remaining: [ClosedRange<UInt64>] = []
        var testDescription: String { name }
    }

    static let unmapExamples = [
        UnmapExample(name: "1: nothing mapped", mapped: [], unmap: 0...4, status: .ok),
        UnmapExample(name: "2: exactly one mapping", mapped: [0...9], unmap: 0...9, status: .ok),
        UnmapExample(name: "3: two adjacent mappings", mapped: [0...4, 5...9], unmap: 0...9, status: .ok),
        UnmapExample(name: "4: splitting fails", mapped: [0...9], unmap: 0...4, status: .range, remaining: [0...9]),
        UnmapExample(name: "5: the first of two", mapped: [0...4, 5...9], unmap: 0...4, status: .ok, remaining: [5...9]),
        UnmapExample(name: "6: larger than the mapping", mapped: [0...4], unmap: 0...9, status: .ok),
        UnmapExample(name: "7: across a hole", mapped: [0...4, 10...14], unmap: 0...14, status: .ok),
    ]

    @Test(arguments: unmapExamples) func specExample(_ example: UnmapExample) {
        var device = attached(byteGranule: true)
        for range in example.mapped { #expect(device.map(1, range.lowerBound, range.upperBound) == .ok) }
        #expect(device.unmap(1, example.unmap.lowerBound, example.unmap.upperBound) == example.status)
        #expect(device.mappings(of: 1).map { $0.virtualStart...$0.virtualEnd } == example.remaining)
        #expect(device.mappingCount == example.remaining.count)
    }
}

@Suite struct ProbeRules {
    func probe(_ device: inout IOMMUModel, _ endpoint: UInt32, writable: Int = 516) -> (Status?, [UInt8]) {
        let (used, reply) = device.handle(request: ProbeRequest(endpoint: endpoint).encoded, writableSize: writable)
        guard used > 0 else { return (nil, reply) }
        return (Status(rawValue: reply[writable - 4]), reply)
    }

    // §5.13.6.7.2 D34: reserved is ignored.
    @Test func d34_reservedIgnored() {
        var device = makeDevice()
        var request = ProbeRequest(endpoint: plainEndpoint).encoded
        for i in 8..<72 { request[i] = 0x5a }
        #expect(device.send(request, writable: 516) == .ok)
    }

    // §5.13.6.7.2 D35: unknown endpoint → NOENT.
    @Test func d35_unknownEndpoint() {
        var device = makeDevice()
        #expect(probe(&device, 555).0 == .noEntry)
    }

    // §5.13.6.7.2 D36: PROBE without F_PROBE → nothing written, used length 0.
    @Test func d36_probeWithoutFeature() {
        var device = makeDevice(testConfiguration(features: [.mapUnmap, .bypassConfig]))
        #expect(probe(&device, plainEndpoint).0 == nil)
        var unnegotiated = try! IOMMUModel(configuration: testConfiguration())
        unnegotiated.negotiate([.mapUnmap])
        #expect(probe(&unnegotiated, plainEndpoint).0 == nil)
    }

    func msiProbeReply() -> [UInt8] {
        var device = makeDevice()
        let (status, reply) = probe(&device, msiEndpoint)
        #expect(status == .ok)
        return reply
    }

    // §5.13.6.7.2 D37: property reserved bits are 0.
    @Test func d37_propertyReservedBitsZero() {
        let reply = msiProbeReply()
        #expect(reply.le(UInt16.self, at: 0) & 0xf000 == 0)  // the 4 reserved bits above the 12-bit type
        #expect(reply.le(UInt16.self, at: 0) == 1)  // VIRTIO_IOMMU_PROBE_T_RESV_MEM
    }

    // §5.13.6.7.2 D38: length is the property size without the 4-byte header.
    @Test func d38_lengthExcludesHeader() {
        #expect(msiProbeReply().le(UInt16.self, at: 2) == 20)
    }

    // §5.13.6.7.2 D39: the next property starts exactly length+4 after the previous one.
    @Test func d39_propertiesBackToBack() {
        var config = testConfiguration()
        let low = ReservedRegion(.reserved, IOVARange(first: 0, last: 0xfff)!)
        config.endpoints[1] = [low, .x86MSIWindow]
        var device = makeDevice(config)
        let (status, reply) = probe(&device, 1)
        #expect(status == .ok)
        let second = 4 + Int(reply.le(UInt16.self, at: 2))
        #expect(second == 24)
        #expect(reply.le(UInt16.self, at: second) == 1)  // RESV_MEM
        #expect(reply[second + 4] == 1)  // VIRTIO_IOMMU_RESV_MEM_T_MSI
        #expect(ResvMemProperty.parse(Array(reply[0..<512])) == [low, .x86MSIWindow])
    }

    // §5.13.6.8.1.2 D42: RESV_MEM reserved bytes are 0; subtype, start and end as configured.
    @Test func d42_resvMemReservedZero() {
        let reply = msiProbeReply()
        #expect(reply[4] == 1)  // VIRTIO_IOMMU_RESV_MEM_T_MSI
        #expect(reply[5] == 0 && reply[6] == 0 && reply[7] == 0)
        #expect(reply.le(UInt64.self, at: 8) == 0xfee0_0000)
        #expect(reply.le(UInt64.self, at: 16) == 0xfeef_ffff)
        #expect(reply.le(UInt16.self, at: 24) == 0)  // NONE ends the list
    }

    // §5.13.6.7.2 D40: properties space smaller than probe_size → INVAL, no property written.
    @Test func d40_smallBuffer() {
        var device = makeDevice()
        let (status, reply) = probe(&device, msiEndpoint, writable: 100)
        #expect(status == .invalid)
        #expect(reply[0..<96].allSatisfy { $0 == 0 })
    }

    // §5.13.6.7.2 D41: unused bytes of properties are zero-filled.
    @Test func d41_zeroFill() {
        var device = makeDevice()
        let (_, reply) = probe(&device, plainEndpoint)
        #expect(reply[0..<512].allSatisfy { $0 == 0 })
    }

    // §5.13.6.8.1.2 D43: at most one MSI property per endpoint.
    @Test func d43_oneMSIRegion() {
        var config = testConfiguration()
        config.endpoints[1] = [.x86MSIWindow, ReservedRegion(.msi, IOVARange(first: 0x1000, last: 0x1fff)!)]
        #expect(throws: ConfigurationError.multipleMSIRegions(endpoint: 1)) { try IOMMUModel(configuration: config) }
    }

    // §5.13.6.8.1.2 D44: no overlapping RESV_MEM properties for one endpoint.
    @Test func d44_noOverlappingRegions() {
        var config = testConfiguration()
        config.endpoints[1] = [.x86MSIWindow, ReservedRegion(.reserved, IOVARange(first: 0xfee0_1000, last: 0xfee0_1fff)!)]
        #expect(throws: ConfigurationError.overlappingRegions(endpoint: 1)) { try IOMMUModel(configuration: config) }
    }

    // §5.13.6.8.1.2 D45: a MAP that overlaps a RESV_MEM region of an attached endpoint → INVAL.
    @Test func d45_mapOverReservedRegion() {
        var device = makeDevice()
        _ = device.attach(reservedEndpoint, to: 1)
        _ = device.attach(msiEndpoint, to: 1)
        #expect(device.map(1, reservedWindow.first, reservedWindow.first + 0xfff) == .invalid)
        #expect(device.map(1, 0xfee0_0000, 0xfee0_0fff) == .invalid)
        #expect(device.map(1, 0x1000, 0x1fff) == .ok)
    }
}

@Suite struct FaultRules {
    func faulting() -> IOMMUModel {
        var device = makeDevice(testConfiguration(bypass: false))
        _ = device.attach(plainEndpoint, to: 1)
        _ = device.map(1, 0x1000, 0x1fff, flags: .read)
        return device
    }

    func deliver(_ device: inout IOMMUModel, bufferSize: Int = 24) -> (Int?, [UInt8]) {
        var buffer = [UInt8](repeating: 0xAA, count: bufferSize)
        let used = buffer.withUnsafeMutableBytes { b in
            [b].withUnsafeBufferPointer { device.deliverFault(into: $0) }
        }
        return (used, buffer)
    }

    func deliveredRecord() -> [UInt8] {
        var device = faulting()
        _ = try? device.translate(endpoint: plainEndpoint, iova: 0x5000, length: 1, access: .write)
        let (used, bytes) = deliver(&device)
        #expect(used == 24)
        #expect(bytes[0] == 2)  // VIRTIO_IOMMU_FAULT_R_MAPPING
        #expect(bytes.le(UInt64.self, at: 16) == 0x5000)
        return bytes
    }

    // §5.13.6.9.2 D47: reserved and reserved1 are 0.
    @Test func d47_reservedZero() {
        let bytes = deliveredRecord()
        #expect(bytes[1..<4].allSatisfy { $0 == 0 })
        #expect(bytes.le(UInt32.self, at: 12) == 0)
    }

    // §5.13.6.9.2 D48: undefined flags are 0.
    @Test func d48_onlyDefinedFlags() {
        #expect(deliveredRecord().le(UInt32.self, at: 4) == 1 << 1 | 1 << 8)  // F_WRITE | F_ADDRESS
    }

    // §5.13.6.9.2 D49: the endpoint ID is valid; unknown endpoints are never reported.
    @Test func d49_validEndpoint() {
        #expect(deliveredRecord().le(UInt32.self, at: 8) == plainEndpoint)
        var device = faulting()
        #expect(throws: TranslationError.unknownEndpoint(999)) {
            try device.translate(endpoint: 999, iova: 0, length: 1, access: .read)
        }
        #expect(device.pendingFaultCount == 0)
    }

    // §5.13.6.9.2 D50: the model always sets F_ADDRESS and the address (the MAY is not used).
    @Test func d50_addressAlwaysReported() {
        var device = faulting()
        _ = try? device.translate(endpoint: plainEndpoint, iova: 0x1ff0, length: 0x20, access: .read)
        let fault = device.popFault()
        #expect(fault?.flags.contains(.address) == true)
        #expect(fault?.address == 0x2000)  // the first byte that is not mapped
    }

    // §5.13.6.9.2 D51: a report is never split; a buffer too small to hold one completes with 0.
    @Test func d51_noSplitReports() {
        var device = faulting()
        _ = try? device.translate(endpoint: plainEndpoint, iova: 0x9000, length: 1, access: .read)
        let (used, bytes) = deliver(&device, bufferSize: 16)
        #expect(used == 0 && bytes.allSatisfy { $0 == 0xAA })
        #expect(device.pendingFaultCount == 1)
        #expect(deliver(&device).0 == 24)
        #expect(deliver(&device).0 == nil)  // nothing pending: the buffer stays posted
    }

    // §5.13.6.9: the reasons UNKNOWN, DOMAIN and MAPPING; a log line names the reason, endpoint,
    // PASID (extension), address and access.
    @Test func faultLogLineNamesTheReason() {
        let domain = Fault(reason: .domain, flags: [.write, .address], endpoint: 3, address: 0x7000)
        #expect("\(domain)" == "domain fault from endpoint 3 at 0x7000 W")
        let mapping = Fault(reason: .mapping, flags: [.read, .address], endpoint: 9, address: 0x10, pasid: 5)
        #expect("\(mapping)" == "mapping fault from endpoint 9 pasid 5 at 0x10 R")
        #expect("\(Fault.Reason.unknown)" == "unknown")
    }

    // Faults wait in a bounded queue; on overflow the oldest is dropped and counted.
    @Test func boundedFaultQueue() {
        var device = makeDevice(testConfiguration(limits: Limits(maxPendingFaults: 2), bypass: false))
        for address in [0x1000, 0x2000, 0x3000] as [UInt64] {
            _ = try? device.translate(endpoint: plainEndpoint, iova: address, length: 1, access: .read)
        }
        #expect(device.pendingFaultCount == 2)
        #expect(device.droppedFaultCount == 1)
        #expect(device.popFault()?.address == 0x2000)
        #expect(device.counters.faultsRaised == 3)
    }
}

/// The wire numbers, written from the spec (virtio 1.4 §5.13.3, §5.13.6, §5.13.6.8, §5.13.6.9), so that
/// the tests comparing decoded enums (`== .invalid`, `.msi`, …) rest on the spec's values, not the model's.
@Suite struct WireConstantTests {
    // §5.13.3: feature bits 0–6; the PASID extension's bit 63 (docs/pasid-extension.md §2).
    @Test func featureBits() {
        let bits: [(Features, UInt64)] = [(.inputRange, 0), (.domainRange, 1), (.mapUnmap, 2), (.bypass, 3),
                                          (.probe, 4), (.mmio, 5), (.bypassConfig, 6), (.pasid, 63)]
        for (feature, bit) in bits { #expect(feature.rawValue == 1 << bit, "bit \(bit)") }
    }

    // §5.13.6: request types 1–5 (extension: 0xE0–0xE3), status codes S_OK = 0 … S_NOMEM = 8.
    @Test func requestTypesAndStatusCodes() {
        #expect([RequestType.attach, .detach, .map, .unmap, .probe].map(\.rawValue) == [1, 2, 3, 4, 5])
        #expect([RequestType.attachPASID, .detachPASID, .allocPASID, .freePASID].map(\.rawValue) == [0xE0, 0xE1, 0xE2, 0xE3])
        #expect([Status.ok, .ioError, .unsupported, .deviceError, .invalid, .range, .noEntry, .fault, .noMemory].map(\.rawValue)
                == [0, 1, 2, 3, 4, 5, 6, 7, 8])
    }

    // §5.13.6.5, §5.13.6.8, §5.13.6.9: MAP flags, RESV_MEM subtypes, fault reasons and flags.
    @Test func flagsAndSubtypes() {
        #expect([MapFlags.read, .write, .mmio].map(\.rawValue) == [1 << 0, 1 << 1, 1 << 2])
        #expect([ReservedRegion.Kind.reserved, .msi].map(\.rawValue) == [0, 1])
        #expect([Fault.Reason.unknown, .domain, .mapping].map(\.rawValue) == [0, 1, 2])
        #expect([Fault.Flags.read, .write, .exec, .address].map(\.rawValue) == [1 << 0, 1 << 1, 1 << 2, 1 << 8])
        #expect(AttachRequest.flagBypass == 1 << 0)
    }
}
