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
public func replay(_ name: String, _ body: (UnsafeBufferPointer<UInt8>) -> Void) throws {
    let paths = CommandLine.arguments.dropFirst()
    if paths.isEmpty { print("usage: \(name) FILE...   (scripts/fuzz builds it with libFuzzer)") }
    for path in paths {
        let bytes = try readFile(path)
        bytes.withUnsafeBufferPointer { body($0) }
    }
}

public enum ReplayError: Error { case cannotOpen(String) }

/// The bytes of a file.
public func readFile(_ path: String) throws -> [UInt8] {
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

#if FUZZING
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(_ argc: UnsafeMutablePointer<CInt>,
                         _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt

/// Hands control to libFuzzer's driver; each target's `<Target>_main` calls this.
public func runLibFuzzer(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?,
                         _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt {
    var count = argc, vector = argv
    return LLVMFuzzerRunDriver(&count, &vector, callback)
}
#endif
