import LittleEndianBytes

/// PROBE property types (virtio 1.4 §5.13.6.8); the 12-bit type shares a le16 with 4 reserved bits.
public enum ProbePropertyType: UInt16, Sendable {
    case none = 0
    case resvMem = 1
    public static let mask: UInt16 = 0xfff
}

/// The 24-byte RESV_MEM property: header (type 1, length 20), subtype, reserved[3], start, end (inclusive).
public enum ResvMemProperty {
    public static let size = 24

    /// Writes `region` as a RESV_MEM property at `offset`; reserved bytes are zero (D37, D42),
    /// and `length` excludes the 4-byte header (D38).
    static func write(_ region: ReservedRegion, into buffer: UnsafeMutableRawBufferPointer, at offset: Int) {
        buffer.storeLE(ProbePropertyType.resvMem.rawValue, at: offset)
        buffer.storeLE(UInt16(size - 4), at: offset + 2)
        buffer.storeLE(UInt32(region.kind.rawValue), at: offset + 4)
        buffer.storeLE(region.range.first, at: offset + 8)
        buffer.storeLE(region.range.last, at: offset + 16)
    }

    /// Parses the RESV_MEM properties of a PROBE reply's properties area, as the Linux driver walks it:
    /// until a NONE type or the end of the area, stepping by `length + 4` (D39).
    public static func parse(_ properties: [UInt8]) -> [ReservedRegion]? {
        var regions: [ReservedRegion] = []
        var offset = 0
        while offset + 4 <= properties.count {
            let type = properties.le(UInt16.self, at: offset) & ProbePropertyType.mask
            let length = Int(properties.le(UInt16.self, at: offset + 2))
            if type == ProbePropertyType.none.rawValue { break }
            guard offset + 4 + length <= properties.count else { return nil }
            if type == ProbePropertyType.resvMem.rawValue {
                guard length == size - 4,
                      let kind = ReservedRegion.Kind(rawValue: properties[offset + 4]),
                      let range = IOVARange(first: properties.le(UInt64.self, at: offset + 8),
                                            last: properties.le(UInt64.self, at: offset + 16))
                else { return nil }
                regions.append(ReservedRegion(kind, range))
            }
            offset += 4 + length
        }
        return regions
    }
}
