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
    func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
    func u64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
    let features = VirtioSpec.VIRTIO_F_VERSION_1 | (flags & 1 != 0 ? VirtioSpec.VIRTIO_F_INDIRECT_DESC : 0)
        | (flags & 2 != 0 ? VirtioSpec.VIRTIO_F_EVENT_IDX : 0)
    embedded.send(.setFeatures, u64(features))
    embedded.send(.setMemTable, u32(1) + u32(0) + u64(base) + u64(UInt64(memory.bytes.count)) + u64(base) + u64(0), descriptors: [ram])
    embedded.send(.setVringNum, u32(0) + u32(UInt32(size)))
    embedded.send(.setVringBase, u32(0) + u32(UInt32(lastAvail)))
    embedded.send(.setVringAddr, u32(0) + u32(0) + u64(descriptors) + u64(used) + u64(avail) + u64(0))
    embedded.send(.setVringKick, u64(0), descriptors: [kick])
    embedded.send(.setVringCall, u64(0), descriptors: [call])
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
