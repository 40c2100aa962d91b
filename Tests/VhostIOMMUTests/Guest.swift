import DaemonTestSupport
import Foundation
import Glibc
import VhostUser
import VhostUserTestSupport
import VirtioIOMMU
import SystemPackage

/// A started device: front-end, guest memory, request and event queues.
final class Guest {
    let frontend: TestFrontend
    let memory: SharedMemory
    var requests: DriverQueue
    var events: DriverQueue
    let features: UInt64

    init(_ daemon: Daemon, queueSize: Int = 256, acceptPASID: Bool = false) throws {
        frontend = try daemon.connect()
        memory = try SharedMemory(size: 8 << 20)
        requests = try DriverQueue(memory: memory, index: 0, size: queueSize)
        events = try DriverQueue(memory: memory, index: 1, size: queueSize)
        let offered = try frontend.initialize(queues: [requests, events])
        // What a Linux guest acks (plus F_PASID for a driver that implements the extension).
        features = offered & (IOMMUSpec.linuxGuestFeatures | (acceptPASID ? IOMMUSpec.VIRTIO_IOMMU_F_PASID : 0))
        try frontend.start(features: features, memory: [memory], queues: [requests, events])
    }

    /// Sends one request with a writable part of `writable` bytes; returns the used length and reply.
    func send(_ request: [UInt8], writable: Int = 4) -> (UInt32?, [UInt8]) {
        let head = requests.add(readable: [request], writable: [writable], indirect: true)
        requests.kickNow()
        let used = requests.waitForUsed(1).first
        return (used?.length, requests.reply(of: head))
    }

    func status(_ request: [UInt8]) -> Status? {
        statusByte(request).flatMap(Status.init(rawValue:))
    }

    /// The status byte of the tail, or nil when the used length is not the 4-byte tail.
    func statusByte(_ request: [UInt8]) -> UInt8? {
        let (used, reply) = send(request)
        guard used == 4 else { return nil }
        return reply[0]
    }

    /// Restarts the queues as a reset guest would: fresh rings at index 0.
    func restartAsResetGuest() throws {
        try frontend.stop(queues: [requests, events])
        requests = try DriverQueue(memory: memory, index: 0, size: requests.size)
        events = try DriverQueue(memory: memory, index: 1, size: events.size)
        try frontend.start(features: features, memory: [memory], queues: [requests, events])
    }
}
