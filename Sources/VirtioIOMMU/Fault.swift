import LittleEndianBytes

/// A translation fault, reported to the driver as a 24-byte event (virtio 1.4 §5.13.6.9).
public struct Fault: Hashable, Sendable, CustomStringConvertible {
    /// Interpolated as its case name ("domain", "mapping"), which is how logs name it.
    public enum Reason: UInt8, Sendable {
        case unknown = 0
        /// The endpoint is not attached to a domain and not in bypass.
        case domain = 1
        /// No mapping covers the address, or it lacks the permission.
        case mapping = 2
    }

    public struct Flags: OptionSet, Sendable, Hashable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let read = Flags(rawValue: 1 << 0)
        public static let write = Flags(rawValue: 1 << 1)
        public static let exec = Flags(rawValue: 1 << 2)
        public static let address = Flags(rawValue: 1 << 8)
        /// The PASID extension: `pasid` (the spec's reserved1) is valid.
        public static let pasid = Flags(rawValue: 1 << 9)
    }

    public static let eventSize = 24

    public var reason: Reason
    public var flags: Flags
    public var endpoint: UInt32
    public var address: UInt64
    /// The PASID of the faulting traffic; reported only with F_PASID negotiated (else reserved1 = 0, D47).
    public var pasid: UInt32?

    public init(reason: Reason, flags: Flags, endpoint: UInt32, address: UInt64, pasid: UInt32? = nil) {
        self.reason = reason
        self.flags = pasid == nil ? flags.subtracting(.pasid) : flags.union(.pasid)
        self.endpoint = endpoint
        self.address = address
        self.pasid = pasid
    }

    /// Writes the 24-byte record; reserved fields are zero (D47) and only defined flags are set (D48).
    public func write(into buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count >= Self.eventSize)
        buffer.storeLE(UInt32(reason.rawValue), at: 0)
        buffer.storeLE(flags.rawValue, at: 4)
        buffer.storeLE(endpoint, at: 8)
        buffer.storeLE(pasid ?? 0, at: 12)
        buffer.storeLE(address, at: 16)
    }

    public var encoded: [UInt8] {
        var out = [UInt8](repeating: 0, count: Self.eventSize)
        out.withUnsafeMutableBytes { write(into: $0) }
        return out
    }

    /// Decodes a fault record; nil when the reserved bytes are not zero (a driver must ignore it then).
    public init?(event bytes: [UInt8]) {
        guard bytes.count >= Self.eventSize, bytes[1] == 0, bytes[2] == 0, bytes[3] == 0,
              let reason = Reason(rawValue: bytes[0]) else { return nil }
        let flags = Flags(rawValue: bytes.le(UInt32.self, at: 4))
        self.init(reason: reason, flags: flags, endpoint: bytes.le(UInt32.self, at: 8), address: bytes.le(UInt64.self, at: 16),
                  pasid: flags.contains(.pasid) ? bytes.le(UInt32.self, at: 12) : nil)
    }

    public var description: String {
        var access = ""
        if flags.contains(.read) { access += "R" }
        if flags.contains(.write) { access += "W" }
        let tag = pasid.map { " pasid \($0)" } ?? ""
        return "\(reason) fault from endpoint \(endpoint)\(tag) at 0x\(String(address, radix: 16)) \(access)"
    }
}
