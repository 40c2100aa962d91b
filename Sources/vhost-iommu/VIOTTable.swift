import LittleEndianBytes

/// The ACPI VIOT table that tells a guest which PCI devices sit behind a virtio-iommu.
///
/// QEMU builds it only for its built-in virtio-iommu-pci; with the generic vhost-user device the guest
/// needs one supplied through `-acpitable file=…`. Layout (ACPI 6.5 §5.2.32, as QEMU emits it): the
/// 36-byte header, `u16 node_count; u16 node_offset; u8 reserved[8]`, then a virtio-pci IOMMU node and
/// one PCI range node per range. Endpoint IDs equal PCI requester IDs, `(bus << 8) | devfn`.
struct VIOTTable {
    struct PCIRange {
        var segment: UInt16 = 0
        var first: UInt16  // requester ID (BDF)
        var last: UInt16
    }

    var iommuSegment: UInt16 = 0
    var iommuBDF: UInt16
    var ranges: [PCIRange]

    static let headerSize = 36
    static let nodeOffset = 48
    static let iommuNodeSize = 16
    static let rangeNodeSize = 24

    var bytes: [UInt8] {
        var out: [UInt8] = Array("VIOT".utf8)
        out.appendLE(UInt32(0))                  // length, patched below
        out.append(0)                            // revision
        out.append(0)                            // checksum, patched below
        out += Array("VHIOMU".utf8)              // OEM ID (6)
        out += Array("VHOSTIOM".utf8)            // OEM table ID (8)
        out.appendLE(UInt32(1))                  // OEM revision
        out += Array("VHIO".utf8)                // creator ID
        out.appendLE(UInt32(1))                  // creator revision
        out.appendLE(UInt16(1 + ranges.count))   // node count
        out.appendLE(UInt16(Self.nodeOffset))    // node offset
        out.appendZeros(8)
        // The virtio-pci IOMMU node (type 3).
        out += [3, 0]
        out.appendLE(UInt16(Self.iommuNodeSize))
        out.appendLE(iommuSegment)
        out.appendLE(iommuBDF)
        out.appendZeros(8)
        // PCI range nodes (type 1), each pointing at the IOMMU node.
        for range in ranges {
            out += [1, 0]
            out.appendLE(UInt16(Self.rangeNodeSize))
            out.appendLE(UInt32(range.first))    // endpoint_start: endpoint ID = requester ID
            out.appendLE(range.segment)
            out.appendLE(range.segment)
            out.appendLE(range.first)
            out.appendLE(range.last)
            out.appendLE(UInt16(Self.nodeOffset))
            out.appendZeros(6)
        }
        let length = UInt32(out.count)
        out.withUnsafeMutableBytes { $0.storeLE(length, at: 4) }
        let sum = out.reduce(UInt8(0), &+)
        out[9] = 0 &- sum
        return out
    }

    /// Parses `BB:DD.F` (hex bus and device, decimal function) into a requester ID.
    static func bdf(_ text: String) -> UInt16? {
        let parts = text.split(whereSeparator: { $0 == ":" || $0 == "." })
        guard parts.count == 3, let bus = UInt16(parts[0], radix: 16), let device = UInt16(parts[1], radix: 16),
              let function = UInt16(parts[2]), bus < 256, device < 32, function < 8 else { return nil }
        return bus << 8 | device << 3 | function
    }
}
