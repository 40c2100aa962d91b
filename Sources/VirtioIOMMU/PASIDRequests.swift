import LittleEndianBytes
import PASIDAllocators

// The device-readable parts of the PASID extension's requests (docs/pasid-extension.md).

/// ATTACH_PASID and DETACH_PASID: 28 readable bytes — head, domain, endpoint, pasid, flags, reserved[8].
public struct PASIDAttachmentRequest: Hashable, Sendable {
    public var domain: UInt32
    public var endpoint: UInt32
    public var pasid: PASID
    public var flags: UInt32
    public var reserved: UInt64

    public init(domain: UInt32, endpoint: UInt32, pasid: PASID, flags: UInt32 = 0, reserved: UInt64 = 0) {
        self.domain = domain
        self.endpoint = endpoint
        self.pasid = pasid
        self.flags = flags
        self.reserved = reserved
    }

    init(_ bytes: UnsafeRawBufferPointer) {
        self.init(domain: bytes.le(UInt32.self, at: 4), endpoint: bytes.le(UInt32.self, at: 8),
                  pasid: bytes.le(UInt32.self, at: 12), flags: bytes.le(UInt32.self, at: 16),
                  reserved: bytes.le(UInt64.self, at: 20))
    }

    public func encoded(_ type: RequestType) -> [UInt8] {
        precondition(type == .attachPASID || type == .detachPASID)
        var out = requestHead(type)
        out.appendLE(domain); out.appendLE(endpoint); out.appendLE(pasid); out.appendLE(flags); out.appendLE(reserved)
        return out
    }
}

/// ALLOC_PASID: 20 readable bytes — head, min, max (0 and 0: any), reserved[8]; the writable part is
/// pasid, reserved[4], tail.
public struct AllocPASIDRequest: Hashable, Sendable {
    public var min: PASID
    public var max: PASID
    public var reserved: UInt64

    public init(min: PASID = 0, max: PASID = 0, reserved: UInt64 = 0) {
        self.min = min
        self.max = max
        self.reserved = reserved
    }

    init(_ bytes: UnsafeRawBufferPointer) {
        self.init(min: bytes.le(UInt32.self, at: 4), max: bytes.le(UInt32.self, at: 8), reserved: bytes.le(UInt64.self, at: 12))
    }

    public var encoded: [UInt8] {
        var out = requestHead(.allocPASID)
        out.appendLE(min); out.appendLE(max); out.appendLE(reserved)
        return out
    }

    /// Bytes of the writable part: pasid, reserved[4], tail.
    public static let writableSize = 12
}

/// FREE_PASID: 20 readable bytes — head, pasid, reserved[12].
public struct FreePASIDRequest: Hashable, Sendable {
    public var pasid: PASID
    public var reserved: [UInt8]

    public init(pasid: PASID, reserved: [UInt8] = [UInt8](repeating: 0, count: 12)) {
        self.pasid = pasid
        self.reserved = reserved
    }

    init(_ bytes: UnsafeRawBufferPointer) {
        self.init(pasid: bytes.le(UInt32.self, at: 4), reserved: Array(bytes[8..<20]))
    }

    public var encoded: [UInt8] {
        var out = requestHead(.freePASID)
        out.appendLE(pasid)
        out.append(contentsOf: reserved.prefix(12))
        out.append(contentsOf: repeatElement(0, count: max(0, 12 - reserved.count)))
        return out
    }
}

/// The PROBE property of an endpoint's PASID support: type 0x800, length 4: pasid_bits, reserved[3].
public enum PASIDProperty {
    public static let type: UInt16 = 0x800
    public static let size = 8

    static func write(bits: Int, into buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        buffer.storeLE(type, at: offset)
        buffer.storeLE(UInt16(size - 4), at: offset + 2)
        buffer.storeLE(UInt32(bits), at: offset + 4)
    }
}
