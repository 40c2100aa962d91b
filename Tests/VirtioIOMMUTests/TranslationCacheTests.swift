import PASIDAllocators
import Testing
@_spi(Fuzzing) @testable import VirtioIOMMU

/// The IOTLB may only answer what the slow path would answer now: each test fills it with a
/// translation, changes the state the entry depends on, and checks the next translation.
@Suite struct TranslationCacheTests {
    /// A device with endpoint 10 in domain 1 and [0x1000, 0x2fff] → 0x8000, translated once (cached).
    func warmDevice() throws -> IOMMUModel {
        var device = makeDevice(testConfiguration(bypass: false))
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        #expect(device.map(1, 0x1000, 0x2fff, phys: 0x8000) == .ok)
        #expect(try device.translate(endpoint: plainEndpoint, iova: 0x1010, length: 8, access: .read) == [Segment(address: 0x8010, length: 8)])
        #expect(device.translationCache.validEntries.count == 1)
        return device
    }

    /// What a translation did. An error other than a fault is an outcome of its own, so that it can
    /// never pass for "translated" or for a fault.
    enum Outcome: Equatable {
        case translated
        case fault(Fault.Reason)
        case otherError(TranslationError)
    }

    /// Translates 4 bytes for endpoint 10; any error other than a fault also fails the test.
    func outcome(_ device: inout IOMMUModel, iova: UInt64 = 0x1010, pasid: UInt32? = nil, access: Access = .read,
                 sourceLocation: SourceLocation = #_sourceLocation) -> Outcome {
        do {
            _ = try device.translate(endpoint: plainEndpoint, pasid: pasid, iova: iova, length: 4, access: access)
            return .translated
        } catch .fault(let fault) {
            return .fault(fault.reason)
        } catch {
            Issue.record("translation failed without a fault: \(error)", sourceLocation: sourceLocation)
            return .otherError(error)
        }
    }

    // Hits: any range inside the cached mapping with the permission it grants; a longer range or a
    // missing permission goes the slow way (D28).
    @Test func hitsStayInsideTheMappingAndItsPermissions() throws {
        var device = try warmDevice()
        #expect(try device.translate(endpoint: plainEndpoint, iova: 0x2ff8, length: 8, access: .write) == [Segment(address: 0x9ff8, length: 8)])
        // Runs past the mapping: the first byte after it faults.
        #expect(throws: TranslationError.fault(Fault(reason: .mapping, flags: [.read, .address], endpoint: plainEndpoint, address: 0x3000))) {
            try device.translate(endpoint: plainEndpoint, iova: 0x2ff8, length: 16, access: .read)
        }
        #expect(device.map(1, 0x3000, 0x3fff, phys: 0x20000, flags: .read) == .ok)
        #expect(try device.translate(endpoint: plainEndpoint, iova: 0x3000, length: 4, access: .read) == [Segment(address: 0x20000, length: 4)])
        #expect(outcome(&device, iova: 0x3000, access: .write) == .fault(.mapping))  // cached READ-only entry, write denied
        #expect(device.invariantViolation() == nil)
    }

    // §5.13.6.6: after UNMAP the range no longer translates.
    @Test func unmapEmptiesIt() throws {
        var device = try warmDevice()
        #expect(device.unmap(1, 0x1000, 0x2fff) == .ok)
        #expect(outcome(&device) == .fault(.mapping))
        #expect(device.invariantViolation() == nil)
    }

    // An UNMAP that removes nothing (a split refused, D32, or an empty range) keeps the entry valid.
    @Test func refusedUnmapKeepsIt() throws {
        var device = try warmDevice()
        #expect(device.unmap(1, 0x1000, 0x1fff) == .range)
        #expect(device.translationCache.validEntries.count == 1)
        #expect(outcome(&device) == .translated)
        #expect(try device.translate(endpoint: plainEndpoint, iova: 0x1010, length: 8, access: .read) == [Segment(address: 0x8010, length: 8)])
    }

    // §5.13.6.3 D16: an ATTACH elsewhere moves the endpoint; it translates through the new domain.
    @Test func attachElsewhereRedirectsIt() throws {
        var device = try warmDevice()
        #expect(device.attach(plainEndpoint, to: 2) == .ok)
        #expect(outcome(&device) == .fault(.mapping))  // domain 2 is empty
        #expect(device.map(2, 0x1000, 0x1fff, phys: 0x40000) == .ok)
        #expect(try device.translate(endpoint: plainEndpoint, iova: 0x1010, length: 8, access: .read) == [Segment(address: 0x40010, length: 8)])
        #expect(device.invariantViolation() == nil)
    }

    // §5.13.6.4: after DETACH the endpoint is unattached; with bypass off it faults with DOMAIN (D10).
    @Test func detachEmptiesIt() throws {
        var device = try warmDevice()
        #expect(device.detach(plainEndpoint, from: 1) == .ok)
        #expect(outcome(&device) == .fault(.domain))
    }

    // D5/reset: no domain survives a reset, cached translations included.
    @Test func resetEmptiesIt() throws {
        var device = try warmDevice()
        device.reset()
        #expect(outcome(&device) == .fault(.domain))
    }

    // PASID extension rule 7: a PASID translates through its aux domain only; DETACH_PASID ends it.
    @Test func auxTranslationsAreCachedApartAndEndWithDetach() throws {
        var device = makePASIDDevice()
        let (status, pasid) = device.allocPASID()
        #expect(status == .ok)
        #expect(device.attach(plainEndpoint, to: 1) == .ok)
        #expect(device.attachPASID(plainEndpoint, pasid, to: 5) == .ok)
        #expect(device.map(1, 0x1000, 0x1fff, phys: 0x8000) == .ok)
        #expect(device.map(5, 0x1000, 0x1fff, phys: 0x50000) == .ok)
        #expect(try device.translate(endpoint: plainEndpoint, iova: 0x1010, length: 8, access: .read) == [Segment(address: 0x8010, length: 8)])
        #expect(try device.translate(endpoint: plainEndpoint, pasid: pasid, iova: 0x1010, length: 8, access: .read) == [Segment(address: 0x50010, length: 8)])
        #expect(device.detachPASID(plainEndpoint, pasid, from: 5) == .ok)
        #expect(outcome(&device, pasid: pasid) == .fault(.domain))
        #expect(try device.translate(endpoint: plainEndpoint, iova: 0x1010, length: 8, access: .read) == [Segment(address: 0x8010, length: 8)])
        #expect(device.invariantViolation() == nil)
    }
}
