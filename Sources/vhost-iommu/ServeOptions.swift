import ArgumentParser
import Logging
import PASIDAllocators
import PASIDStore
import VhostUser
import VirtioIOMMU

/// The serve command's options, their checks, and the device configuration they describe.
struct ServeOptions: ParsableArguments {
    @Option(help: "Listen for the front-end on this UNIX socket path.")
    var socketPath: String?

    @Option(help: "Use this already-connected socket descriptor.")
    var fd: Int32?

    @Flag(help: "Print the back-end's capabilities as JSON and exit.")
    var printCapabilities = false

    @Option(name: .customLong("endpoint"),
            help: "Endpoint IDs: a number or range, then regions: IDS[,msi=A-B][,reserved=A-B] or IDS,msi=none, and a PASID width: ,pasid=BITS (turns the PASID extension on). Repeatable. Default: 0-0xffff with the x86 MSI window.")
    var endpoints: [EndpointSpecification] = []

    @Option(help: "page_size_mask; its lowest set bit is the granule.")
    var pageSizeMask: NumberArgument = NumberArgument(argument: "0xfffffffffffff000")!

    @Option(help: "Usable IOVA range START-END (inclusive).")
    var inputRange: RangeArgument = RangeArgument(argument: "0-0xffffffffffffffff")!

    @Option(help: "Usable domain IDs START-END (inclusive).")
    var domainRange: RangeArgument = RangeArgument(argument: "0-0xffffffff")!

    @Option(help: "Bytes of PROBE properties.")
    var probeSize: UInt32 = 512

    @Option(help: "Whether unattached endpoints bypass the IOMMU after power-on (on/off).")
    var bypass: Toggle = .on

    @Option(help: "Maximum number of domains.")
    var maxDomains: Int = Limits().maxDomains

    @Option(help: "Maximum mappings in one domain.")
    var maxMappingsPerDomain: Int = Limits().maxMappingsPerDomain

    @Option(help: "Maximum mappings in all domains.")
    var maxMappings: Int = Limits().maxMappingsTotal

    @Option(help: "Fault events held while the guest posts no event buffer.")
    var maxPendingFaults: Int = Limits().maxPendingFaults

    @Option(help: "Memory regions the front-end may add (8-509).")
    var maxMemoryRegions: Int = GuestMemory.defaultMaxRegions

    @Option(help: "Largest vhost-user message payload accepted, in bytes (268-1048576).")
    var maxMessageSize: Int = MessageDecoder.defaultMaxPayloadSize

    @Option(help: "Serve control requests (JSON lines) on this UNIX socket path (mode 0600).")
    var controlSocket: String?

    @Option(help: "Longest time in microseconds to poll the request ring before sleeping (adaptive, 0-1000; 0: never poll).")
    var pollMaxUs: UInt64 = 100

    @Option(help: "While polling, spin this many microseconds without work before yielding the core between checks (0-1000; at or above --poll-max-us: never; default: never).")
    var pollYieldUs: UInt64?

    @Flag(help: "After the front-end disconnects, wait for the next one instead of exiting.")
    var reconnect = false

    @Option(help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: Logger.Level = .info

    @Option(help: "This VM's name in the PASID store (PASID extension only). Default: derived from the socket path (or the process with --fd).")
    var vm: String?

    @Option(help: "How many PASIDs this VM may hold (PASID extension only; default: the store's default quota).")
    var pasidQuota: Int?

    @OptionGroup var pasidStore: PASIDStoreLocation

    enum Toggle: String, ExpressibleByArgument, Sendable { case on, off }

    mutating func validate() throws {
        if printCapabilities { return }
        guard (socketPath == nil) != (fd == nil) else {
            throw ValidationError("exactly one of --socket-path and --fd is required")
        }
        if let fd, fd < 0 { throw ValidationError("--fd must be a descriptor number") }
        guard (GuestMemory.maxTableRegions...GuestMemory.maxRegionsLimit).contains(maxMemoryRegions) else {
            throw ValidationError("--max-memory-regions must be \(GuestMemory.maxTableRegions)...\(GuestMemory.maxRegionsLimit)")
        }
        guard (MessageDecoder.minimumMaxPayloadSize...(1 << 20)).contains(maxMessageSize) else {
            throw ValidationError("--max-message-size must be \(MessageDecoder.minimumMaxPayloadSize)...1048576")
        }
        if let pasidQuota, pasidQuota < 0 { throw ValidationError("--pasid-quota must not be negative") }
        guard pollMaxUs <= 1000 else { throw ValidationError("--poll-max-us must be 0...1000") }
        guard (pollYieldUs ?? 0) <= 1000 else { throw ValidationError("--poll-yield-us must be 0...1000") }
        if let width = pasidStore.width, !(1...maxPASIDWidth).contains(width) {
            throw ValidationError("--pasid-width must be 1...\(maxPASIDWidth)")
        }
        if !pasidExtension {
            for (option, given) in [("--vm", vm != nil), ("--pasid-quota", pasidQuota != nil), ("--pasid-width", pasidStore.width != nil)] where given {
                throw ValidationError("\(option) needs the PASID extension: give an endpoint a PASID width (--endpoint IDS,pasid=BITS) or name a store (--pasid-store PATH|memory)")
            }
        }
        if endpoints.contains(where: { Int($0.last - $0.first) >= EndpointSpecification.maxCount }) {
            throw ValidationError("an --endpoint range names more than \(EndpointSpecification.maxCount) endpoints")
        }
        _ = try deviceConfiguration()
    }

    /// Whether the device offers the PASID extension (F_PASID) and so needs the host-wide PASID store:
    /// when an endpoint supports PASIDs or a store is named. Without it the daemon never opens a store,
    /// so the plain device runs as any user.
    var pasidExtension: Bool { pasidStore.path != nil || endpoints.contains { $0.pasidBits > 0 } }

    func deviceConfiguration() throws -> Configuration {
        var map: [UInt32: [ReservedRegion]] = [:]
        var widths: [UInt32: Int] = [:]
        for spec in endpoints.isEmpty ? [.everyRequesterID] : endpoints {
            for id in spec.first...spec.last {
                map[id] = spec.regions
                widths[id] = spec.pasidBits > 0 ? spec.pasidBits : nil
            }
        }
        guard let input = IOVARange(first: inputRange.first, last: inputRange.last),
              domainRange.last <= UInt64(UInt32.max) else {
            throw ValidationError("bad --input-range or --domain-range")
        }
        var configuration = Configuration(
            endpoints: map, pageSizeMask: pageSizeMask.value, inputRange: input,
            domainRange: UInt32(domainRange.first)...UInt32(domainRange.last), probeSize: probeSize,
            bypass: bypass == .on, features: pasidExtension ? Features.standard.union(.pasid) : Features.standard,
            limits: Limits(maxDomains: maxDomains, maxMappingsPerDomain: maxMappingsPerDomain,
                           maxMappingsTotal: maxMappings, maxPendingFaults: maxPendingFaults))
        configuration.pasidWidths = widths
        do {
            try configuration.validate()
        } catch {
            throw ValidationError("\(error)")
        }
        return configuration
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
