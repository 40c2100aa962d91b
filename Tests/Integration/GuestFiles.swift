import DaemonTestSupport
import Foundation
import Glibc

/// The QEMU binary, guest kernel and initramfs, installed by the project's own idempotent scripts.
struct GuestFiles: Sendable {
    var qemu: String
    var kernel: String
    var initramfs: String

    static let projectRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().path

    /// Why this machine cannot run the real-guest test at all, or nil when it can. Only the platform
    /// counts: slowness or a failing setup script is a failure, never a skip.
    static let unavailableReason: String? = {
        #if os(Linux) && arch(x86_64)
        if getuid() != 0 && access("\(cacheFolder)/qemu/bin/qemu-system-x86_64", X_OK) != 0 {
            return "QEMU is not installed in \(cacheFolder) and installing it needs root (apt-get); run scripts/setup-qemu as root"
        }
        return nil
        #else
        return "the real-guest test needs an x86_64 Linux host (TCG x86_64 guest, Debian's amd64 kernel)"
        #endif
    }()

    static var cacheFolder: String { ProcessInfo.processInfo.environment["VHOST_IOMMU_CACHE"] ?? "/var/cache/vhost-iommu" }

    /// Runs scripts/setup-qemu and scripts/setup-guest (each does nothing when its result is there).
    static func install() throws -> GuestFiles {
        let qemu = try runScript("setup-qemu")
        let folder = try runScript("setup-guest")
        return GuestFiles(qemu: qemu, kernel: folder + "/vmlinuz", initramfs: folder + "/initramfs.cpio.gz")
    }

    /// Runs a project script; returns the last line of its output.
    private static func runScript(_ name: String) throws -> String {
        let result = try runCommand(URL(fileURLWithPath: projectRoot + "/scripts/" + name), [])
        guard result.status == 0, !result.lastLine.isEmpty else {
            throw MachineError(description: "scripts/\(name) failed with status \(result.status)\n\(result.errors.suffix(4000))")
        }
        return result.lastLine
    }
}
