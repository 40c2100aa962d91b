/// One complete front-end message: its header, payload and the descriptors that came with it.
public struct Message: ~Copyable {
    public let header: MessageHeader
    public let payload: [UInt8]
    public internal(set) var descriptors: ReceivedDescriptors

    public var request: FrontendRequest? { FrontendRequest(rawValue: header.request) }

    func u64(at offset: Int = 0) -> UInt64 {
        payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) }
    }

    func u32(at offset: Int) -> UInt32 {
        payload.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self) }
    }
}

/// Why a message was refused. `isFatal` errors leave the stream unusable and end the connection;
/// the others are answered (NACK when a reply is owed) and the connection goes on.
public enum ProtocolError: Error, Hashable, CustomStringConvertible {
    case badFlags(UInt32)
    case payloadTooLarge(UInt32)
    case unknownRequest(UInt32)
    case badPayloadSize(FrontendRequest, Int)
    case badDescriptorCount(FrontendRequest, got: Int, expected: Int)
    case notNegotiated(FrontendRequest)
    case unsupported(FrontendRequest)
    case invalidArgument(FrontendRequest, String)
    case system(FrontendRequest, String)

    public var isFatal: Bool {
        switch self {
        case .badFlags, .payloadTooLarge: true
        default: false
        }
    }

    public var description: String {
        switch self {
        case .badFlags(let flags): "bad header flags 0x\(String(flags, radix: 16))"
        case .payloadTooLarge(let size): "payload of \(size) bytes exceeds the message-size limit"
        case .unknownRequest(let id): "unknown request \(id)"
        case .badPayloadSize(let request, let size): "\(request): bad payload size \(size)"
        case .badDescriptorCount(let request, let got, let expected): "\(request): \(got) descriptors, expected \(expected)"
        case .notNegotiated(let request): "\(request): its protocol feature was not negotiated"
        case .unsupported(let request): "\(request): not supported"
        case .invalidArgument(let request, let why): "\(request): \(why)"
        case .system(let request, let why): "\(request): \(why)"
        }
    }
}

/// Reassembles messages from a byte stream split anywhere. It asks for exactly the bytes of the
/// message in progress (`bytesWanted`), so a reader that honours it never mixes two messages'
/// descriptors; descriptors that arrive while a message is in progress belong to it.
public struct MessageDecoder {
    /// The default cap on a message's payload; every message this engine accepts fits in 300 bytes.
    public static let defaultMaxPayloadSize = 4096
    /// The smallest cap that still admits every accepted message (SET_MEM_TABLE: 264, GET/SET_CONFIG: 268).
    public static let minimumMaxPayloadSize = 268
    public static let maxConfigSize = 256

    public let maxPayloadSize: Int

    private var headerBytes: [UInt8] = []
    private var header: MessageHeader?
    private var payload: [UInt8] = []
    private var pendingDescriptors: [Int32] = []
    /// Closes the descriptors no handler claims.
    private let closer: any DescriptorCloser

    public init(maxPayloadSize: Int = MessageDecoder.defaultMaxPayloadSize, closer: any DescriptorCloser) {
        self.maxPayloadSize = max(maxPayloadSize, Self.minimumMaxPayloadSize)
        self.closer = closer
    }

    /// Bytes still needed to complete the current header or payload.
    public var bytesWanted: Int {
        if let header { return Int(header.size) - payload.count }
        return MessageHeader.size - headerBytes.count
    }

    /// Whether a message has been started but not finished (a disconnect now is mid-message).
    public var isMidMessage: Bool { header != nil || !headerBytes.isEmpty }

    /// Feeds bytes (and the descriptors that came with them); calls `body` for each complete message.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, descriptors: [Int32] = [],
                              _ body: (consuming Message) throws(ProtocolError) -> Void) throws(ProtocolError) {
        pendingDescriptors.append(contentsOf: descriptors)
        var offset = 0
        while offset < bytes.count {
            let n = min(bytesWanted, bytes.count - offset)
            let chunk = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n])
            offset += n
            if header == nil {
                headerBytes.append(contentsOf: chunk)
                guard headerBytes.count == MessageHeader.size else { continue }
                let parsed = headerBytes.withUnsafeBytes { MessageHeader($0) }
                headerBytes.removeAll(keepingCapacity: true)
                let allowed = MessageHeader.versionMask | MessageHeader.needReplyFlag
                guard parsed.flags & MessageHeader.versionMask == MessageHeader.version, parsed.flags & ~allowed == 0 else {
                    throw .badFlags(parsed.flags)
                }
                guard parsed.size <= maxPayloadSize else { throw .payloadTooLarge(parsed.size) }
                header = parsed
                payload.reserveCapacity(Int(parsed.size))
            } else {
                payload.append(contentsOf: chunk)
            }
            if let complete = header, payload.count == Int(complete.size) {
                let message = Message(header: complete, payload: payload, descriptors: ReceivedDescriptors(pendingDescriptors, closer: closer))
                header = nil
                payload = []
                pendingDescriptors = []
                try body(message)
            }
        }
    }

    /// Closes descriptors of an unfinished message (on disconnect).
    public mutating func discard() {
        _ = ReceivedDescriptors(pendingDescriptors, closer: closer)
        pendingDescriptors = []
        header = nil
        headerBytes = []
        payload = []
    }
}
