/// The `status` byte of a request's tail (virtio 1.4 §5.13.6).
public enum Status: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    case ok = 0
    case ioError = 1
    case unsupported = 2
    case deviceError = 3
    case invalid = 4
    case range = 5
    case noEntry = 6
    case fault = 7
    case noMemory = 8

    public var description: String {
        switch self {
        case .ok: "OK"
        case .ioError: "IOERR"
        case .unsupported: "UNSUPP"
        case .deviceError: "DEVERR"
        case .invalid: "INVAL"
        case .range: "RANGE"
        case .noEntry: "NOENT"
        case .fault: "FAULT"
        case .noMemory: "NOMEM"
        }
    }
}
