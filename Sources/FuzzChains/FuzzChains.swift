// libFuzzer target: descriptor-chain walking over fuzzed guest memory and rings (split virtqueue),
// with NEXT, INDIRECT, loops, out-of-range addresses and corrupt indices.
import FuzzSupport
@_spi(Fuzzing) import VhostUser

let base: UInt64 = 0x1000_0000

func fuzzChains(_ data: UnsafeBufferPointer<UInt8>) {
    var input = ByteReader(data)
    let size = 1 << Int(input.u8() % 9)
    let flags = input.u8()
    let lastAvail = input.u16()
    // Ring positions inside (or, with the high bit, near) the fuzzed memory.
    func address() -> UInt64 { let v = input.u16(); return v & 0x8000 != 0 ? base &- UInt64(v & 0xff) : base + UInt64(v & 0x7fff) }
    let descriptors = address(), avail = address(), used = address()
    let memory = input.take(min(input.remaining, 32768))
    _ = ChainFuzzing.run(memory: memory.isEmpty ? [0] : memory, base: base, size: size, descriptors: descriptors,
                         avail: avail, used: used, lastAvail: lastAvail, indirect: flags & 1 != 0, eventIndex: flags & 2 != 0)
}

#if FUZZING
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    fuzzChains(UnsafeBufferPointer(start: data, count: size))
    return 0
}


@_cdecl("FuzzChains_main")
public func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    runLibFuzzer(argc, argv, fuzzOne)
}
#else
@main struct FuzzChainsMain {
    static func main() throws { try replay("FuzzChains", fuzzChains) }
}
#endif
