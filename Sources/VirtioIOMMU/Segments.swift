/// A guest-physical run of bytes that a translated IOVA range covers.
public struct Segment: Hashable, Sendable {
    public var address: UInt64
    public var length: UInt64

    public init(address: UInt64, length: UInt64) {
        self.address = address
        self.length = length
    }
}

/// The guest-physical runs a translation produced, in IOVA order. Nearly every translation gives
/// one run, which is kept inline, so that translating allocates nothing.
public struct Segments: RandomAccessCollection, Hashable, Sendable, ExpressibleByArrayLiteral, CustomStringConvertible {
    private var head = Segment(address: 0, length: 0)
    private var more: [Segment] = []
    public private(set) var count = 0

    public init() {}

    public init(_ segment: Segment) {
        head = segment
        count = 1
    }

    public init(arrayLiteral elements: Segment...) {
        for element in elements { append(element) }
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { count }

    public subscript(position: Int) -> Segment {
        precondition(position >= 0 && position < count, "segment index out of range")
        return position == 0 ? head : more[position - 1]
    }

    /// Appends a run, merging it into the last one when it continues it physically.
    mutating func appendMerging(_ segment: Segment) {
        if count > 0 {
            let lastIndex = count - 1
            let last = self[lastIndex]
            if last.address &+ last.length == segment.address {
                if lastIndex == 0 { head.length += segment.length } else { more[lastIndex - 1].length += segment.length }
                return
            }
        }
        append(segment)
    }

    private mutating func append(_ segment: Segment) {
        if count == 0 { head = segment } else { more.append(segment) }
        count += 1
    }

    public static func == (a: Segments, b: Segments) -> Bool { a.elementsEqual(b) }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(count)
        for segment in self { hasher.combine(segment) }
    }

    public var description: String { Array(self).description }
}
