/// An inclusive range of 64-bit addresses, `first...last`, that can reach 2^64−1 without overflow.
public struct IOVARange: Hashable, Sendable, CustomStringConvertible {
    public let first: UInt64
    public let last: UInt64

    /// Fails when `last < first`: an empty or reversed range is not an `IOVARange`.
    public init?(first: UInt64, last: UInt64) {
        guard first <= last else { return nil }
        self.first = first
        self.last = last
    }

    /// The range of `length` bytes from `start`; nil when `length` is 0 or the end passes 2^64−1.
    public init?(start: UInt64, length: UInt64) {
        guard length > 0 else { return nil }
        let (last, overflow) = start.addingReportingOverflow(length - 1)
        guard !overflow else { return nil }
        self.first = start
        self.last = last
    }

    /// The whole 64-bit space.
    public static let all = IOVARange(first: 0, last: .max)!

    /// `last - first`: the size minus one, which never overflows.
    public var lengthMinusOne: UInt64 { last - first }

    public func contains(_ address: UInt64) -> Bool { first <= address && address <= last }
    public func contains(_ other: IOVARange) -> Bool { first <= other.first && other.last <= last }
    public func overlaps(_ other: IOVARange) -> Bool { first <= other.last && other.first <= last }

    public var description: String {
        "0x\(String(first, radix: 16))...0x\(String(last, radix: 16))"
    }
}
