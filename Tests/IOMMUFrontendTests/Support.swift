@testable import IOMMUFrontend

/// Runs a decoder on an array's bytes.
func decode<T>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(FrontendWireError) -> T) throws(FrontendWireError) -> T {
    let result = bytes.withUnsafeBytes { raw in Result { () throws(FrontendWireError) in try body(raw) } }
    return try result.get()
}

/// The error a decoder throws, or nil if it accepts the bytes.
func wireError<T>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(FrontendWireError) -> T) -> FrontendWireError? {
    do throws(FrontendWireError) {
        _ = try decode(bytes, body)
        return nil
    } catch {
        return error
    }
}

extension Array where Element == UInt8 {
    /// A copy with a little-endian value written at `offset`.
    func setting<T: FixedWidthInteger>(_ value: T, at offset: Int) -> [UInt8] {
        var copy = self
        Swift.withUnsafeBytes(of: value.littleEndian) { raw in
            for (i, byte) in raw.enumerated() { copy[offset + i] = byte }
        }
        return copy
    }
}

/// A region with the standard layout (small log unless asked), the front-end's header written, and the
/// back-end's endpoint bitmap, as after a successful SET_REGION.
struct Session {
    let memory: InMemoryRegion
    var writer: LogWriter
    var mirror: MirrorReader
    /// The avail position of the next request (positions in the commit window are distinct, §8.3).
    var nextPosition: UInt16 = 1

    init(logEntries: UInt32 = 64, endpoints: [UInt32] = Array(0..<16), granule: UInt64 = 0x1000,
         capabilities: FrontendCapabilities = .version1, startIndex: UInt64 = 0, epoch: UInt32 = 1,
         inputRange: ClosedRange<UInt64> = 0...UInt64.max, queueSize: Int = 1024) throws {
        let layout = RegionLayout.standard(epoch: epoch, logEntries: logEntries)
        let memory = InMemoryRegion(byteCount: Int(layout.regionSize))
        self.memory = memory
        mirror = MirrorReader(memory: memory, layout: layout,
                              rules: .init(granule: granule, inputRange: inputRange, capabilities: capabilities,
                                           queueSize: queueSize),
                              startIndex: startIndex)
        // The back-end's half of SET_REGION: read the header once, write the bitmap, publish tail.
        var header = [UInt8](repeating: 0, count: RegionLayout.configurationSize)
        header.withUnsafeMutableBytes { memory.copyBytes(at: 0, into: $0) }
        let decoded = try decode(header) { raw throws(FrontendWireError) in
            try RegionLayout(decodingHeader: raw, regionSize: layout.regionSize, epoch: epoch)
        }
        EndpointBitmap(endpoints: endpoints)!.write(to: memory, layout: decoded)
        writer = try LogWriter(memory: memory, layout: decoded, capabilities: capabilities, startIndex: startIndex)
        mirror.loadEndpointBitmap()
    }

    /// Stages `operations` and commits them as one request.
    @discardableResult
    mutating func request(_ operations: [LogOperation], position: UInt16? = nil, status: UInt8 = 0) throws -> CommitOutcome {
        for operation in operations { try writer.stage(operation) }
        let at = position ?? nextPosition
        nextPosition = at &+ 1
        return try writer.commit(requestAt: at, status: status)
    }

    /// Writes raw entry bytes into slot `index` and publishes `tail` (a misbehaving back-end).
    func inject(_ entry: [UInt8], at index: UInt64, tail: UInt64) {
        entry.withUnsafeBytes { memory.storeBytes($0, at: mirror.layout.entryOffset(index)) }
        memory.storeRelease(tail, at: RegionLayout.tailOffset)
    }
}

extension CommitOutcome {
    var commit: LogCommit? {
        if case .committed(let commit) = self { return commit }
        return nil
    }
}
