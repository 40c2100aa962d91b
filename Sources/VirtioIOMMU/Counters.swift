/// Request and fault counters, readable at any time.
public struct Counters: Sendable, Hashable {
    /// Completed requests, indexed by `type.rawValue * statusCount + status.rawValue`; a flat array
    /// keeps the per-request cost to one increment.
    private var requests = [Int](repeating: 0, count: 256 * Counters.statusCount)
    private static let statusCount = Status.allCases.count
    /// Requests completed with used length 0 and nothing written: unknown or disabled type (D8, D36),
    /// no room for the tail, no readable head, or an oversized writable part.
    public internal(set) var unanswered = 0
    /// Of `unanswered`: writable parts more than `Device.maxWritableSlack` bytes larger than the reply owes.
    public internal(set) var oversizedWritableParts = 0
    public internal(set) var faultsRaised = 0
    public internal(set) var faultsDelivered = 0
    /// Device resets (a guest reboot, the transport's reset); the request counts carry on across them.
    public internal(set) var resets = 0
    /// Resets whose release of this VM's PASIDs the store refused (`Device.lastPASIDReleaseFailure` says why).
    public internal(set) var pasidReleaseFailures = 0
    /// Event buffers the driver has posted so far (counted by the transport).
    public var eventBuffersPosted = 0

    public init() {}

    mutating func record(type: UInt8, _ status: Status) {
        requests[Int(type) * Self.statusCount + Int(status.rawValue)] += 1
    }

    mutating func record(_ type: RequestType, _ status: Status) { record(type: type.rawValue, status) }

    /// Requests of raw type `type` completed with `status` (extension types count here too).
    public func count(type: UInt8, _ status: Status) -> Int {
        requests[Int(type) * Self.statusCount + Int(status.rawValue)]
    }

    public func count(_ type: RequestType, _ status: Status) -> Int { count(type: type.rawValue, status) }

    public func count(_ type: RequestType) -> Int {
        Status.allCases.reduce(0) { $0 + count(type, $1) }
    }
}
