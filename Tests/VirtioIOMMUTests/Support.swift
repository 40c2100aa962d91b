import PASIDAllocators
@_spi(Fuzzing) @testable import VirtioIOMMU

/// Endpoint 8 has the x86 MSI window; endpoint 9 has a plain reserved region; endpoint 10 has none.
let msiEndpoint: UInt32 = 8
let reservedEndpoint: UInt32 = 9
let plainEndpoint: UInt32 = 10
let reservedWindow = IOVARange(first: 0x10_0000, last: 0x10_ffff)!

func testConfiguration(features: Features = .standard, pageSizeMask: UInt64 = ~0xfff,
                       limits: Limits = Limits(), bypass: Bool = true) -> Configuration {
    Configuration(
        endpoints: [msiEndpoint: [.x86MSIWindow],
                    reservedEndpoint: [ReservedRegion(.reserved, reservedWindow)],
                    plainEndpoint: []],
        pageSizeMask: pageSizeMask,
        inputRange: features.contains(.inputRange) ? IOVARange(first: 0, last: (1 << 48) - 1)! : .all,
        probeSize: 512, bypass: bypass, features: features, limits: limits)
}

/// A device with every offered feature negotiated.
func makeDevice(_ configuration: Configuration = testConfiguration()) -> IOMMUModel {
    var device = try! IOMMUModel(configuration: configuration)
    device.negotiate(configuration.features)
    return device
}

extension IOMMUModel {
    /// Sends request bytes with a writable part of `writable` bytes; the tail's status, or nil when
    /// the used length is 0 and nothing was written.
    mutating func send(_ request: [UInt8], writable: Int = 4) -> Status? {
        let (used, reply) = handle(request: request, writableSize: writable)
        if used == 0 {
            precondition(reply.allSatisfy { $0 == 0xAA }, "used length 0 but bytes were written")
            return nil
        }
        precondition(used == writable)
        return Status(rawValue: reply[writable - 4])
    }

    mutating func attach(_ endpoint: UInt32, to domain: UInt32, flags: UInt32 = 0) -> Status? {
        send(AttachRequest(domain: domain, endpoint: endpoint, flags: flags).encoded)
    }

    mutating func detach(_ endpoint: UInt32, from domain: UInt32) -> Status? {
        send(DetachRequest(domain: domain, endpoint: endpoint).encoded)
    }

    mutating func map(_ domain: UInt32, _ start: UInt64, _ end: UInt64, phys: UInt64? = nil,
                      flags: MapFlags = [.read, .write]) -> Status? {
        send(MapRequest(domain: domain, virtualStart: start, virtualEnd: end,
                        physicalStart: phys ?? start, flags: flags.rawValue).encoded)
    }

    mutating func unmap(_ domain: UInt32, _ start: UInt64, _ end: UInt64) -> Status? {
        send(UnmapRequest(domain: domain, virtualStart: start, virtualEnd: end).encoded)
    }

    func mappings(of domain: UInt32) -> [Mapping] { domains[domain]?.mappings.mappings ?? [] }
}

/// A device with the PASID extension negotiated: endpoint 10 supports 8-bit PASIDs, endpoint 9 none,
/// and an in-memory store.
func makePASIDDevice(store: (any PASIDAllocator)? = nil, owner: String = "vm-test",
                     limits: Limits = Limits()) -> IOMMUModel {
    var configuration = testConfiguration(features: Features.standard.union(.pasid), limits: limits)
    configuration.pasidWidths = [plainEndpoint: 8, msiEndpoint: 20]
    var device = try! IOMMUModel(configuration: configuration, pasidStore: store ?? (try! InMemoryPASIDStore()), owner: owner)
    device.negotiate(configuration.features)
    return device
}

/// A well-formed request of each type, for a device from `makePASIDDevice()`.
func wellFormedRequest(_ type: RequestType) -> [UInt8] {
    switch type {
    case .attach: AttachRequest(domain: 1, endpoint: plainEndpoint).encoded
    case .detach: DetachRequest(domain: 1, endpoint: plainEndpoint).encoded
    case .map: MapRequest(domain: 1, virtualStart: 0x1000, virtualEnd: 0x1fff, physicalStart: 0, flags: 3).encoded
    case .unmap: UnmapRequest(domain: 1, virtualStart: 0x1000, virtualEnd: 0x1fff).encoded
    case .probe: ProbeRequest(endpoint: msiEndpoint).encoded
    case .attachPASID, .detachPASID: PASIDAttachmentRequest(domain: 2, endpoint: plainEndpoint, pasid: 1).encoded(type)
    case .allocPASID: AllocPASIDRequest().encoded
    case .freePASID: FreePASIDRequest(pasid: 1).encoded
    }
}
