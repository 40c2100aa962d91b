import DaemonTestSupport
@testable import vhost_iommu
import IOMMUFrontend
import SystemPackage
import VhostUser
import VhostUserTestSupport
import VirtioIOMMU

/// A front-end as QEMU's vhost-user-iommu-pci starts one with the daemon: connected, both rings described,
/// the features offered, HELLO answered (docs/frontend-protocol.md §3). What the protocol tests share.
struct FrontendConnection {
    let frontend: TestFrontend
    let memory: SharedMemory
    let requests: DriverQueue
    let events: DriverQueue
    let offered: UInt64
    let hello: HelloReply

    init(_ daemon: Daemon, capabilities: FrontendCapabilities) throws {
        frontend = try daemon.connect()
        memory = try SharedMemory(size: 8 << 20)
        requests = try DriverQueue(memory: memory, index: 0, size: 256)
        events = try DriverQueue(memory: memory, index: 1, size: 256)
        offered = try frontend.initialize(queues: [requests, events])
        let request = HelloRequest(capabilities: capabilities)
        let bytes = try FrontendProtocolEndToEndTests.request(frontend, .hello, request.encoded)
        hello = try bytes.withUnsafeBytes { raw throws(FrontendWireError) in try HelloReply(decoding: raw, for: request) }
    }

    /// Starts both rings with the transport's features and virtio-iommu's standard ones.
    func startRings() throws {
        try frontend.start(features: offered & (TransportFeatures.all | Features.standard.rawValue), memory: [memory],
                           queues: [requests, events])
    }
}

/// The shared region as QEMU creates it (§4.1): a sealed memfd of the layout's size, mapped.
final class SharedRegion {
    let file: OwnedFileDescriptor
    let region: FrontendRegion

    init(_ layout: RegionLayout) throws {
        file = OwnedFileDescriptor(try SystemCall.sealedMemfd(name: "region", size: Int(layout.regionSize)))
        region = FrontendRegion(try SharedFileMapping(descriptor: file, size: layout.regionSize, maximumSize: RegionLayout.maxRegionSize))
    }
}
