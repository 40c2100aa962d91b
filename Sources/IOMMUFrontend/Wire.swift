import LittleEndianBytes

/// Why bytes from the other side are not a valid message, header, entry or snapshot
/// (docs/frontend-protocol.md §9). Each names the offending field.
public enum FrontendWireError: Error, Hashable, Sendable, CustomStringConvertible {
    /// A payload, structure or file of the wrong size.
    case size(expected: UInt64, actual: UInt64)
    case magic(UInt32)
    /// A layout or snapshot version this implementation does not know.
    case version(UInt16)
    /// HELLO's version range has no version in common with ours.
    case noCommonVersion(min: UInt16, max: UInt16)
    /// A reserved field or bit is not zero.
    case reserved(String)
    /// A field holds a value outside what the protocol allows.
    case value(String, UInt64)
    /// Region areas misplaced: outside the region, misaligned, or overlapping.
    case layout(String)
    /// Snapshot records out of order or duplicated.
    case order(String)
    /// A snapshot record names a domain that is not listed (or is the wrong kind).
    case reference(String)

    /// The status the back-end answers a request with this error with.
    public var status: FrontendStatus {
        switch self {
        case .noCommonVersion: .unsupported
        default: .invalid
        }
    }

    public var description: String {
        switch self {
        case .size(let expected, let actual): "size \(actual), expected \(expected)"
        case .magic(let magic): "bad magic 0x\(String(magic, radix: 16))"
        case .version(let version): "unknown version \(version)"
        case .noCommonVersion(let min, let max): "no common version in \(min)...\(max)"
        case .reserved(let field): "reserved \(field) is not zero"
        case .value(let field, let value): "\(field) = 0x\(String(value, radix: 16)) is not allowed"
        case .layout(let what): "region layout: \(what)"
        case .order(let what): "snapshot order: \(what)"
        case .reference(let what): "snapshot reference: \(what)"
        }
    }
}

/// Checks that `bytes` has exactly `size` bytes.
@inline(__always)
func expectSize(_ bytes: UnsafeRawBufferPointer, _ size: Int) throws(FrontendWireError) {
    guard bytes.count == size else { throw .size(expected: UInt64(size), actual: UInt64(bytes.count)) }
}
