import ArgumentParser
import SystemPackage

/// `vhost-iommu viot`: writes the ACPI VIOT table for QEMU's `-acpitable file=…`.
struct VIOTCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "viot", abstract: "Write the ACPI VIOT table that puts PCI devices behind this IOMMU.")

    @Option(help: "The PCI address of the vhost-user device (BB:DD.F), as in -device …,bus=pcie.0,addr=DD.F.")
    var iommu: String = "00:02.0"

    @Option(name: .customLong("endpoints"), help: "PCI address ranges behind the IOMMU, FIRST-LAST (BB:DD.F-BB:DD.F). Repeatable.")
    var endpointRanges: [String] = ["00:00.0-00:1f.7"]

    @Option(help: "Where to write the table.")
    var output: String

    func table() throws -> VIOTTable {
        guard let iommuBDF = VIOTTable.bdf(iommu) else { throw ValidationError("bad --iommu address \(iommu)") }
        let ranges = try endpointRanges.map { text -> VIOTTable.PCIRange in
            let ends = text.split(separator: "-").map(String.init)
            guard ends.count == 2, let first = VIOTTable.bdf(ends[0]), let last = VIOTTable.bdf(ends[1]), first <= last else {
                throw ValidationError("bad --endpoints range \(text)")
            }
            return VIOTTable.PCIRange(first: first, last: last)
        }
        return VIOTTable(iommuBDF: iommuBDF, ranges: ranges)
    }

    func validate() throws { _ = try table() }

    func run() throws {
        let bytes = try table().bytes
        do {
            let fd = try FileDescriptor.open(FilePath(output), .writeOnly, options: [.create, .truncate, .closeOnExec],
                                             permissions: [.ownerReadWrite, .groupRead, .otherRead])
            try fd.closeAfter { _ = try fd.writeAll(bytes) }
        } catch {
            throw ValidationError("cannot write \(output)")
        }
    }
}
