/// The `type` byte of a request's head (virtio 1.4 §5.13.6).
public enum RequestType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case attach = 1
    case detach = 2
    case map = 3
    case unmap = 4
    case probe = 5
    // The PASID extension (docs/pasid-extension.md), in a private block far from the contested 6–8.
    case attachPASID = 0xE0
    case detachPASID = 0xE1
    case allocPASID = 0xE2
    case freePASID = 0xE3

    public var description: String {
        switch self {
        case .attach: "ATTACH"
        case .detach: "DETACH"
        case .map: "MAP"
        case .unmap: "UNMAP"
        case .probe: "PROBE"
        case .attachPASID: "ATTACH_PASID"
        case .detachPASID: "DETACH_PASID"
        case .allocPASID: "ALLOC_PASID"
        case .freePASID: "FREE_PASID"
        }
    }

    /// Whether the type belongs to the PASID extension (it exists only with F_PASID negotiated).
    public var isPASIDExtension: Bool { rawValue >= 0xE0 }

    /// Bytes of the device-readable part (head included) that the request needs.
    public var readableSize: Int {
        switch self {
        case .attach, .detach: 20
        case .map: 36
        case .unmap: 28
        case .probe: 72
        case .attachPASID, .detachPASID: 28
        case .allocPASID, .freePASID: 20
        }
    }
}

/// Size of `virtio_iommu_req_head` and of `virtio_iommu_req_tail`.
public let requestHeadSize = 4
public let requestTailSize = 4
