import SeededRandom
import DaemonTestSupport
import Foundation
import Glibc
import TestSupport
import Testing
import VhostUser
import VhostUserTestSupport
import VirtioIOMMU

/// Open descriptors of another process.
func descriptorCount(of pid: Int32) -> Int { ProcessDescriptors.count(of: pid) }

/// Resident memory of another process, in KiB.
func residentKiB(of pid: Int32) -> Int {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return -1 }
    return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" })[1]) ?? -1
}

/// A front-end that misbehaves: the daemon must answer with a clean error or a clean disconnect, never
/// crash, never leak a descriptor, and keep serving (hardening issue; docs/security.md).
@Suite(.serialized) struct HostileFrontendTests {
    // vhost-user.rst "Message specification": malformed messages get a clean disconnect (docs/security.md).
    // The random input is seeded: a failure prints the seed, and VHOST_IOMMU_TEST_SEED=<seed> replays it.
    @Test func garbageAndHugeMessages() throws {
        let daemon = try Daemon(["--reconnect"])
        let pid = daemon.process.processIdentifier
        let baseline = descriptorCount(of: pid)
        let seed = SplitMix64.testSeed()
        var rng = SplitMix64(seed: seed)
        let inputs: [[UInt8]] = [
            (0..<1024).map { _ in UInt8.random(in: 0...255, using: &rng) },
            MessageHeader(request: 5, flags: 1, size: 0xffff_fff0).bytes,             // huge size
            MessageHeader(request: 1, flags: 0x7, size: 0).bytes,                      // REPLY bit from the front-end
            MessageHeader(request: 0xdead, flags: 1, size: 8).bytes + [1, 2, 3, 4, 5, 6, 7, 8],  // unknown request
            MessageHeader(request: 5, flags: 1, size: 200).bytes + [UInt8](repeating: 0xff, count: 50),  // truncated
        ]
        for input in inputs {
            let frontend = try daemon.connect()
            try? frontend.sendRaw(input)
            frontend.disconnect()
        }
        // The daemon closes a connection's descriptors on its own thread: wait for the count to come back.
        #expect(waitUntil { descriptorCount(of: pid) == baseline },
                "descriptors: \(descriptorCount(of: pid)) vs \(baseline); seed \(seed)")
        // Still serving.
        let guest: Guest
        do { guest = try Guest(daemon) } catch {
            Issue.record("the daemon no longer serves: \(error); seed \(seed)")
            return
        }
        #expect(guest.status(AttachRequest(domain: 1, endpoint: 1).encoded) == .ok, "seed \(seed)")
        #expect(daemon.process.isRunning, "seed \(seed)")
    }

    // Spec: docs/vhost-user.md "Validation before dispatch": exact descriptor counts, extra descriptors closed (docs/security.md).
    @Test func wrongDescriptorCountsLeakNothing() throws {
        let daemon = try Daemon()
        let pid = daemon.process.processIdentifier
        let frontend = try daemon.connect()
        try frontend.setProtocolFeatures(.supported)
        let memory = try SharedMemory(size: 1 << 20)
        let a = try SystemCall.eventFD(), b = try SystemCall.eventFD()
        defer { try? a.close(); try? b.close() }
        _ = try frontend.getFeatures()
        let baseline = descriptorCount(of: pid)
        // One region described, three descriptors sent.
        #expect(try frontend.sendAcked(.setMemTable, [1, 0, 0, 0, 0, 0, 0, 0] + memory.regionDescription,
                                       fds: [memory.descriptor.rawValue, a.rawValue, b.rawValue]) == false)
        #expect(try frontend.sendAcked(.setVringKick, TestFrontend.bytes(UInt64(0)), fds: [a.rawValue, b.rawValue]) == false)
        try frontend.send(.getFeatures, fds: [a.rawValue, b.rawValue, memory.descriptor.rawValue])
        #expect(try frontend.receiveReply(to: .getFeatures).isEmpty)
        #expect(try frontend.sendAcked(.setVringCall, TestFrontend.bytes(UInt64(1 << 8)), fds: [a.rawValue]) == false)
        #expect(waitUntil { descriptorCount(of: pid) == baseline }, "descriptors: \(descriptorCount(of: pid)) vs \(baseline)")
    }

    /// QEMU's initialization and start, one step at a time.
    func steps(_ frontend: TestFrontend, _ memory: SharedMemory, _ queues: [DriverQueue]) -> [() throws -> Void] {
        var list: [() throws -> Void] = [
            { _ = try frontend.getFeatures() },
            { try frontend.setProtocolFeatures(.supported) },
            { _ = try frontend.getU64(.getQueueNum) },
            { try frontend.setOwner() },
            { try frontend.setFeatures(IOMMUSpec.linuxGuestFeatures & ~VirtioSpec.VIRTIO_F_ACCESS_PLATFORM) },
            { try frontend.setMemTable([memory]) },
        ]
        for queue in queues {
            list += [
                { try frontend.setVringNum(queue.index, queue.size) },
                { try frontend.setVringBase(queue.index, 0) },
                { let a = queue.userAddresses
                  try frontend.setVringAddr(queue.index, descriptors: a.descriptors, used: a.used, avail: a.avail) },
                { try frontend.setVringFD(.setVringKick, queue.index, queue.kick.rawValue) },
                { try frontend.setVringFD(.setVringCall, queue.index, queue.call.rawValue) },
                { try frontend.setVringEnable(queue.index, true) },
            ]
        }
        list.append { try frontend.setStatus(0x0f) }
        return list
    }

    // Spec: docs/vhost-user.md "When the device is reset": a disconnect at any step resets and leaks nothing (docs/security.md).
    @Test func disconnectAtEveryStep() throws {
        let daemon = try Daemon(["--reconnect"])
        let pid = daemon.process.processIdentifier
        let baseline = descriptorCount(of: pid)
        let memory = try SharedMemory(size: 1 << 20)
        let queues = try (0..<2).map { try DriverQueue(memory: memory, index: $0, size: 64) }
        let total = steps(try daemon.connect(), memory, queues).count
        for stop in 0...total {
            let frontend = try daemon.connect()
            for step in steps(frontend, memory, queues).prefix(stop) { try step() }
            frontend.disconnect()
            #expect(waitUntil { descriptorCount(of: pid) == baseline }, "after \(stop) steps: \(descriptorCount(of: pid)) vs \(baseline)")
        }
        let guest = try Guest(daemon)
        #expect(guest.status(AttachRequest(domain: 1, endpoint: 1).encoded) == .ok)
    }

    // A front-end that stops reading replies blocks neither the device's queues nor the daemon.
    // Spec: docs/vhost-user.md "Validation before dispatch": no more reading while replies wait (docs/security.md "Caps").
    @Test func frontendThatStopsReading() throws {
        let daemon = try Daemon()
        let guest = try Guest(daemon)
        try SystemCall.setNonBlocking(guest.frontend.socketDescriptor)
        var sent = 0
        let request = MessageHeader(request: FrontendRequest.getFeatures.rawValue, flags: 1, size: 0).bytes
        while sent < 100_000 {
            let n = request.withUnsafeBytes { (try? SystemCall.send(guest.frontend.socketDescriptor, $0)) ?? 0 }
            if n == 0 { break }
            sent += 1
        }
        #expect(sent < 100_000)  // the socket filled up: the daemon stopped reading
        // The rings still run.
        #expect(guest.status(AttachRequest(domain: 4, endpoint: 4).encoded) == .ok)
        #expect(daemon.process.isRunning)
        guest.frontend.disconnect()
        #expect(daemon.waitForExit() == 0)
    }

    // A guest that floods MAP gets NOMEM at the cap, and the daemon's memory stays bounded.
    // Spec: docs/security.md "Caps" (--max-mappings) and virtio 1.4 §5.13.6.5 (no room for a mapping: NOMEM).
    @Test func mapFloodIsBounded() throws {
        let daemon = try Daemon(["--max-mappings", "100000", "--bypass", "off"])
        let pid = daemon.process.processIdentifier
        let guest = try Guest(daemon)
        #expect(guest.status(AttachRequest(domain: 1, endpoint: 1).encoded) == .ok)
        let before = residentKiB(of: pid)
        var next: UInt64 = 0
        for _ in 0..<(150_000 / 250) {
            var heads: [UInt16] = []
            for _ in 0..<250 {
                let iova = next << 12
                next += 1
                heads.append(guest.requests.add(readable: [MapRequest(domain: 1, virtualStart: iova, virtualEnd: iova + 0xfff,
                                                                      physicalStart: iova, flags: 3).encoded],
                                                writable: [4], indirect: true))
            }
            guest.requests.kickNow()
            #expect(guest.requests.waitForUsed(heads.count, timeout: .seconds(20)).count == heads.count)
            guest.memory.resetAllocations(keeping: guest.memory.allocated - heads.count * (36 + 4 + 32 + 16))
        }
        let after = residentKiB(of: pid)
        #expect(try daemon.requestCount("MAP", "OK") == 100_000)
        #expect(try daemon.requestCount("MAP", "NOMEM") == 50_000)
        // 100k mappings at ≤ 64 bytes each is ~6 MiB; allow for allocator slack, not for unbounded growth.
        // Under AddressSanitizer (scripts/test-asan) the quarantine and shadow memory add their own share.
        let bound = getenv("VHOST_IOMMU_SANITIZER") == nil ? 32 * 1024 : 256 * 1024
        #expect(after - before < bound, "RSS grew \(after - before) KiB")
    }
}
