import DaemonTestSupport
import Testing
@testable import vhost_iommu

/// The VIOT table for `-acpitable` (layout: shared/reference/real-qemu-guest.md §3, ACPI 6.5 §5.2.32).
@Suite struct VIOTTableTests {
    // Spec: ACPI 6.5 §5.2.32 (VIOT): header, virtio-pci IOMMU node, PCI range node, and the checksum (§5.2.6).
    @Test func defaultTableBytes() throws {
        let table = VIOTTable(iommuBDF: try #require(VIOTTable.bdf("00:02.0")), ranges: [.init(first: 0x0000, last: 0x00ff)])
        let expected: [UInt8] = [
            0x56, 0x49, 0x4f, 0x54, 0x58, 0x00, 0x00, 0x00,  // "VIOT", length 88
            0x00, 0x40,                                      // revision 0, checksum
            0x56, 0x48, 0x49, 0x4f, 0x4d, 0x55,              // OEM ID "VHIOMU"
            0x56, 0x48, 0x4f, 0x53, 0x54, 0x49, 0x4f, 0x4d,  // OEM table ID "VHOSTIOM"
            0x01, 0x00, 0x00, 0x00,                          // OEM revision
            0x56, 0x48, 0x49, 0x4f, 0x01, 0x00, 0x00, 0x00,  // creator "VHIO", revision 1
            0x02, 0x00, 0x30, 0x00,                          // 2 nodes, first at offset 48
            0, 0, 0, 0, 0, 0, 0, 0,
            0x03, 0x00, 0x10, 0x00, 0x00, 0x00, 0x10, 0x00,  // virtio-pci IOMMU node: segment 0, BDF 00:02.0
            0, 0, 0, 0, 0, 0, 0, 0,
            0x01, 0x00, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00,  // PCI range node: endpoint_start 0
            0x00, 0x00, 0x00, 0x00,                          // segments 0..0
            0x00, 0x00, 0xff, 0x00,                          // BDF 00:00.0 .. 00:1f.7
            0x30, 0x00,                                      // output node: the IOMMU node at 48
            0, 0, 0, 0, 0, 0,
        ]
        #expect(table.bytes == expected)
        #expect(table.bytes.reduce(UInt8(0), &+) == 0)  // the ACPI checksum
    }

    // Spec: ACPI 6.5 §5.2.32: PCI range nodes; a BDF is (bus << 8) | (device << 3) | function.
    @Test func addressesAndRanges() throws {
        #expect(VIOTTable.bdf("00:03.0") == 24)   // endpoint 24, as in the README's example
        #expect(VIOTTable.bdf("01:1f.7") == 0x1ff)
        #expect(VIOTTable.bdf("00:20.0") == nil)
        #expect(VIOTTable.bdf("00:02.8") == nil)
        let two = VIOTTable(iommuBDF: 0x10, ranges: [.init(first: 0x18, last: 0x18), .init(first: 0x100, last: 0x1ff)])
        let bytes = two.bytes
        #expect(bytes.count == 36 + 12 + 16 + 2 * 24)
        #expect(bytes[36] == 3)  // node count
        #expect(bytes[88] == 1 && bytes[92] == 0x00 && bytes[93] == 0x01)  // second range: endpoint_start 0x100
        #expect(bytes.reduce(UInt8(0), &+) == 0)
    }
}
