import ArgumentParser
import Foundation
import Logging
import PASIDAllocators
import PASIDStore
import SystemPackage
import VhostUser
import VirtioIOMMU

/// Serves the virtio-iommu device on a vhost-user socket (QEMU's back-end program conventions): the
/// wiring of the model, the engine, the PASID store, the control socket and the signals.
struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve the device (the default command).")

    @OptionGroup var options: ServeOptions

    func run() throws {
        if options.printCapabilities {
            print(#"{"type": "iommu", "features": []}"#)
            return
        }
        Signals.blockInThisProcess()
        let level = options.logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "vhost-iommu")
        let owner = vmName
        var store: (any PASIDAllocator)?
        if options.pasidExtension { store = try openPASIDStore(owner: owner, logger: logger) }
        defer {
            // A clean exit gives this VM's PASIDs back; a crash leaves them to the lease reclaim.
            if let durable = store as? SQLitePASIDStore {
                do { try durable.unregister(owner: owner) } catch {
                    logger.error("PASID store: could not give back this VM's PASIDs at exit (the lease reclaims them): \(error)")
                }
            }
        }
        let device = try VhostUserIOMMU(configuration: options.deviceConfiguration(), pasidStore: store, owner: owner, logger: logger)
        let backend = try VhostUserBackend(
            device: device, limits: .init(maxMemoryRegions: options.maxMemoryRegions, maxMessageSize: options.maxMessageSize),
            polling: AdaptivePolling(maximumNanoseconds: options.pollMaxUs * 1000,
                                     yieldAfterNanoseconds: options.pollYieldUs.map { $0 * 1000 }), logger: Logger(label: "vhost-user"))
        let sources: [any StatisticsSource] = [device, backend]
        let control = try options.controlSocket.map { try ControlServer(path: $0, device: device, sources: sources, logger: logger) }
        let stop = Signals.handle(
            stop: { backend.requestStop(); control?.stop() },
            report: { Statistics.log(sources, logger: logger) })
        defer { stop() }
        try backend.run(options.fd.map { .connected(FileDescriptor(rawValue: $0)) } ?? .listener(path: options.socketPath!, reconnect: options.reconnect))
        control?.stop()
        Statistics.log(sources, logger: logger)
    }

    /// Opens the PASID store and takes this VM's lease on its owner name. A store that cannot be used
    /// stops the daemon with one line that names it (`StoreUnavailable`); a live owner of the same name
    /// stops it with `PASIDStoreError.ownerInUse`.
    private func openPASIDStore(owner: String, logger: Logger) throws -> any PASIDAllocator {
        let store = try options.pasidStore.open()
        do {
            if let durable = store as? SQLitePASIDStore {
                try durable.register(owner: owner, quota: options.pasidQuota)
                logger.info("PASID store \(durable.path), owner \(owner)")
            } else {
                if let quota = options.pasidQuota { try store.setQuota(quota, owner: owner) }
                logger.info("PASID store in memory (this VM only), owner \(owner)")
            }
        } catch {
            guard case .storage = error else { throw error }
            throw PASIDStoreLocation.StoreUnavailable(path: options.pasidStore.file ?? "memory", reason: error)
        }
        return store
    }

    /// The owner name in the PASID store: distinct per VM, never one shared default.
    var vmName: String {
        if let vm = options.vm { return vm }
        if let socketPath = options.socketPath {
            // An unknown working directory gives "." (as getcwd's failure did), never a bare "/" prefix.
            let directory = FileManager.default.currentDirectoryPath
            let absolute = socketPath.hasPrefix("/") ? socketPath : (directory.isEmpty ? "." : directory) + "/" + socketPath
            return "socket:" + absolute
        }
        let lease = ProcessLease.current
        return "process:\(lease.pid):\(lease.startTime)"
    }
}

