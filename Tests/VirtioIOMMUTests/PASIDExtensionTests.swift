import PASIDAllocators
import Testing
@_spi(Fuzzing) @testable import VirtioIOMMU

extension IOMMUModel {
    /// ALLOC_PASID with a writable part of `writable` bytes: the status and the PASID written.
    mutating func allocPASID(min: PASID = 0, max: PASID = 0, reserved: UInt64 = 0, writable: Int = 12) -> (Status?, PASID) {
        let (used, reply) = handle(request: AllocPASIDRequest(min: min, max: max, reserved: reserved).encoded, writableSize: writable)
        guard used > 0 else { return (nil, 0) }
        return (Status(rawValue: reply[writable - 4]), writable >= 12 ? reply.le(UInt32.self, at: 0) : 0)
    }

    mutating func freePASID(_ pasid: PASID, reserved: [UInt8] = [UInt8](repeating: 0, count: 12)) -> Status? {
        send(FreePASIDRequest(pasid: pasid, reserved: reserved).encoded)
    }

    mutating func attachPASID(_ endpoint: UInt32, _ pasid: PASID, to domain: UInt32, flags: UInt32 = 0, reserved: UInt64 = 0) -> Status? {
        send(PASIDAttachmentRequest(domain: domain, endpoint: endpoint, pasid: pasid, flags: flags, reserved: reserved).encoded(.attachPASID))
    }

    mutating func detachPASID(_ endpoint: UInt32, _ pasid: PASID, from domain: UInt32, flags: UInt32 = 0) -> Status? {
        send(PASIDAttachmentRequest(domain: domain, endpoint: endpoint, pasid: pasid, flags: flags).encoded(.detachPASID))
    }
}

/// The PASID extension (docs/pasid-extension.md), one test per rule and status.
@Suite struct PASIDExtensionTests {
    // Feature bit 63: without it the extension does not exist — the types are unrecognized (D8).
    @Test func invisibleWithoutTheFeature() {
        var configuration = testConfiguration(features: Features.standard.union(.pasid))
        configuration.pasidWidths = [plainEndpoint: 8]
        var device = try! IOMMUModel(configuration: configuration, pasidStore: try! InMemoryPASIDStore(), owner: "vm")
        device.negotiate(.standard)  // an unmodified Linux guest never acks bit 63
        #expect(device.allocPASID().0 == nil)
        #expect(device.attachPASID(plainEndpoint, 1, to: 1) == nil)
        #expect(device.freePASID(1) == nil)
        #expect(device.send(PASIDAttachmentRequest(domain: 1, endpoint: plainEndpoint, pasid: 1).encoded(.detachPASID)) == nil)
        // And PROBE carries no PASID property.
        let (_, reply) = device.handle(request: ProbeRequest(endpoint: plainEndpoint).encoded, writableSize: 516)
        #expect(reply[0..<512].allSatisfy { $0 == 0 })
        #expect(Features.pasid.rawValue == 1 << 63)
        #expect(throws: ConfigurationError.pasidWithoutStore) { try IOMMUModel(configuration: configuration) }
    }

    // ALLOC_PASID: bounds, reserved, writable size, exhaustion and quota.
    @Test func allocPASID() throws {
        let store = try InMemoryPASIDStore(width: 20)
        var device = makePASIDDevice(store: store)
        #expect(device.allocPASID() == (.ok, 1))
        #expect(device.allocPASID(min: 100, max: 200) == (.ok, 100))
        #expect(device.allocPASID(min: 5, max: 4) == (.range, 0))           // min > max
        #expect(device.allocPASID(min: 0, max: 9) == (.range, 0))           // min = 0 with max ≠ 0
        #expect(device.allocPASID(min: 1, max: 1 << 20) == (.range, 0))     // beyond the width
        #expect(device.allocPASID(reserved: 1) == (.invalid, 0))
        for size in 4...11 {
            let (used, reply) = device.handle(request: AllocPASIDRequest().encoded, writableSize: size)
            #expect(used == size && reply[size - 4] == 4, "writable \(size)")
        }
        #expect(device.allocPASID(writable: 3).0 == nil)  // the framing rule
        #expect(device.allocPASID(min: 1, max: 1) == (.noMemory, 0))  // exhausted: 1 is taken
        try store.setQuota(3, owner: "vm-test")
        #expect(device.allocPASID() == (.ok, 2))
        #expect(device.allocPASID() == (.noMemory, 0))  // quota of 3 reached
        #expect(device.heldPASIDs == [1, 2, 100])
        #expect(try store.allocations().map(\.owner) == ["vm-test", "vm-test", "vm-test"])
    }

    // FREE_PASID: reserved ⇒ INVAL; not held by this VM ⇒ NOENT; still attached ⇒ INVAL.
    @Test func freePASID() throws {
        let store = try InMemoryPASIDStore()
        var device = makePASIDDevice(store: store)
        let other = try store.allocate(owner: "another-vm", in: nil)
        let (_, mine) = device.allocPASID()
        #expect(device.freePASID(mine, reserved: [0, 0, 0, 1] + [UInt8](repeating: 0, count: 8)) == .invalid)
        #expect(device.freePASID(other) == .noEntry)
        #expect(device.freePASID(777) == .noEntry)
        _ = device.attach(plainEndpoint, to: 1)
        #expect(device.attachPASID(plainEndpoint, mine, to: 2) == .ok)
        #expect(device.freePASID(mine) == .invalid)
        #expect(device.detachPASID(plainEndpoint, mine, from: 2) == .ok)
        #expect(device.freePASID(mine) == .ok)
        #expect(device.freePASID(mine) == .noEntry)
        #expect(try store.allocations() == [PASIDAllocation(pasid: other, owner: "another-vm")])
    }

    /// A device with endpoint 10 attached to primary domain 1 and one allocated PASID.
    func ready() -> (IOMMUModel, PASID) {
        var device = makePASIDDevice()
        _ = device.attach(plainEndpoint, to: 1)
        let (_, pasid) = device.allocPASID()
        return (device, pasid)
    }

    // Rule 2: ATTACH_PASID checks in order; the first failure decides, and nothing changes.
    @Test func attachPASIDCheckOrder() throws {
        var (device, pasid) = ready()
        #expect(device.attachPASID(plainEndpoint, pasid, to: 2, flags: 1) == .invalid)
        #expect(device.attachPASID(plainEndpoint, pasid, to: 2, reserved: 1) == .invalid)
        #expect(device.attachPASID(12345, pasid, to: 2) == .noEntry)
        #expect(device.attachPASID(reservedEndpoint, pasid, to: 2) == .unsupported)  // no PASID support
        #expect(device.attachPASID(plainEndpoint, 0, to: 2) == .range)
        #expect(device.attachPASID(plainEndpoint, 256, to: 2) == .range)  // 8-bit PASIDs: 1...255
        #expect(device.attachPASID(plainEndpoint, 200, to: 2) == .noEntry)  // not allocated by this VM
        #expect(device.attachPASID(msiEndpoint, pasid, to: 2) == .unsupported)  // no primary attachment
        _ = device.attach(msiEndpoint, to: 3, flags: AttachRequest.flagBypass)
        #expect(device.attachPASID(plainEndpoint, pasid, to: 3) == .invalid)  // a bypass domain
        #expect(device.domains[2] == nil)
        #expect(device.endpoints[plainEndpoint]?.auxDomains.isEmpty == true)
        #expect(device.attachPASID(plainEndpoint, pasid, to: 2) == .ok)  // creates domain 2
        #expect(device.domains[2]?.auxPASID == pasid)
        #expect(device.attachPASID(plainEndpoint, pasid, to: 2) == .ok)  // again: nothing changes
        let (_, second) = device.allocPASID()
        #expect(device.attachPASID(plainEndpoint, second, to: 2) == .invalid)  // rule 1: one PASID per aux domain
        #expect(device.attachPASID(plainEndpoint, pasid, to: 4) == .invalid)   // the pair is attached elsewhere
        #expect(device.domains[4] == nil)
    }

    // Rule 1: the same aux domain under the same PASID on several endpoints.
    @Test func auxDomainSharedAcrossEndpoints() {
        var (device, pasid) = ready()
        _ = device.attach(msiEndpoint, to: 5)
        #expect(device.attachPASID(plainEndpoint, pasid, to: 2) == .ok)
        #expect(device.attachPASID(msiEndpoint, pasid, to: 2) == .ok)
        #expect(device.domains[2]?.auxEndpoints == Set([plainEndpoint, msiEndpoint]))
    }

    // Rule 3: while aux domains exist, the primary cannot move or be detached.
    @Test func primaryIsPinnedByAuxDomains() {
        var (device, pasid) = ready()
        #expect(device.attachPASID(plainEndpoint, pasid, to: 2) == .ok)
        #expect(device.attach(plainEndpoint, to: 7) == .unsupported)
        #expect(device.attach(plainEndpoint, to: 1) == .ok)  // staying put is fine
        #expect(device.detach(plainEndpoint, from: 1) == .invalid)
        #expect(device.endpoints[plainEndpoint]?.domain == 1)
        #expect(device.detachPASID(plainEndpoint, pasid, from: 2) == .ok)
        #expect(device.attach(plainEndpoint, to: 7) == .ok)
        #expect(device.detach(plainEndpoint, from: 7) == .ok)
    }

    // Rule 4: a domain may be primary on one endpoint and aux on another, and lives while either holds it.
    // Rule 5: MAP and UNMAP work the same whichever way it is attached.
    @Test func domainPrimaryAndAuxAtOnce() throws {
        var (device, pasid) = ready()
        _ = device.attach(msiEndpoint, to: 9)
        #expect(device.attachPASID(plainEndpoint, pasid, to: 9) == .ok)  // 9 is msiEndpoint's primary
        #expect(device.map(9, 0x1000, 0x1fff, phys: 0x5000) == .ok)
        #expect(try device.translate(endpoint: plainEndpoint, pasid: pasid, iova: 0x1004, length: 4, access: .read)
                == [Segment(address: 0x5004, length: 4)])
        #expect(try device.translate(endpoint: msiEndpoint, iova: 0x1004, length: 4, access: .read)
                == [Segment(address: 0x5004, length: 4)])
        #expect(device.detach(msiEndpoint, from: 9) == .ok)
        #expect(device.domains[9]?.mappings.count == 1)  // still held by the aux attachment
        #expect(device.unmap(9, 0x1000, 0x1fff) == .ok)
        #expect(device.detachPASID(plainEndpoint, pasid, from: 9) == .ok)
        #expect(device.domains[9] == nil)
        #expect(device.mappingCount == 0)
    }

    // DETACH_PASID: flags ⇒ INVAL, unknown endpoint ⇒ NOENT, pair not attached to that domain ⇒ INVAL.
    @Test func detachPASID() {
        var (device, pasid) = ready()
        #expect(device.attachPASID(plainEndpoint, pasid, to: 2) == .ok)
        #expect(device.detachPASID(plainEndpoint, pasid, from: 2, flags: 4) == .invalid)
        #expect(device.detachPASID(4242, pasid, from: 2) == .noEntry)
        #expect(device.detachPASID(plainEndpoint, pasid, from: 3) == .invalid)
        #expect(device.detachPASID(plainEndpoint, pasid + 1, from: 2) == .invalid)
        #expect(device.endpoints[plainEndpoint]?.auxDomains == [pasid: 2])
        #expect(device.detachPASID(plainEndpoint, pasid, from: 2) == .ok)
        #expect(device.domains[2] == nil)
    }

    // Rule 6: a device reset detaches everything and gives this VM's PASIDs back to the store.
    @Test func resetReleasesPASIDs() throws {
        let store = try InMemoryPASIDStore()
        var device = makePASIDDevice(store: store)
        _ = device.attach(plainEndpoint, to: 1)
        let (_, pasid) = device.allocPASID()
        _ = device.allocPASID()
        _ = try store.allocate(owner: "another-vm", in: nil)
        #expect(device.attachPASID(plainEndpoint, pasid, to: 2) == .ok)
        device.reset()
        #expect(device.domains.isEmpty && device.heldPASIDs.isEmpty)
        #expect(device.endpoints[plainEndpoint]?.auxDomains.isEmpty == true)
        #expect(try store.allocations().map(\.owner) == ["another-vm"])
    }

    // Rule 7 and the fault format: PASID-tagged traffic with no aux domain faults with DOMAIN; the
    // record carries the PASID at offset 12 with flag bit 9, only with the feature negotiated.
    @Test func faultsCarryThePASID() throws {
        var (device, pasid) = ready()
        #expect(throws: TranslationError.self) {
            try device.translate(endpoint: plainEndpoint, pasid: pasid, iova: 0x1000, length: 1, access: .write)
        }
        let popped = device.popFault()
        let fault = try #require(popped)
        #expect(fault.reason == .domain && fault.pasid == pasid && fault.flags.contains(.pasid))
        let bytes = fault.encoded
        #expect(bytes.le(UInt32.self, at: 12) == pasid)
        #expect(bytes.le(UInt32.self, at: 4) & (1 << 9) != 0)
        #expect(Fault(event: bytes) == fault)
        // Mapping faults through an aux domain carry it too.
        #expect(device.attachPASID(plainEndpoint, pasid, to: 2) == .ok)
        _ = try? device.translate(endpoint: plainEndpoint, pasid: pasid, iova: 0x9000, length: 1, access: .read)
        #expect(device.popFault() == Fault(reason: .mapping, flags: [.read, .address], endpoint: plainEndpoint, address: 0x9000, pasid: pasid))
        // Without F_PASID negotiated: no PASID in the record (reserved1 stays 0, D47).
        var plain = makeDevice()
        _ = try? plain.translate(endpoint: plainEndpoint, pasid: 5, iova: 0, length: 1, access: .read)
        let plainFault = plain.popFault()
        let record = try #require(plainFault).encoded
        #expect(record.le(UInt32.self, at: 12) == 0 && record.le(UInt32.self, at: 4) & (1 << 9) == 0)
    }

    // PROBE property 0x800: pasid_bits for endpoints that support PASIDs, after the RESV_MEM properties.
    @Test func probeReportsPASIDWidth() {
        var device = makePASIDDevice()
        let (_, reply) = device.handle(request: ProbeRequest(endpoint: msiEndpoint).encoded, writableSize: 516)
        #expect(reply.le(UInt16.self, at: 0) == 1)  // RESV_MEM first
        #expect(reply.le(UInt16.self, at: 24) == 0x800)
        #expect(reply.le(UInt16.self, at: 26) == 4)
        #expect(reply[28] == 20 && reply[29] == 0 && reply[30] == 0 && reply[31] == 0)
        #expect(reply.le(UInt16.self, at: 32) == 0)
        let (_, none) = device.handle(request: ProbeRequest(endpoint: reservedEndpoint).encoded, writableSize: 516)
        #expect(none.le(UInt16.self, at: 24) == 0)  // no PASID support: no property
    }
}

/// Regressions found by fuzzing; their inputs are also in the seed corpus (Fuzz/corpus/TARGET/regression-*),
/// so every CI fuzz pass replays them.
@Suite struct FuzzRegressionTests {
    // FuzzRequests: moving an endpoint out of a domain that aux attachments of another endpoint still
    // hold must not count that domain as freed: the device ended up holding 7 domains under a limit of 6.
    @Test func domainLimitWithAuxHeldDomain() {
        var device = makePASIDDevice(limits: Limits(maxDomains: 2))
        _ = device.attach(plainEndpoint, to: 1)
        let (_, pasid) = device.allocPASID()
        _ = device.attach(msiEndpoint, to: 2)
        #expect(device.attachPASID(msiEndpoint, pasid, to: 1) == .ok)  // domain 1: primary of 10, aux of 8
        #expect(device.attach(plainEndpoint, to: 3) == .noMemory)      // 1 stays held: a third domain is over the limit
        #expect(device.domains.count == 2)
        #expect(device.invariantViolation() == nil)
    }
}
