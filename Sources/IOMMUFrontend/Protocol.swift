import LittleEndianBytes

/// Numbers of the vhost-user-iommu front-end protocol (docs/frontend-protocol.md).
public enum FrontendProtocol {
    /// The only version this implementation speaks (§3).
    public static let version: UInt16 = 1

    /// The four front-end requests (§2.1): vhost-user request ids above VHOST_USER_DEVICE_REQUEST_MIN.
    public enum Request: UInt32, Sendable, CaseIterable {
        case hello = 0x7669_0001
        case setRegion = 0x7669_0002
        case statePush = 0x7669_0003
        case reset = 0x7669_0004

        /// The exact payload size of the request.
        public var payloadSize: Int {
            switch self {
            case .hello: HelloRequest.size
            case .setRegion: SetRegionRequest.size
            case .statePush: StatePushRequest.size
            case .reset: ResetRequest.size
            }
        }

        /// The exact number of file descriptors the request carries.
        public var descriptorCount: Int {
            switch self {
            case .hello, .reset: 0
            case .setRegion: SetRegionRequest.descriptorCount
            case .statePush: StatePushRequest.descriptorCount
            }
        }

        /// The reply payload size on success (a failed HELLO is answered with an 8-byte status).
        public var replySize: Int { self == .hello ? HelloReply.size : FrontendStatus.size }
    }

    /// vhost-user requires private request ids to lie at or above this (QEMU's
    /// VHOST_USER_DEVICE_REQUEST_MIN, qemu/patches/0001).
    public static let deviceRequestMinimum: UInt32 = 0x10000

    /// Magics: ASCII bytes read as a little-endian u32.
    public static let helloMagic: UInt32 = 0x4d4f_4956  // "VIOM"
    public static let regionMagic: UInt32 = 0x4c4d_4956  // "VIML"
    public static let snapshotMagic: UInt32 = 0x5353_4956  // "VISS"

    /// Endpoint IDs the region can name: PCI requester IDs of segment 0.
    public static let endpointCount = 65536
    /// The virtio-iommu status values an entry or commit record may carry (OK ... NOMEM).
    public static let maxRequestStatus: UInt8 = 8
    /// MAP flags a mapping may carry: READ, WRITE, MMIO.
    public static let mapFlagsMask: UInt32 = 7
}

/// The u64 status answering SET_REGION, STATE_PUSH, RESET and a failed HELLO (§2.2).
public struct FrontendStatus: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let ok = FrontendStatus(rawValue: 0)
    public static let unsupported = FrontendStatus(rawValue: 1)
    public static let invalid = FrontendStatus(rawValue: 2)
    public static let badState = FrontendStatus(rawValue: 3)
    public static let refused = FrontendStatus(rawValue: 4)
    public static let failed = FrontendStatus(rawValue: 5)

    public static let size = 8

    public var encoded: [UInt8] {
        var out: [UInt8] = []
        out.appendLE(rawValue)
        return out
    }

    /// Decodes an 8-byte status reply. Any 8 bytes are a status; values above FAILED are kept as they are.
    public init(decoding bytes: UnsafeRawBufferPointer) throws(FrontendWireError) {
        try expectSize(bytes, Self.size)
        self.init(rawValue: bytes.le(UInt64.self, at: 0))
    }

    public var description: String {
        switch rawValue {
        case 0: "OK"
        case 1: "UNSUPPORTED"
        case 2: "INVALID"
        case 3: "BAD_STATE"
        case 4: "REFUSED"
        case 5: "FAILED"
        default: "status \(rawValue)"
        }
    }
}

/// Capabilities negotiated by HELLO (§3).
public struct FrontendCapabilities: OptionSet, Hashable, Sendable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// STATE_PUSH carries the commit window and the back-end honours it (§8.3).
    public static let commitWindow = FrontendCapabilities(rawValue: 1 << 0)
    /// The front-end reports the DMA it refuses through the fault ring (§10).
    public static let faultRing = FrontendCapabilities(rawValue: 1 << 1)
    /// The back-end may log changes of its own, flagged LOCAL (§6.1).
    public static let localChanges = FrontendCapabilities(rawValue: 1 << 2)

    /// What a version-1 back-end can grant.
    public static let version1: FrontendCapabilities = [.commitWindow, .faultRing, .localChanges]
}
