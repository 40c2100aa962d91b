import ArgumentParser
import Glibc
import SystemPackage

/// The executable's root: `vhost-iommu [serve options]` serves the device; subcommands administer.
@main
struct VhostIOMMUCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vhost-iommu",
        abstract: "A virtio-iommu device served over vhost-user.",
        subcommands: [Serve.self, PASIDCommand.self, VIOTCommand.self],
        defaultSubcommand: Serve.self)

    /// Parses and runs; a bad command line gets a one-line error and EX_USAGE (64).
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success || code.rawValue == 0 {
                exit(withError: error)  // --help, --version: printed in full
            }
            let message = self.message(for: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
            let line = Array("vhost-iommu: \(message)\n".utf8)
            _ = try? FileDescriptor.standardError.writeAll(line)
            Glibc.exit(code.rawValue)
        }
    }
}
