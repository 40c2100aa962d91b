import DequeModule

/// Faults waiting for an event buffer. Bounded: on overflow the oldest is dropped and counted,
/// so a guest that never posts event buffers cannot grow the device's memory.
public struct FaultQueue: Sendable {
    public let capacity: Int
    private var faults = Deque<Fault>()
    public private(set) var dropped = 0

    public init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    public var count: Int { faults.count }
    public var isEmpty: Bool { faults.isEmpty }
    public var first: Fault? { faults.first }

    public mutating func append(_ fault: Fault) {
        if faults.count == capacity {
            faults.removeFirst()
            dropped += 1
        }
        faults.append(fault)
    }

    public mutating func popFirst() -> Fault? { faults.popFirst() }

    public mutating func removeAll() { faults.removeAll() }
}
