import LittleEndianBytes

// The device-readable parts of the five standard requests (virtio 1.4 §5.13.6.3–§5.13.6.7).
// Each decodes from a snapshot that holds at least `RequestType.readableSize` bytes, head included,
// and encodes back to the same bytes (for test front-ends and tools).

/// ATTACH: 20 readable bytes — head, domain, endpoint, flags, reserved[4].
public struct AttachRequest: Hashable, Sendable {
    public static let flagBypass: UInt32 = 1 << 0
    public var domain: UInt32
    public var endpoint: UInt32
    public var flags: UInt32
    public var reserved: UInt32

    public init(domain: UInt32, endpoint: UInt32, flags: UInt32 = 0, reserved: UInt32 = 0) {
        self.domain = domain
        self.endpoint = endpoint
        self.flags = flags
        self.reserved = reserved
    }

    init(_ bytes: UnsafeRawBufferPointer) {
        self.init(domain: bytes.le(UInt32.self, at: 4), endpoint: bytes.le(UInt32.self, at: 8),
                  flags: bytes.le(UInt32.self, at: 12), reserved: bytes.le(UInt32.self, at: 16))
    }

    public var encoded: [UInt8] {
        var out = requestHead(.attach)
        out.appendLE(domain); out.appendLE(endpoint); out.appendLE(flags); out.appendLE(reserved)
        return out
    }
}

/// DETACH: 20 readable bytes — head, domain, endpoint, reserved[8].
public struct DetachRequest: Hashable, Sendable {
    public var domain: UInt32
    public var endpoint: UInt32
    public var reserved: UInt64

    public init(domain: UInt32, endpoint: UInt32, reserved: UInt64 = 0) {
        self.domain = domain
        self.endpoint = endpoint
        self.reserved = reserved
    }

    init(_ bytes: UnsafeRawBufferPointer) {
        self.init(domain: bytes.le(UInt32.self, at: 4), endpoint: bytes.le(UInt32.self, at: 8),
                  reserved: bytes.le(UInt64.self, at: 12))
    }

    public var encoded: [UInt8] {
        var out = requestHead(.detach)
        out.appendLE(domain); out.appendLE(endpoint); out.appendLE(reserved)
        return out
    }
}

/// MAP: 36 readable bytes — head, domain, virt_start, virt_end (inclusive), phys_start, flags.
public struct MapRequest: Hashable, Sendable {
    public var domain: UInt32
    public var virtualStart: UInt64
    public var virtualEnd: UInt64
    public var physicalStart: UInt64
    public var flags: UInt32

    public init(domain: UInt32, virtualStart: UInt64, virtualEnd: UInt64, physicalStart: UInt64, flags: UInt32) {
        self.domain = domain
        self.virtualStart = virtualStart
        self.virtualEnd = virtualEnd
        self.physicalStart = physicalStart
        self.flags = flags
    }

    init(_ bytes: UnsafeRawBufferPointer) {
        self.init(domain: bytes.le(UInt32.self, at: 4), virtualStart: bytes.le(UInt64.self, at: 8),
                  virtualEnd: bytes.le(UInt64.self, at: 16), physicalStart: bytes.le(UInt64.self, at: 24),
                  flags: bytes.le(UInt32.self, at: 32))
    }

    public var encoded: [UInt8] {
        var out = requestHead(.map)
        out.appendLE(domain); out.appendLE(virtualStart); out.appendLE(virtualEnd)
        out.appendLE(physicalStart); out.appendLE(flags)
        return out
    }
}

/// UNMAP: 28 readable bytes — head, domain, virt_start, virt_end (inclusive), reserved[4].
public struct UnmapRequest: Hashable, Sendable {
    public var domain: UInt32
    public var virtualStart: UInt64
    public var virtualEnd: UInt64
    public var reserved: UInt32

    public init(domain: UInt32, virtualStart: UInt64, virtualEnd: UInt64, reserved: UInt32 = 0) {
        self.domain = domain
        self.virtualStart = virtualStart
        self.virtualEnd = virtualEnd
        self.reserved = reserved
    }

    init(_ bytes: UnsafeRawBufferPointer) {
        self.init(domain: bytes.le(UInt32.self, at: 4), virtualStart: bytes.le(UInt64.self, at: 8),
                  virtualEnd: bytes.le(UInt64.self, at: 16), reserved: bytes.le(UInt32.self, at: 24))
    }

    public var encoded: [UInt8] {
        var out = requestHead(.unmap)
        out.appendLE(domain); out.appendLE(virtualStart); out.appendLE(virtualEnd); out.appendLE(reserved)
        return out
    }
}

/// PROBE: 72 readable bytes — head, endpoint, reserved[64]; the writable part is properties[probe_size] + tail.
public struct ProbeRequest: Hashable, Sendable {
    public var endpoint: UInt32

    public init(endpoint: UInt32) { self.endpoint = endpoint }

    init(_ bytes: UnsafeRawBufferPointer) {
        self.init(endpoint: bytes.le(UInt32.self, at: 4))
    }

    public var encoded: [UInt8] {
        var out = requestHead(.probe)
        out.appendLE(endpoint)
        out.append(contentsOf: repeatElement(0, count: 64))
        return out
    }
}

/// A request head with zero reserved bytes.
func requestHead(_ type: RequestType) -> [UInt8] { [type.rawValue, 0, 0, 0] }
