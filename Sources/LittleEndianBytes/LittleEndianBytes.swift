/// Little-endian loads and stores at byte offsets, whatever the alignment: the wire format of virtio
/// (§1.4), of the front-end protocol and of ACPI tables. Callers check bounds first.
extension UnsafeRawBufferPointer {
    @inlinable public func le<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        T(littleEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    /// Whether every byte in `range` is zero (reserved fields).
    @inlinable public func isZero(_ range: Range<Int>) -> Bool {
        range.allSatisfy { self[$0] == 0 }
    }
}

extension UnsafeMutableRawBufferPointer {
    @inlinable public func storeLE<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self)
    }
}

extension Array where Element == UInt8 {
    /// Appends `value` as little-endian bytes (building wire images).
    @inlinable public mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    /// Appends `count` zero bytes (reserved fields).
    @inlinable public mutating func appendZeros(_ count: Int) {
        append(contentsOf: repeatElement(0, count: count))
    }

    /// Reads a little-endian integer at `offset`.
    @inlinable public func le<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        withUnsafeBytes { $0.le(T.self, at: offset) }
    }
}
