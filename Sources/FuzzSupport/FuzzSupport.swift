import Glibc

/// Reads the fuzzer's bytes front to back; missing bytes read as zero.
public struct ByteReader {
    public let bytes: UnsafeBufferPointer<UInt8>
    public var offset = 0

    public init(_ bytes: UnsafeBufferPointer<UInt8>) { self.bytes = bytes }

    public var isAtEnd: Bool { offset >= bytes.count }
    public var remaining: Int { max(0, bytes.count - offset) }
    public mutating func u8() -> UInt8 { defer { offset += 1 }; return offset < bytes.count ? bytes[offset] : 0 }
    public mutating func u16() -> UInt16 { UInt16(u8()) | UInt16(u8()) << 8 }
    public mutating func u32() -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(u8()) << (8 * $1) } }
    public mutating func u64() -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(u8()) << (8 * $1) } }
    public mutating func take(_ n: Int) -> [UInt8] { (0..<n).map { _ in u8() } }
}

/// Replays inputs without the fuzzer: runs `body` once on each file named on the command line.
func replay(_ name: String, _ body: (UnsafeBufferPointer<UInt8>) -> Void) throws {
    let paths = CommandLine.arguments.dropFirst()
    if paths.isEmpty { print("usage: \(name) FILE...   (scripts/fuzz builds it with libFuzzer)") }
    for path in paths {
        let bytes = try readFile(path)
        bytes.withUnsafeBufferPointer { body($0) }
    }
}

public enum ReplayError: Error { case cannotOpen(String) }

/// The bytes of a file.
func readFile(_ path: String) throws -> [UInt8] {
    guard let file = fopen(path, "rb") else { throw ReplayError.cannotOpen(path) }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, file)
        if n <= 0 { break }
        bytes += buffer[0..<n]
    }
    return bytes
}

/// Writes a seed input (used to create the committed corpus).
public func writeFile(_ path: String, _ bytes: [UInt8]) {
    guard let file = fopen(path, "wb") else { return }
    _ = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
    fclose(file)
}

/// One fuzz target's whole program. Built with `-DFUZZING` (scripts/fuzz), it hands `body` to libFuzzer's
/// driver; otherwise it replays the files named on the command line, or with `--write-seeds DIR` writes
/// the target's seed corpus through `writeSeeds`.
public func runFuzzTarget(_ name: String, _ body: @escaping @Sendable (UnsafeBufferPointer<UInt8>) -> Void,
                          writeSeeds: ((String) -> Void)? = nil) throws {
    let arguments = CommandLine.arguments
    if let writeSeeds, arguments.count == 3, arguments[1] == "--write-seeds" { return writeSeeds(arguments[2]) }
#if FUZZING
    fuzzBody = body
    var count = CommandLine.argc
    var vector = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&count, &vector, fuzzOne))
#else
    try replay(name, body)
#endif
}

#if FUZZING
/// The target libFuzzer's C callback reaches: set once, before the driver starts, and only read after.
nonisolated(unsafe) private var fuzzBody: (@Sendable (UnsafeBufferPointer<UInt8>) -> Void)?

@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt

/// The callback: libFuzzer's runtime also refers to this symbol by name, so it must exist.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard let fuzzBody else { fatalError("libFuzzer called the target before runFuzzTarget set it") }
    fuzzBody(UnsafeBufferPointer(start: data, count: size))
    return 0
}
#endif
