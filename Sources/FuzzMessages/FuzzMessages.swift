// libFuzzer target: the vhost-user message stream, split into chunks that carry fuzzed numbers of
// descriptors (the embedded driver's memory files and events), through the engine's decoder,
// validation and handlers.
// After each input the "connection" ends; no descriptor may be left open.
import FuzzSupport
import VhostUserCore
import VhostUserEmbedded
import VhostUserTestSupport

/// The message stream, over the embedded driver: each chunk arrives with 0–3 descriptors (memory files of
/// 64 KiB or eventfds, by the fuzzed kind bits), every eventfd the front-end made is signalled (as if it
/// kicked every ring), and the engine takes one turn. At the end the front-end hangs up: every descriptor
/// the engine was given must be closed by then.
func fuzzMessages(_ data: UnsafeBufferPointer<UInt8>) {
    let host = EmbeddedHost()
    let embedded = EmbeddedVhostUser(device: EchoDevice(.embedded(host)), host: host, limits: .init(maxMemoryRegions: 8))
    var events: [HostDescriptor] = []
    var input = ByteReader(data)
    while !input.isAtEnd {
        let length = Int(input.u16() % 600)
        let kinds = input.u8()
        let count = Int(kinds % 4)
        let descriptors = (0..<count).map { index -> HostDescriptor in
            if (kinds >> (2 + index)) % 2 == 0 { return embedded.host.open(.memory(EmbeddedMemory(size: 65536))) }
            let event = embedded.host.open(.event(EmbeddedEvent()))
            events.append(event)
            return event
        }
        let chunk = input.take(min(length, input.remaining))
        embedded.sendRaw(chunk, descriptors: descriptors)
        for event in events { embedded.host.signal(event) }
        embedded.step()
        _ = embedded.readOutbound(.max)
        if !embedded.isConnected { embedded.connect() }  // a fatal protocol error ended the "connection"
    }
    embedded.disconnect()
    precondition(embedded.host.engineHeld.isEmpty, "descriptor leak: \(embedded.host.engineHeld.count) descriptors still open")
}

@main struct FuzzMessagesMain {
    static func main() throws { try runFuzzTarget("FuzzMessages", fuzzMessages, writeSeeds: writeSeeds(to:)) }
}

/// The seed corpus: QEMU's handshake and start, as chunks in this target's input format.
func writeSeeds(to directory: String) {
    func message(_ request: FrontendRequest, _ payload: [UInt8] = [], fds: UInt8 = 0, flags: UInt32 = 9) -> [UInt8] {
        let body = MessageHeader(request: request.rawValue, flags: flags, size: UInt32(payload.count)).bytes + payload
        return [UInt8(body.count & 0xff), UInt8(body.count >> 8), fds] + body
    }
    func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
    func u64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
    let region = u64(0) + u64(65536) + u64(0x7000_0000) + u64(0)
    let handshake = message(.getFeatures) + message(.getProtocolFeatures)
        + message(.setProtocolFeatures, u64(0x1_a229)) + message(.getQueueNum) + message(.setOwner)
        + message(.setFeatures, u64(0x1_7000_0005))
    let rings = message(.setMemTable, u32(1) + u32(0) + region, fds: 1)
        + message(.setVringNum, u32(0) + u32(16)) + message(.setVringBase, u32(0) + u32(0))
        + message(.setVringAddr, u32(0) + u32(0) + u64(0x7000_0000) + u64(0x7000_1000) + u64(0x7000_0800) + u64(0))
        + message(.setVringKick, u64(0), fds: 1 | 1 << 2) + message(.setVringCall, u64(0), fds: 1 | 1 << 2)
        + message(.setVringEnable, u32(0) + u32(1)) + message(.setStatus, u64(15))
    let config = message(.getConfig, u32(0) + u32(40) + u32(0) + [UInt8](repeating: 0, count: 40))
        + message(.setConfig, u32(36) + u32(1) + u32(0) + [1])
    let memory = message(.getMaxMemSlots) + message(.addMemReg, u64(0) + region, fds: 1)
        + message(.remMemReg, u64(0) + region)
    let stop = message(.setVringEnable, u32(0) + u32(0)) + message(.getVringBase, u32(0) + u32(0))
        + message(.resetDevice) + message(.getStatus)
    for (name, bytes) in [("handshake", handshake), ("start", handshake + rings), ("config", handshake + config),
                          ("memory", handshake + memory), ("stop", handshake + rings + stop)] {
        writeFile("\(directory)/\(name)", bytes)
    }
}
