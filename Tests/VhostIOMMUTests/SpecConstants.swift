import VhostUserTestSupport

/// virtio-iommu numbers as virtio 1.4 §5.13 (and docs/pasid-extension.md for the extension) define them,
/// written down here so that end-to-end expectations do not come from the model's own constants.
enum IOMMUSpec {
    // §5.13.3 Feature bits.
    static let VIRTIO_IOMMU_F_INPUT_RANGE: UInt64 = 1 << 0
    static let VIRTIO_IOMMU_F_DOMAIN_RANGE: UInt64 = 1 << 1
    static let VIRTIO_IOMMU_F_MAP_UNMAP: UInt64 = 1 << 2
    static let VIRTIO_IOMMU_F_BYPASS: UInt64 = 1 << 3
    static let VIRTIO_IOMMU_F_PROBE: UInt64 = 1 << 4
    static let VIRTIO_IOMMU_F_MMIO: UInt64 = 1 << 5
    static let VIRTIO_IOMMU_F_BYPASS_CONFIG: UInt64 = 1 << 6
    // docs/pasid-extension.md §2.
    static let VIRTIO_IOMMU_F_PASID: UInt64 = 1 << 63

    /// The device bits Linux's driver accepts (drivers/iommu/virtio-iommu.c, `features[]`), with the
    /// transport bits its virtio core keeps and the vhost-user bit QEMU keeps: what a Linux guest acks.
    static let linuxGuestFeatures: UInt64 = VIRTIO_IOMMU_F_MAP_UNMAP | VIRTIO_IOMMU_F_INPUT_RANGE
        | VIRTIO_IOMMU_F_DOMAIN_RANGE | VIRTIO_IOMMU_F_PROBE | VIRTIO_IOMMU_F_MMIO | VIRTIO_IOMMU_F_BYPASS_CONFIG
        | VirtioSpec.VIRTIO_F_VERSION_1 | VirtioSpec.VIRTIO_F_INDIRECT_DESC | VirtioSpec.VIRTIO_F_EVENT_IDX
        | VirtioSpec.VIRTIO_F_ACCESS_PLATFORM | VhostUserSpec.VHOST_USER_F_PROTOCOL_FEATURES

    // §5.13.6 Device operations: the status byte of the tail.
    static let VIRTIO_IOMMU_S_OK: UInt8 = 0
    static let VIRTIO_IOMMU_S_UNSUPP: UInt8 = 2
    static let VIRTIO_IOMMU_S_INVAL: UInt8 = 4
    static let VIRTIO_IOMMU_S_RANGE: UInt8 = 5
    static let VIRTIO_IOMMU_S_NOENT: UInt8 = 6

    // §5.13.4 Device configuration layout: byte offsets in the 40-byte config space.
    static let configPageSizeMask = 0, configInputRangeStart = 8, configInputRangeEnd = 16
    static let configDomainRangeStart = 24, configDomainRangeEnd = 28, configProbeSize = 32, configBypass = 36

    // §5.13.6.8 PROBE: property types and the RESV_MEM subtypes.
    static let VIRTIO_IOMMU_PROBE_T_RESV_MEM: UInt16 = 1
    static let VIRTIO_IOMMU_RESV_MEM_T_MSI: UInt8 = 1

    // §5.13.6.9 Fault reporting: reasons and flags of struct virtio_iommu_fault.
    static let VIRTIO_IOMMU_FAULT_R_DOMAIN: UInt8 = 1
    static let VIRTIO_IOMMU_FAULT_R_MAPPING: UInt8 = 2
    static let VIRTIO_IOMMU_FAULT_F_WRITE: UInt32 = 1 << 1
    static let VIRTIO_IOMMU_FAULT_F_ADDRESS: UInt32 = 1 << 8
}

extension Array where Element == UInt8 {
    /// The little-endian integer at `offset` (the wire format of every virtio-iommu field).
    func le<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        self[offset..<offset + MemoryLayout<T>.size].reversed().reduce(T(0)) { $0 << 8 | T($1) }
    }
}
