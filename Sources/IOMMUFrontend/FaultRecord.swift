import LittleEndianBytes

/// One DMA the front-end refused, as it hands it to the back-end through the fault ring
/// (docs/frontend-protocol.md §10): 32 bytes, little-endian. The back-end reports it to the guest as a
/// virtio-iommu fault event (virtio 1.4 §5.13.6.9), so reason and flags use that section's values.
public struct FaultRecord: Hashable, Sendable {
    public static let size = 32

    /// §5.13.6.9 reasons a front-end can see: the endpoint is in no domain, or no mapping allows the access.
    public enum Reason: UInt8, Sendable {
        case domain = 1
        case mapping = 2
    }

    /// The access that faulted: READ (bit 0), WRITE (bit 1), as in the virtio fault flags.
    public struct Access: OptionSet, Hashable, Sendable {
        public let rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let read = Access(rawValue: 1 << 0)
        public static let write = Access(rawValue: 1 << 1)
        public static let all: Access = [.read, .write]
    }

    public var endpoint: UInt32
    public var reason: Reason
    public var access: Access
    public var address: UInt64
    /// The session epoch the record was written in (a record from before a RESET is stale, §10.3).
    public var epoch: UInt32

    public init(endpoint: UInt32, reason: Reason, access: Access, address: UInt64, epoch: UInt32) {
        self.endpoint = endpoint
        self.reason = reason
        self.access = access
        self.address = address
        self.epoch = epoch
    }

    /// The 32 bytes in slot `index` (§10.2): `index_lo` carries the index's low 32 bits.
    public func encoded(index: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(Self.size)
        out.appendLE(UInt32(truncatingIfNeeded: index))
        out.appendLE(endpoint)
        out.append(reason.rawValue)
        out.append(access.rawValue)
        out.appendZeros(2)
        out.appendLE(epoch)
        out.appendLE(address)
        out.appendZeros(8)
        return out
    }

    /// Decodes and checks a record copied once from slot `index` (§10.2): the index, a known reason, a
    /// nonempty access with no other bit, reserved bytes zero. The epoch is the caller's to compare.
    public init(decoding bytes: UnsafeRawBufferPointer, index: UInt64) throws(FrontendWireError) {
        try expectSize(bytes, Self.size)
        let indexLow = bytes.le(UInt32.self, at: 0)
        guard indexLow == UInt32(truncatingIfNeeded: index) else { throw .value("index_lo", UInt64(indexLow)) }
        guard let reason = Reason(rawValue: bytes[8]) else { throw .value("reason", UInt64(bytes[8])) }
        let access = Access(rawValue: bytes[9])
        guard !access.isEmpty, Access.all.isSuperset(of: access) else { throw .value("flags", UInt64(bytes[9])) }
        guard bytes.isZero(10..<12), bytes.isZero(24..<32) else { throw .reserved("fault record") }
        self.init(endpoint: bytes.le(UInt32.self, at: 4), reason: reason, access: access,
                  address: bytes.le(UInt64.self, at: 16), epoch: bytes.le(UInt32.self, at: 12))
    }
}
