/// Front-end → back-end message types (vhost-user.rst, "Front-end message types").
public enum FrontendRequest: UInt32, Sendable, CaseIterable {
    case getFeatures = 1
    case setFeatures = 2
    case setOwner = 3
    case resetOwner = 4
    case setMemTable = 5
    case setLogBase = 6
    case setLogFD = 7
    case setVringNum = 8
    case setVringAddr = 9
    case setVringBase = 10
    case getVringBase = 11
    case setVringKick = 12
    case setVringCall = 13
    case setVringErr = 14
    case getProtocolFeatures = 15
    case setProtocolFeatures = 16
    case getQueueNum = 17
    case setVringEnable = 18
    case sendRARP = 19
    case netSetMTU = 20
    case setBackendReqFD = 21
    case iotlbMessage = 22
    case setVringEndian = 23
    case getConfig = 24
    case setConfig = 25
    case createCryptoSession = 26
    case closeCryptoSession = 27
    case postcopyAdvise = 28
    case postcopyListen = 29
    case postcopyEnd = 30
    case getInflightFD = 31
    case setInflightFD = 32
    case gpuSetSocket = 33
    case resetDevice = 34
    case vringKick = 35
    case getMaxMemSlots = 36
    case addMemReg = 37
    case remMemReg = 38
    case setStatus = 39
    case getStatus = 40
    case getSharedObject = 41
    case setDeviceStateFD = 42
    case checkDeviceState = 43

    /// The case name, for logs.
    public var name: String { String(describing: self) }
}

/// Back-end → front-end message types, sent on the SET_BACKEND_REQ_FD channel.
public enum BackendRequest: UInt32, Sendable {
    case iotlbMessage = 1
    case configChange = 2
}

/// The 12-byte message header: request, flags, payload size, in native byte order.
public struct MessageHeader: Hashable, Sendable {
    public static let size = 12
    public static let version: UInt32 = 0x1
    public static let versionMask: UInt32 = 0x3
    public static let replyFlag: UInt32 = 1 << 2
    public static let needReplyFlag: UInt32 = 1 << 3
    /// A reply always carries exactly these flags (QEMU refuses anything else).
    public static let replyFlags: UInt32 = version | replyFlag

    public var request: UInt32
    public var flags: UInt32
    public var size: UInt32

    public init(request: UInt32, flags: UInt32, size: UInt32) {
        self.request = request
        self.flags = flags
        self.size = size
    }

    init(_ bytes: UnsafeRawBufferPointer) {
        request = bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self)
        flags = bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
        size = bytes.loadUnaligned(fromByteOffset: 8, as: UInt32.self)
    }

    public var needsReply: Bool { flags & Self.needReplyFlag != 0 }

    public var bytes: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.size)
        out.withUnsafeMutableBytes {
            $0.storeBytes(of: request, toByteOffset: 0, as: UInt32.self)
            $0.storeBytes(of: flags, toByteOffset: 4, as: UInt32.self)
            $0.storeBytes(of: size, toByteOffset: 8, as: UInt32.self)
        }
        return out
    }
}

/// vhost-user protocol feature bits (vhost-user.rst, "Protocol features").
public struct ProtocolFeatures: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let multipleQueues = ProtocolFeatures(rawValue: 1 << 0)
    public static let replyAck = ProtocolFeatures(rawValue: 1 << 3)
    public static let backendRequest = ProtocolFeatures(rawValue: 1 << 5)
    public static let config = ProtocolFeatures(rawValue: 1 << 9)
    public static let resetDevice = ProtocolFeatures(rawValue: 1 << 13)
    public static let configureMemorySlots = ProtocolFeatures(rawValue: 1 << 15)
    public static let status = ProtocolFeatures(rawValue: 1 << 16)

    /// Everything this engine implements, and so everything it offers.
    public static let supported: ProtocolFeatures = [.multipleQueues, .replyAck, .backendRequest, .config,
                                                     .resetDevice, .configureMemorySlots, .status]
}

/// Transport feature bits that the engine implements (virtio 1.x "Reserved feature bits") and bit 30.
public enum TransportFeatures {
    public static let indirectDescriptors: UInt64 = 1 << 28
    public static let eventIndex: UInt64 = 1 << 29
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    public static let protocolFeatures: UInt64 = 1 << 30
    public static let version1: UInt64 = 1 << 32
    public static let all: UInt64 = indirectDescriptors | eventIndex | protocolFeatures | version1
    /// Bits 24–40 belong to the transport; a device's own bits must not use them.
    public static let reservedMask: UInt64 = ((1 << 41) - 1) & ~((1 << 24) - 1)
}

/// virtio device status bits that the engine itself sets.
public enum DeviceStatus {
    public static let needsReset: UInt8 = 0x40
}

/// Payload sizes and descriptor counts each message must have; checked before dispatch.
enum MessageShape {
    case exactly(Int)
    /// SET_MEM_TABLE: 8 bytes plus 32 per region.
    case memoryTable
    /// GET/SET_CONFIG: a 12-byte head plus `size` bytes.
    case config
    case any

    static func of(_ request: FrontendRequest) -> MessageShape {
        switch request {
        case .getFeatures, .setOwner, .resetOwner, .getProtocolFeatures, .getQueueNum, .resetDevice,
             .getMaxMemSlots, .getStatus, .setBackendReqFD:
            return .exactly(0)
        case .setFeatures, .setProtocolFeatures, .setVringKick, .setVringCall, .setVringErr, .setStatus:
            return .exactly(8)
        case .setVringNum, .setVringBase, .getVringBase, .setVringEnable:
            return .exactly(8)
        case .setVringAddr, .addMemReg, .remMemReg:
            return .exactly(40)
        case .setMemTable:
            return .memoryTable
        case .getConfig, .setConfig:
            return .config
        default:
            return .any
        }
    }

    func accepts(_ size: Int, payload: UnsafeRawBufferPointer) -> Bool {
        switch self {
        case .exactly(let n): return size == n
        case .any: return true
        case .memoryTable:
            guard size >= 8 else { return false }
            let regions = Int(payload.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
            return regions <= GuestMemory.maxTableRegions && size == 8 + 32 * regions
        case .config:
            guard size >= 12 else { return false }
            let count = Int(payload.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
            return count <= MessageDecoder.maxConfigSize && size == 12 + count
        }
    }
}
