import VirtioIOMMU

/// A control-socket request line.
struct ControlRequest: Decodable {
    var op: String
    var endpoint: UInt32?
    var iova: UInt64?
    var length: UInt64?
    var access: String?
    var pasid: UInt32?
}

/// A control-socket reply line.
struct ControlReply: Encodable {
    struct SegmentInfo: Encodable { var gpa: UInt64; var length: UInt64 }

    struct FaultInfo: Encodable {
        var reason: String
        var flags: UInt32
        var address: UInt64
        var endpoint: UInt32
        var pasid: UInt32?
        init(_ fault: Fault) {
            pasid = fault.pasid
            reason = "\(fault.reason)"
            flags = fault.flags.rawValue
            address = fault.address
            endpoint = fault.endpoint
        }
    }

    struct DomainInfo: Encodable {
        var id: UInt32
        var endpoints: [UInt32]
        var mappings: Int
        var bypass: Bool
    }

    var ok: Bool
    var error: String?
    var segments: [SegmentInfo]?
    var fault: FaultInfo?
    var stats: Statistics?
    var domains: [DomainInfo]?

    init(ok: Bool, error: String? = nil, segments: [SegmentInfo]? = nil, fault: FaultInfo? = nil,
         stats: Statistics? = nil, domains: [DomainInfo]? = nil) {
        self.ok = ok
        self.error = error
        self.segments = segments
        self.fault = fault
        self.stats = stats
        self.domains = domains
    }

    static func error(_ message: String) -> ControlReply { ControlReply(ok: false, error: message) }
}
