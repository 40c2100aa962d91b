/// The `type` byte of a request's head (virtio 1.4 §5.13.6).
public enum RequestType: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case attach = 1
    case detach = 2
    case map = 3
    case unmap = 4
    case probe = 5

    public var description: String {
        switch self {
        case .attach: "ATTACH"
        case .detach: "DETACH"
        case .map: "MAP"
        case .unmap: "UNMAP"
        case .probe: "PROBE"
        }
    }

    /// Bytes of the device-readable part (head included) that the request needs.
    public var readableSize: Int {
        switch self {
        case .attach, .detach: 20
        case .map: 36
        case .unmap: 28
        case .probe: 72
        }
    }
}

/// Size of `virtio_iommu_req_head` and of `virtio_iommu_req_tail`.
public let requestHeadSize = 4
public let requestTailSize = 4
