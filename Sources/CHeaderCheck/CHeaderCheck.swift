import Foundation

/// The repository's C headers (include/) checked against the Swift encoders: a test writes a C file whose
/// `_Static_assert`s state the sizes, offsets and constants the Swift side produces, and the system's C
/// compiler decides. One place for what the model's and the front-end protocol's header tests share.
public enum CHeaderCheck {
    /// The repository's root, found from this file's own path (Sources/CHeaderCheck/…).
    public static let repositoryRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    public enum Failure: Error, CustomStringConvertible {
        case cannotWrite(String)
        case compilerFailed(status: Int32, output: String)

        public var description: String {
            switch self {
            case .cannotWrite(let reason): "cannot write the C file: \(reason)"
            case .compilerFailed(let status, let output): "cc exited with \(status):\n\(output)"
            }
        }
    }

    /// Compiles `source` (syntax and static assertions only, C11, warnings as errors) with include/ on
    /// the search path; throws with the compiler's output when it refuses.
    public static func compile(_ source: String) throws(Failure) {
        let file = FileManager.default.temporaryDirectory
            .appendingPathComponent("c-header-check-\(ProcessInfo.processInfo.processIdentifier)-\(UInt64.random(in: 0...UInt64.max)).c")
        do { try source.write(to: file, atomically: false, encoding: .utf8) } catch { throw .cannotWrite("\(error)") }
        defer { try? FileManager.default.removeItem(at: file) }
        let compiler = Process()
        compiler.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        compiler.arguments = ["cc", "-std=c11", "-Wall", "-Werror", "-fsyntax-only", "-I\(repositoryRoot)/include", file.path]
        let output = Pipe()
        compiler.standardOutput = output
        compiler.standardError = output
        do { try compiler.run() } catch { throw .compilerFailed(status: -1, output: "\(error)") }
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        compiler.waitUntilExit()
        guard compiler.terminationStatus == 0 else { throw .compilerFailed(status: compiler.terminationStatus, output: text) }
    }
}
