/// A reserved IOVA region of an endpoint, reported by PROBE as a RESV_MEM property (virtio 1.4 §5.13.6.8.1).
public struct ReservedRegion: Hashable, Sendable {
    public enum Kind: UInt8, Sendable {
        /// IOVAs that may not be mapped.
        case reserved = 0
        /// An MSI doorbell window: not mappable, and accesses to it are translated 1:1.
        case msi = 1
    }

    public var kind: Kind
    public var range: IOVARange

    public init(_ kind: Kind, _ range: IOVARange) {
        self.kind = kind
        self.range = range
    }

    /// The x86 MSI window that QEMU's pc/q35 machines report: 0xfee00000–0xfeefffff.
    public static let x86MSIWindow = ReservedRegion(.msi, IOVARange(first: 0xfee0_0000, last: 0xfeef_ffff)!)
}
