import Glibc

/// A deterministic random generator (SplitMix64), so that a randomized test can be replayed from the
/// seed it prints when it fails.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The seed for a randomized test: `VHOST_IOMMU_TEST_SEED` (decimal or 0x hex) to replay a failure,
    /// else a fresh one. Tests put it in every failure message.
    public static func testSeed() -> UInt64 {
        if let text = getenv("VHOST_IOMMU_TEST_SEED").map({ String(cString: $0) }) {
            let value = text.hasPrefix("0x") ? UInt64(text.dropFirst(2), radix: 16) : UInt64(text)
            if let value { return value }
        }
        return UInt64.random(in: 0...UInt64.max)
    }
}
