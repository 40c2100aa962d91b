/// How a request reaches the model: the device-readable and device-writable parts of one descriptor
/// chain, each a list of buffers that point straight into guest memory. The virtqueue hands over
/// these views without copying; the model copies the readable part once into a small snapshot
/// (at most `maxRequestSize` bytes) so that a guest changing its buffer mid-request cannot make
/// two reads disagree, and writes the reply directly into the writable buffers.
public typealias ReadableParts = UnsafeBufferPointer<UnsafeRawBufferPointer>
public typealias WritableParts = UnsafeBufferPointer<UnsafeMutableRawBufferPointer>

extension UnsafeBufferPointer where Element == UnsafeRawBufferPointer {
    /// Copies the first bytes of the parts into `destination`; returns how many were copied.
    func gather(into destination: UnsafeMutableRawBufferPointer) -> Int {
        var copied = 0
        for part in self where copied < destination.count {
            let n = Swift.min(part.count, destination.count - copied)
            if n > 0 {
                UnsafeMutableRawBufferPointer(rebasing: destination[copied..<copied + n])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: part[0..<n]))
            }
            copied += n
        }
        return copied
    }
}

extension UnsafeBufferPointer where Element == UnsafeMutableRawBufferPointer {
    /// Total bytes of the parts, saturating rather than overflowing.
    var totalCount: Int {
        var total = 0
        for part in self {
            let (sum, overflow) = total.addingReportingOverflow(part.count)
            if overflow { return .max }
            total = sum
        }
        return total
    }

    /// Copies `bytes` to `offset` counted across the parts; bytes past the end are dropped.
    func scatter(_ bytes: UnsafeRawBufferPointer, at offset: Int) {
        visit(offset, bytes.count) { destination, sourceOffset in
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[sourceOffset..<sourceOffset + destination.count]))
        }
    }

    /// Zeroes `count` bytes from `offset` counted across the parts.
    func zero(from offset: Int, count: Int) {
        visit(offset, count) { destination, _ in
            destination.initializeMemory(as: UInt8.self, repeating: 0)
        }
    }

    /// Calls `body` with each slice of the parts covering `[offset, offset+count)`, and the offset
    /// into that span where the slice begins.
    private func visit(_ offset: Int, _ count: Int, _ body: (UnsafeMutableRawBufferPointer, Int) -> Void) {
        guard count > 0, offset >= 0 else { return }
        var partStart = 0
        var done = 0
        for part in self {
            let position = offset + done
            let partEnd = partStart + part.count
            if position < partEnd {
                let from = position - partStart
                let n = Swift.min(part.count - from, count - done)
                body(UnsafeMutableRawBufferPointer(rebasing: part[from..<from + n]), done)
                done += n
                if done == count { return }
            }
            partStart = partEnd
        }
    }
}
