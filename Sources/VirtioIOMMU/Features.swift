/// The virtio-iommu device feature bits (virtio 1.4 §5.13.3).
public struct Features: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let inputRange = Features(rawValue: 1 << 0)
    public static let domainRange = Features(rawValue: 1 << 1)
    public static let mapUnmap = Features(rawValue: 1 << 2)
    /// Legacy bypass (superseded by `bypassConfig`; D2: new devices should not offer it).
    public static let bypass = Features(rawValue: 1 << 3)
    public static let probe = Features(rawValue: 1 << 4)
    public static let mmio = Features(rawValue: 1 << 5)
    public static let bypassConfig = Features(rawValue: 1 << 6)
    /// VIRTIO_IOMMU_F_PASID: aux domains and the paravirtual PASID allocator (docs/pasid-extension.md).
    public static let pasid = Features(rawValue: 1 << 63)

    /// Every bit this model implements.
    public static let all: Features = [.inputRange, .domainRange, .mapUnmap, .bypass, .probe, .mmio, .bypassConfig, .pasid]
    /// What a new device offers by default: all but legacy bypass (D2, D3).
    public static let standard: Features = [.inputRange, .domainRange, .mapUnmap, .probe, .mmio, .bypassConfig]
}
