// libFuzzer target: descriptor-chain walking over fuzzed guest memory and rings (split virtqueue),
// with NEXT, INDIRECT, loops, out-of-range addresses and corrupt indices.
import FuzzSupport
import VhostUserCore
import VhostUserEmbedded
import VhostUserTestSupport

let base: UInt64 = 0x1000_0000

/// Fuzzed bytes become guest RAM at guest-physical (and user) address `base`, with a split ring of a
/// fuzzed size at fuzzed addresses, set up over the embedded driver as a front-end would (no
/// PROTOCOL_FEATURES: the ring starts enabled), kicked once; the engine walks the chains the ring offers
/// in one loop turn.
func fuzzChains(_ data: UnsafeBufferPointer<UInt8>) {
    var input = ByteReader(data)
    let size = 1 << Int(input.u8() % 9)
    let flags = input.u8()
    let lastAvail = input.u16()
    func address() -> UInt64 { let v = input.u16(); return v & 0x8000 != 0 ? base &- UInt64(v & 0xff) : base + UInt64(v & 0x7fff) }
    let descriptors = address(), avail = address(), used = address()
    let bytes = input.take(min(input.remaining, 32768))

    let host = EmbeddedHost()
    let embedded = EmbeddedVhostUser(device: EchoDevice(.embedded(host)), host: host)
    let memory = EmbeddedMemory(size: max(bytes.count, 1))
    memory.bytes.copyBytes(from: bytes.isEmpty ? [0] : bytes)
    let ram = embedded.host.open(.memory(memory))
    let kick = embedded.host.open(.event(EmbeddedEvent()))
    let call = embedded.host.open(.event(EmbeddedEvent()))
    let features = VirtioSpec.VIRTIO_F_VERSION_1 | (flags & 1 != 0 ? VirtioSpec.VIRTIO_F_INDIRECT_DESC : 0)
        | (flags & 2 != 0 ? VirtioSpec.VIRTIO_F_EVENT_IDX : 0)
    // Queued, not yet handled, so none of these can fail: the connection is open until the next step.
    let frontend = TestFrontend(embedded: embedded)
    typealias B = TestFrontend
    try! frontend.setFeatures(features)
    try! frontend.send(.setMemTable, B.bytes(UInt32(1)) + B.bytes(UInt32(0)) + B.bytes(base) + B.bytes(UInt64(memory.bytes.count))
                       + B.bytes(base) + B.bytes(UInt64(0)), fds: [ram.rawValue])
    try! frontend.setVringNum(0, size)
    try! frontend.setVringBase(0, lastAvail)
    try! frontend.setVringAddr(0, descriptors: descriptors, used: used, avail: avail)
    try! frontend.setVringFD(.setVringKick, 0, kick.rawValue)
    try! frontend.setVringFD(.setVringCall, 0, call.rawValue)
    embedded.step()
    embedded.host.signal(kick)
    // One turn: at most the engine's chain budget (a ring whose used entries rewrite its own avail
    // index never runs dry; the engine re-kicks itself and would go on turn after turn).
    embedded.step()
    embedded.disconnect()
    precondition(embedded.host.engineHeld.isEmpty, "descriptor leak: \(embedded.host.engineHeld)")
}

@main struct FuzzChainsMain {
    static func main() throws { try runFuzzTarget("FuzzChains", fuzzChains) }
}
