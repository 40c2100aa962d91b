import DaemonTestSupport
import Foundation
import Glibc
import Testing

/// One domain as the daemon's control socket lists it.
struct DomainState: Equatable, CustomStringConvertible {
    var id: Int, endpoints: [Int], mappings: Int
    var description: String { "domain \(id) endpoints \(endpoints) mappings \(mappings)" }
}

/// What the real-guest suites share: driving the guest's VFIO and disk workloads over its console, and
/// reading the daemon's counters over its control socket.
protocol GuestWorkload {}

extension GuestWorkload {

    func bindVFIO(_ machine: Machine, _ bdf: String) throws -> Int {
        let lines = try machine.run("bind_vfio \(bdf)")
        let group = lines.first { $0.hasPrefix("@@BOUND \(bdf) ") }.flatMap { Int($0.split(separator: " ").last ?? "") }
        return try #require(group, "\(bdf) did not join an iommu group: \(lines)\n\(machine.log)")
    }

    /// Runs vfio-dma and returns its key=value report.
    func vfioRun(_ machine: Machine, group: Int, _ buffers: Int, _ iterations: Int) throws -> [String: String] {
        let lines = try machine.run("vfio-dma \(group) \(buffers) 4096 \(iterations)")
        let report = try #require(lines.first { $0.hasPrefix("@@VFIO ") }, "\(lines)")
        let fields = reportFields(report)
        #expect(fields["status"] == "ok", "\(report)")
        return fields
    }

    /// The key=value fields of a workload's "@@…" report line.
    func reportFields(_ report: String) -> [String: String] {
        var fields: [String: String] = [:]
        for field in report.split(separator: " ").dropFirst() {
            let parts = field.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = String(parts[1]) }
        }
        return fields
    }

    // MARK: Disks (scripts/guest/blk-io.c)

    /// Runs `blk-io ARGUMENTS --timeout SECONDS` and returns its report's fields, whatever its status: a
    /// disk whose DMA never completes gives status=timeout instead of hanging the console.
    func blkIO(_ machine: Machine, _ arguments: String, timeout seconds: Int = 120) throws -> [String: String] {
        let command = "blk-io \(arguments) --timeout \(seconds)"
        let (_, lines) = try machine.runStatus(command, timeout: .seconds(seconds + 60))
        let report = try #require(lines.first { $0.hasPrefix("@@BLK ") }, "\(command): \(lines)\n\(machine.log)")
        return reportFields(report)
    }

    /// The guest's disk names (vda, vdb, …) by the PCI address of their device.
    func disksByPCIAddress(_ machine: Machine, names: [String]) throws -> [String: String] {
        var disks: [String: String] = [:]
        for name in names {
            let line = try #require(try machine.run("blk_pci \(name)").first { $0.hasPrefix("@@BLKPCI \(name) ") })
            disks[String(line.split(separator: " ")[2])] = name
        }
        return disks
    }

    /// The type of the iommu group of the guest's PCI device `bdf` (DMA, DMA-FQ, identity or blocked).
    func groupType(_ machine: Machine, _ bdf: String) throws -> String {
        let line = try #require(try machine.run("group_type \(bdf)").first { $0.hasPrefix("@@GROUPTYPE \(bdf) ") })
        return String(line.split(separator: " ")[2])
    }

    /// The run's guest-visible rate; a run that reports none fails the test (it is never taken as 0).
    func rate(_ result: [String: String]) throws -> Double {
        let rate = try #require(result["pairs_per_second"].flatMap(Double.init), "no pairs_per_second in \(result)")
        try #require(rate > 0 && rate.isFinite, "pairs_per_second \(rate) in \(result)")
        return rate
    }

    func requestCounts(_ daemon: Daemon) throws -> [String: Int] {
        let requests = (try daemon.stats()["requests"] as? [[String: Any]]) ?? []
        var counts: [String: Int] = [:]
        for r in requests {
            if let type = r["type"] as? String, let status = r["status"] as? String, let n = r["count"] as? Int {
                counts["\(type)/\(status)"] = n
            }
        }
        if let unanswered = try daemon.stats()["unanswered"] as? Int, unanswered > 0 { counts["unanswered/-"] = unanswered }
        return counts
    }

    func failures(_ counts: [String: Int]) -> [String: Int] { counts.filter { !$0.key.hasSuffix("/OK") } }

    func delta(_ after: [String: Int], _ before: [String: Int], _ key: String) -> Int {
        (after[key] ?? 0) - (before[key] ?? 0)
    }

    func stat(_ daemon: Daemon, _ key: String) throws -> Int { (try daemon.stats()[key] as? Int) ?? -1 }


    func domains(_ daemon: Daemon) throws -> [DomainState] {
        let list = (try daemon.control(#"{"op":"domains"}"#)["domains"] as? [[String: Any]]) ?? []
        return list.map {
            DomainState(id: $0["id"] as? Int ?? -1, endpoints: $0["endpoints"] as? [Int] ?? [], mappings: $0["mappings"] as? Int ?? -1)
        }
    }

    func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
}
