import DaemonTestSupport
import Foundation
import Glibc
import SystemPackage
import TestSupport
import Testing
import VhostUser
import VhostUserTestSupport

/// The project's root folder (this file is Tests/VhostIOMMUTests/ReadmeAndStoreLocationTests.swift).
let projectRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path

func projectFile(_ path: String) throws -> String {
    try String(contentsOfFile: projectRoot + "/" + path, encoding: .utf8)
}

/// Runs commands as a user who is not root: as nobody through setpriv(1) when the tests run as root,
/// else as the user running them.
enum Unprivileged {
    static let nobody: uid_t = 65534

    static func command(_ arguments: [String]) -> [String] {
        getuid() == 0 ? ["/usr/bin/setpriv", "--reuid=\(nobody)", "--regid=\(nobody)", "--clear-groups", "--"] + arguments : arguments
    }

    /// Why commands cannot be run unprivileged here, or nil.
    static let unavailableReason: String? = {
        guard getuid() == 0 else { return nil }
        guard access("/usr/bin/setpriv", X_OK) == 0 else { return "running as root without /usr/bin/setpriv" }
        let probe = command(["/usr/bin/test", "-x", Daemon.executable.path])
        guard let result = try? runCommand(URL(fileURLWithPath: probe[0]), Array(probe.dropFirst())) else { return "setpriv does not run" }
        return result.status == 0 ? nil : "user \(nobody) cannot run \(Daemon.executable.path)"
    }()

    /// Starts `arguments` unprivileged (a daemon that keeps running while the test talks to it).
    static func start(_ arguments: [String], environment: [String: String]? = nil) throws -> RunningCommand {
        let full = command(arguments)
        return try RunningCommand(URL(fileURLWithPath: full[0]), Array(full.dropFirst()), environment: environment)
    }
}

/// Waits until `path` exists or `process` ends (or `timeout` passes); returns whether it exists. The
/// daemon creates its socket's file without telling anyone: look for it.
func waitForFile(_ path: String, while process: Process, timeout: Duration = .seconds(10)) -> Bool {
    _ = waitUntil(timeout, every: .milliseconds(2)) { access(path, F_OK) == 0 || !process.isRunning }
    return access(path, F_OK) == 0
}

/// What a newcomer runs first: the README's set-up commands and option table, and where the daemon keeps
/// its PASID store (README "Set-up", "Command line", "PASID store"; docs/pasid-extension.md §7).
@Suite struct ReadmeTests {
    /// The commands of the README's set-up block.
    static func setUpCommands() throws -> [String] {
        let readme = try projectFile("README.md")
        let section = try #require(readme.components(separatedBy: "## Set-up").dropFirst().first)
        let block = try #require(section.components(separatedBy: "```sh\n").dropFirst().first?.components(separatedBy: "```").first)
        return block.split(separator: "\n").map { line in
            String(line.split(separator: "#", maxSplits: 1).first ?? "").trimmingCharacters(in: .whitespaces)
        }.filter { !$0.isEmpty }
    }

    // Exactly two set-up commands: the release daemon on its embedded defaults, and the one test command,
    // which is what CI (.ci/run) runs.
    // Spec: README "Set-up".
    @Test func setUpHasTheDaemonAndTheTestCommand() throws {
        let commands = try Self.setUpCommands()
        #expect(commands.count == 2, "\(commands)")
        #expect(commands.first?.hasPrefix("swift run -c release vhost-iommu ") == true, "a release build, as users run it")
        let test = try #require(commands.last)
        let ci = try projectFile(".ci/run").split(separator: "\n").filter { !$0.hasPrefix("#") }
        #expect(ci.contains { $0 == Substring(test) }, ".ci/run runs \(test)")
    }

    // The quick start works for a user who is not root: the plain device needs no PASID store.
    // Spec: README "Set-up" and "PASID store"; docs/pasid-extension.md §7 "When".
    @Test(.enabled(if: Unprivileged.unavailableReason == nil, "\(Unprivileged.unavailableReason ?? "")"))
    func quickStartRunsAsAUserWhoIsNotRoot() throws {
        let command = try #require(try Self.setUpCommands().first)
        var arguments = try #require(command.components(separatedBy: " vhost-iommu ").last).split(separator: " ").map(String.init)
        let socket = "/tmp/vhost-iommu-quickstart-\(getpid())-\(UInt32.random(in: 0...UInt32.max)).sock"
        defer { unlink(socket) }
        try #require(arguments.contains("/tmp/vhost-iommu.sock"))
        arguments = arguments.map { $0 == "/tmp/vhost-iommu.sock" ? socket : $0 }
        let daemon = try Unprivileged.start([Daemon.executable.path] + arguments)
        defer { if daemon.process.isRunning { kill(daemon.process.processIdentifier, SIGKILL) } }
        let listening = waitForFile(socket, while: daemon.process)
        if listening {
            let frontend = try TestFrontend(connectingTo: socket)
            let memory = try SharedMemory(size: 1 << 20)
            let queues = try (0..<2).map { try DriverQueue(memory: memory, index: $0, size: 64) }
            let features = try frontend.initialize(queues: queues)
            #expect(features & IOMMUSpec.VIRTIO_IOMMU_F_PASID == 0)  // docs/pasid-extension.md §2: not offered
            #expect(features & IOMMUSpec.VIRTIO_IOMMU_F_MAP_UNMAP != 0)
            frontend.disconnect()  // without --reconnect the daemon then exits
        }
        let result = daemon.finish()
        let log = result.errors
        #expect(listening, "\(log)")
        #expect(result.status == 0, "\(log)")
        #expect(!log.contains("PASID store"), "the plain device opens no store: \(log)")
    }

    /// The long options `vhost-iommu serve --help` lists.
    static func serveOptions() throws -> [String] {
        let help = try runDaemonCommand(["serve", "--help"])
        try #require(help.status == 0)
        return help.output.split(separator: "\n").compactMap { line in
            let trimmed = line.drop { $0 == " " }
            guard line.hasPrefix("  "), trimmed.hasPrefix("--") else { return nil }
            return String(trimmed.prefix { $0 != " " && $0 != "," })
        }.filter { $0 != "--help" }
    }

    // The option table names every option of the daemon, and only those.
    // Spec: README "Command line".
    @Test func optionTableListsEveryOption() throws {
        let readme = try projectFile("README.md")
        let section = try #require(readme.components(separatedBy: "### Command line").dropFirst().first?
            .components(separatedBy: "\n### ").first)
        let rows = section.split(separator: "\n").filter { $0.hasPrefix("| `--") }
        let firstColumn = rows.map { $0.split(separator: "|", omittingEmptySubsequences: true).first.map(String.init) ?? "" }
        let inTable = Set(firstColumn.flatMap { cell in
            cell.components(separatedBy: "`").enumerated().filter { $0.offset % 2 == 1 }.compactMap { code -> String? in
                let name = code.element.prefix { $0 != " " && $0 != "\\" && $0 != "|" }
                return name.hasPrefix("--") ? String(name) : nil
            }
        })
        let options = try Self.serveOptions()
        #expect(options.count > 20, "\(options)")
        #expect(Set(options).subtracting(inTable).isEmpty, "missing from the README's table: \(Set(options).subtracting(inTable).sorted())")
        #expect(inTable.subtracting(options).isEmpty, "in the table but not an option: \(inTable.subtracting(options).sorted())")
    }
}

/// Where the daemon keeps the host-wide PASID store, and when it opens one (docs/pasid-extension.md §2, §7).
@Suite struct PASIDStoreLocationTests {
    // §2/§7: without a PASID endpoint or a named store the device offers no F_PASID and opens no store;
    // a named store (even the private memory one) offers it.
    @Test func theExtensionAndItsStoreOnlyWhenAsked() throws {
        for (arguments, offered) in [([], false), (["--pasid-store", "memory"], true),
                                     (["--endpoint", "0x10,pasid=8", "--pasid-store", "memory"], true)] as [([String], Bool)] {
            let daemon = try Daemon(arguments)
            let memory = try SharedMemory(size: 1 << 20)
            let queues = try (0..<2).map { try DriverQueue(memory: memory, index: $0, size: 64) }
            let features = try daemon.connect().initialize(queues: queues)
            #expect((features & IOMMUSpec.VIRTIO_IOMMU_F_PASID != 0) == offered, "\(arguments)")
            #expect(daemon.terminate() == 0)
            #expect(daemon.log.contains("PASID store") == offered, "\(arguments): \(daemon.log)")
        }
    }

    // §7: a store that cannot be created refuses the start: exit status 1, one line naming the file and why.
    @Test func unusableStoreRefusesToStart() throws {
        let file = "/tmp/vhost-iommu-not-a-folder-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileDescriptor.open(file, .writeOnly, options: [.create, .closeOnExec], permissions: .ownerReadWrite).close()
        defer { unlink(file) }
        let store = file + "/pasid.sqlite"  // under a regular file: no user can create it
        for arguments in [["--pasid-store", store], ["--endpoint", "0x10,pasid=8", "--pasid-store", store]] {
            let daemon = try Daemon(arguments, waitForSocket: false)
            #expect(daemon.waitForExit() == 1, "\(arguments)")
            let lines = daemon.log.split(separator: "\n")
            #expect(lines.count == 1, "one line: \(daemon.log)")
            #expect(daemon.log.hasPrefix("vhost-iommu: cannot use the PASID store \(store) ("), "\(daemon.log)")
            #expect(daemon.log.contains("--pasid-store memory"), "it says what a VM can use instead: \(daemon.log)")
            #expect(access(daemon.socketPath, F_OK) != 0)  // it never listened
        }
    }

    // §7: the default store is the same file for every user. A user who cannot write it gets a refusal
    // naming that file, never a store of their own (there is no per-user fallback, e.g. in
    // $XDG_STATE_HOME, which would give two users' VMs the same PASIDs).
    @Test(.enabled(if: Unprivileged.unavailableReason == nil, "\(Unprivileged.unavailableReason ?? "")"))
    func defaultStoreIsOnePerHost() throws {
        let state = "/tmp/vhost-iommu-state-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try #require(mkdir(state, 0o700) == 0 && chmod(state, 0o777) == 0)  // writable by that user too
        defer { try? FileManager.default.removeItem(atPath: state) }
        let socket = state + "/vm.sock"
        var environment = ProcessInfo.processInfo.environment
        environment["XDG_STATE_HOME"] = state
        environment["HOME"] = state
        let daemon = try Unprivileged.start(
            [Daemon.executable.path, "--socket-path", socket, "--endpoint", "0x10,pasid=8"], environment: environment)
        defer { if daemon.process.isRunning { kill(daemon.process.processIdentifier, SIGKILL) } }
        let started = waitForFile(socket, while: daemon.process)
        if started { kill(daemon.process.processIdentifier, SIGTERM) }
        let result = daemon.finish()
        let log = result.errors
        let systemStore = "/var/lib/vhost-iommu/pasid.sqlite"
        if started {
            // This host lets that user write the host-wide store: then it is the one in use.
            #expect(log.contains("PASID store \(systemStore),"), "\(log)")
        } else {
            #expect(result.status == 1, "\(log)")
            #expect(log.hasPrefix("vhost-iommu: cannot use the PASID store \(systemStore) ("), "\(log)")
        }
        let created = (try? FileManager.default.subpathsOfDirectory(atPath: state)) ?? []
        #expect(created.allSatisfy { $0 == "vm.sock" }, "a store of the user's own: \(created)")
    }

    // README "Command line": the store's options without the extension are a usage error (64), not ignored.
    @Test func storeOptionsWithoutTheExtensionAreUsageErrors() throws {
        for option in [["--vm", "a"], ["--pasid-quota", "4"], ["--pasid-width", "8"]] {
            let result = try runDaemonCommand(["--socket-path", "/tmp/unused.sock"] + option)
            #expect(result.status == 64, "\(option)")
            #expect(result.errors == "vhost-iommu: \(option[0]) needs the PASID extension: give an endpoint a PASID width "
                    + "(--endpoint IDS,pasid=BITS) or name a store (--pasid-store PATH|memory)\n", "\(result.errors)")
        }
    }
}
