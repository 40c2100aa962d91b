import LittleEndianBytes

/// The 40-byte `virtio_iommu_config` (virtio 1.4 §5.13.4), little-endian.
public struct ConfigSpace: Hashable, Sendable {
    public static let size = 40
    public static let bypassOffset = 36

    public var pageSizeMask: UInt64 = 0
    public var inputRangeStart: UInt64 = 0
    public var inputRangeEnd: UInt64 = 0
    public var domainRangeStart: UInt32 = 0
    public var domainRangeEnd: UInt32 = 0
    public var probeSize: UInt32 = 0
    public var bypass: UInt8 = 0

    public init() {}

    public init?(bytes: [UInt8]) {
        guard bytes.count == Self.size else { return nil }
        pageSizeMask = bytes.le(UInt64.self, at: 0)
        inputRangeStart = bytes.le(UInt64.self, at: 8)
        inputRangeEnd = bytes.le(UInt64.self, at: 16)
        domainRangeStart = bytes.le(UInt32.self, at: 24)
        domainRangeEnd = bytes.le(UInt32.self, at: 28)
        probeSize = bytes.le(UInt32.self, at: 32)
        bypass = bytes[36]
    }

    public var bytes: [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.size)
        out.appendLE(pageSizeMask)
        out.appendLE(inputRangeStart)
        out.appendLE(inputRangeEnd)
        out.appendLE(domainRangeStart)
        out.appendLE(domainRangeEnd)
        out.appendLE(probeSize)
        out.append(bypass)
        out.append(contentsOf: [0, 0, 0])
        return out
    }
}

/// Why a driver's config write was refused.
public enum ConfigWriteError: Error, Equatable, CustomStringConvertible {
    /// The write reaches past the 40-byte config space.
    case outOfBounds(offset: Int, count: Int)
    /// The write changes a byte the driver may not write (§5.13.4.1: only `bypass` is writable).
    case readOnly(offset: Int)
    /// `bypass` changed while F_BYPASS_CONFIG is not negotiated.
    case bypassNotNegotiated
    /// `bypass` written with a value other than 0 or 1 (D6).
    case invalidBypass(UInt8)

    public var description: String {
        switch self {
        case .outOfBounds(let offset, let count): "config write of \(count) bytes at \(offset) is out of bounds"
        case .readOnly(let offset): "config byte \(offset) is read-only"
        case .bypassNotNegotiated: "bypass written without VIRTIO_IOMMU_F_BYPASS_CONFIG"
        case .invalidBypass(let value): "bypass value \(value) is not 0 or 1"
        }
    }
}
