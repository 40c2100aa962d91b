import ArgumentParser
import Foundation
import PASIDAllocators
import PASIDStore

/// `vhost-iommu pasid …`: the administrator's view of the host-wide PASID store.
struct PASIDCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pasid",
        abstract: "Inspect and manage the host-wide PASID store.",
        subcommands: [List.self, Stats.self, SetQuota.self, Release.self])

    /// Opens the durable store named by the options (the admin view has no use for a memory store).
    static func open(_ location: PASIDStoreLocation) throws -> SQLitePASIDStore {
        guard location.path != "memory" else { throw ValidationError("the admin commands need a store file") }
        guard let store = try location.open() as? SQLitePASIDStore else {
            throw ValidationError("not a durable store")
        }
        return store
    }

    /// The store and the output form of the read-only subcommands.
    struct Report: ParsableArguments {
        @OptionGroup var store: PASIDStoreLocation
        @Flag(help: "Print JSON.") var json = false

        /// Reads the report from the store with `read`, then prints it as sorted-key JSON or through `text`.
        func show<T: Encodable>(_ read: (SQLitePASIDStore) throws -> T, text: (T) -> Void) throws {
            let value = try read(PASIDCommand.open(store))
            guard json else { return text(value) }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(value), as: UTF8.self))
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List every allocated PASID and its owner.")
        @OptionGroup var report: Report

        func run() throws {
            try report.show({ try $0.allocations() }) { allocations in
                print("PASID    OWNER")
                for a in allocations { print(String(a.pasid).padding(toLength: 8, withPad: " ", startingAt: 0) + " " + a.owner) }
            }
        }
    }

    struct Stats: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show the store's size, default quota and owners.")
        @OptionGroup var report: Report

        func run() throws {
            try report.show({ try $0.statistics() }) { stats in
                print("width \(stats.width), capacity \(stats.capacity), allocated \(stats.allocated), default quota \(stats.defaultQuota)")
                for owner in stats.owners {
                    let lease = owner.pid.map { "pid \($0)\(owner.alive ? "" : " (dead)")" } ?? "no process"
                    print("  \(owner.name): \(owner.allocated) allocated, quota \(owner.quota.map(String.init) ?? "default"), \(lease)")
                }
            }
        }
    }

    struct SetQuota: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-quota", abstract: "Set an owner's quota, or the default quota without --owner.")
        @OptionGroup var store: PASIDStoreLocation
        @Option(help: "The owner (VM name); omit to set the default.") var owner: String?
        @Argument(help: "The number of PASIDs.") var quota: Int

        func validate() throws {
            guard quota >= 0 else { throw ValidationError("the quota must not be negative") }
        }

        func run() throws {
            try PASIDCommand.open(store).setQuota(quota, owner: owner)
        }
    }

    struct Release: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Free every PASID of an owner whose process is gone (a live owner is refused).")
        @OptionGroup var store: PASIDStoreLocation
        @Option(help: "The owner (VM name).") var owner: String

        func run() throws {
            let count = try PASIDCommand.open(store).release(owner: owner)
            print("released \(count) PASID\(count == 1 ? "" : "s") of \(owner)")
        }
    }
}
