// libFuzzer target: the vhost-user-iommu front-end protocol (docs/frontend-protocol.md). Random bytes go
// to every decoder (HELLO and its reply, SET_REGION, STATE_PUSH, RESET, the status, the region header,
// log entries, snapshots), whose successes must re-encode to the same bytes; and random entry streams,
// tails, front-end progress values and writer requests go through a shared region to the LogWriter and
// the MirrorReader, whose invariants are checked after every step. Nothing may trap. Built by
// scripts/fuzz with -sanitize=fuzzer -DFUZZING; otherwise a small program that replays inputs.
import FuzzSupport
import IOMMUFrontend

/// Decodes with `body`; on success the value must encode back to exactly the input.
func roundTrip<T>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(FrontendWireError) -> T,
                  encode: (T) -> [UInt8]) {
    let result = bytes.withUnsafeBytes { raw in Result { () throws(FrontendWireError) in try body(raw) } }
    if case .success(let value) = result {
        precondition(encode(value) == bytes, "\(T.self) accepted bytes it does not encode back")
    }
}

/// A log entry from the input: mostly well-formed and addressed to the current index and epoch, so that
/// the mirror's state rules are reached, sometimes raw bytes.
func entryBytes(_ input: inout ByteReader, index: UInt64, epoch: UInt32) -> [UInt8] {
    let shape = input.u8()
    if shape & 0xc0 == 0xc0 { return input.take(LogEntry.size) }
    let domain = UInt32(input.u8() % 8), endpoint = UInt32(input.u8() % 10)
    let start = UInt64(input.u8() % 32) << 12, end = start + (UInt64(input.u8() % 4 + 1) << 12) - 1
    let operation: LogOperation = switch shape % 7 {
    case 0: .domainCreate(domain: domain, bypass: input.u8() % 4 == 0)
    case 1: .domainDestroy(domain: domain)
    case 2: .attach(endpoint: endpoint, domain: domain)
    case 3: .detach(endpoint: endpoint, domain: domain)
    case 4: .map(domain: domain, virtualStart: start, virtualEnd: end, physicalStart: UInt64(input.u8()) << 12,
                 flags: UInt32(input.u8() % 8))
    case 5: .unmap(domain: domain, virtualStart: start, virtualEnd: end)
    default: .commit
    }
    var flags: LogEntryFlags = []
    if shape & 0x08 != 0 || operation == .commit { flags.insert(.last) }
    if shape & 0x10 != 0, operation.alwaysSynchronous { flags.insert(.sync) }
    if shape & 0x20 != 0, operation != .commit { flags.insert(.local) }
    let result = flags.contains(.last) && !flags.contains(.local)
    var bytes = LogEntry(indexLow: UInt32(truncatingIfNeeded: index), operation: operation, flags: flags,
                         requestPosition: result ? input.u16() : 0, status: result ? input.u8() % 9 : 0,
                         epoch: epoch).encoded
    if input.u8() == 0xff { bytes[Int(input.u8()) % LogEntry.size] ^= input.u8() | 1 }  // one corrupt byte
    return bytes
}

func fuzzFrontend(_ data: UnsafeBufferPointer<UInt8>) {
    var input = ByteReader(data)
    let setup = input.u8()
    let capabilities: FrontendCapabilities = setup & 1 != 0 ? .version1 : .commitWindow
    let layout = RegionLayout.standard(epoch: UInt32(setup >> 4), logEntries: 64)
    let memory = InMemoryRegion(byteCount: Int(layout.regionSize))
    var mirror = MirrorReader(memory: memory, layout: layout,
                              rules: .init(granule: setup & 2 != 0 ? 1 : 0x1000, inputRange: 0...(1 << 20) - 1,
                                           capabilities: capabilities, queueSize: 16, maxDomains: 6, maxMappings: 40),
                              startIndex: UInt64(input.u16()))
    EndpointBitmap(endpoints: 0..<8)!.write(to: memory, layout: layout)
    mirror.loadEndpointBitmap()
    guard var writer = try? LogWriter(memory: memory, layout: layout, capabilities: capabilities,
                                      startIndex: mirror.applied) else { return }
    var epoch = layout.epoch
    // The fault ring (§10) in a region of its own: QEMU's writer against the daemon's reader.
    let faultLayout = RegionLayout.standard(epoch: layout.epoch, logEntries: 64, faultEntries: 16)
    let faultMemory = InMemoryRegion(byteCount: Int(faultLayout.regionSize))
    var faultWriter = FaultRingWriter(memory: faultMemory, layout: faultLayout, startTail: UInt64(setup) << 8)
    guard var faultReader = try? FaultRingReader(memory: faultMemory, layout: faultLayout) else { return }
    var steps = 0
    while !input.isAtEnd && steps < 512 {
        steps += 1
        switch input.u8() % 11 {
        case 0:  // a front-end request payload, or HELLO's reply, or a status
            let bytes = input.take(Int(input.u8() % 48))
            switch input.u8() % 6 {
            case 0: roundTrip(bytes, { b throws(FrontendWireError) in try HelloRequest(decoding: b) }) { $0.encoded }
            case 1:
                let hello = HelloRequest(minVersion: 1, maxVersion: UInt16(input.u8() % 3 + 1), capabilities: .init(rawValue: input.u64()))
                roundTrip(bytes, { b throws(FrontendWireError) in try HelloReply(decoding: b, for: hello) }) { $0.encoded }
            case 2: roundTrip(bytes, { b throws(FrontendWireError) in try SetRegionRequest(decoding: b) }) { $0.encoded }
            case 3: roundTrip(bytes, { b throws(FrontendWireError) in try StatePushRequest(decoding: b) }) { $0.encoded }
            case 4: roundTrip(bytes, { b throws(FrontendWireError) in try ResetRequest(decoding: b) }) { $0.encoded }
            default: roundTrip(bytes, { b throws(FrontendWireError) in try FrontendStatus(decoding: b) }) { $0.encoded }
            }
        case 1:  // a region header, as the back-end copies it once
            var bytes = input.u8() % 2 == 0 ? layout.encodedHeader : input.take(RegionLayout.configurationSize)
            if input.u8() % 2 == 0 { bytes[Int(input.u8()) % bytes.count] = input.u8() }
            let size = input.u8() % 2 == 0 ? layout.regionSize : input.u64()
            let headerEpoch = input.u8() % 2 == 0 ? layout.epoch : input.u32()
            roundTrip(bytes, { b throws(FrontendWireError) in
                try RegionLayout(decodingHeader: b, regionSize: size, epoch: headerEpoch)
            }) { $0.encodedHeader }
        case 2:  // a raw log entry
            roundTrip(input.take(LogEntry.size), { b throws(FrontendWireError) in try LogEntry(decoding: b) }) { $0.encoded }
        case 3:  // a snapshot: random records behind a header whose counts the request repeats
            let counts = (UInt32(input.u8() % 6), UInt32(input.u8() % 6), UInt64(input.u8() % 8), UInt32(input.u8() % 4))
            let request = StatePushRequest(
                snapshotSize: StateSnapshot.byteCount(domains: UInt64(counts.0), endpoints: UInt64(counts.1),
                                                      mappings: counts.2, commits: UInt64(counts.3))!,
                epoch: epoch, domainCount: counts.0, endpointCount: counts.1, mappingCount: counts.2, commitCount: counts.3)
            var bytes = StateSnapshot(epoch: epoch, bypass: false).encoded
            bytes.replaceSubrange(12..<32, with: request.encoded[16..<24] + request.encoded[32..<36] + request.encoded[24..<32])
            bytes += input.take(Int(request.snapshotSize) - StateSnapshot.headerSize)
            if input.u8() % 8 == 0 { bytes.removeLast(Int(input.u8()) % bytes.count) }
            let result = bytes.withUnsafeBytes { raw in
                Result { () throws(FrontendWireError) in try StateSnapshot(decoding: raw, request: request) }
            }
            if case .success(let snapshot) = result {
                precondition(snapshot.encoded == bytes, "snapshot accepted bytes it does not encode back")
                _ = try? snapshot.validate(against: .init(
                    knownEndpoints: EndpointBitmap(endpoints: 0..<8)!, granule: 0x1000, maxDomains: 4, maxMappings: 6,
                    maxMappingsPerDomain: 3, queueSize: 2, capabilities: capabilities))
            }
        case 4, 5:  // entries injected by a misbehaving back-end, then a tail
            var tail = memory.loadAcquire(at: RegionLayout.tailOffset)
            for _ in 0..<Int(input.u8() % 6) {
                let bytes = entryBytes(&input, index: tail, epoch: epoch)
                bytes.withUnsafeBytes { memory.storeBytes($0, at: layout.entryOffset(tail)) }
                tail &+= 1
            }
            if input.u8() % 16 == 0 { tail = input.u64() }
            memory.storeRelease(tail, at: RegionLayout.tailOffset)
        case 6:  // a drain by the front-end, full or partial
            _ = try? mirror.drain(limit: input.u8() % 2 == 0 ? .max : Int(input.u8() % 8), acknowledge: input.u8() % 4 != 0)
        case 7:  // the back-end writes a request through the LogWriter; or the front-end's progress is garbage
            if input.u8() % 8 == 0 {
                memory.storeRelease(input.u64() % 256, at: input.u8() % 2 == 0 ? RegionLayout.appliedOffset : RegionLayout.ackedOffset)
                _ = try? writer.progress()
            } else {
                for _ in 0..<Int(input.u8() % 5) {
                    let bytes = entryBytes(&input, index: 0, epoch: 0)
                    let entry = bytes.withUnsafeBytes { raw in Result { () throws(FrontendWireError) in try LogEntry(decoding: raw) } }
                    if case .success(let e) = entry { try? writer.stage(e.operation) }
                }
                let outcome = input.u8() % 4 == 0 ? try? writer.commitLocal()
                    : try? writer.commit(requestAt: input.u16(), status: input.u8() % 9)
                if case .noSpace = outcome { _ = try? mirror.drain(); _ = try? writer.retry() }
                if var commit = outcome.flatMap({ if case .committed(let c) = $0 { c } else { nil } }) {
                    try? writer.checkNotifiers(of: [UInt32(input.u8() % 10)], for: &commit)
                }
            }
        case 8:  // reset or reconnect, as the front-end starts them
            epoch &+= 1
            if input.u8() % 2 == 0 {
                _ = try? mirror.drain()
                let reset = mirror.reset(epoch: epoch, kind: .device, bypass: false)
                if (try? writer.reset(epoch: reset.epoch, startIndex: reset.startIndex)) == nil {
                    writer = (try? LogWriter(memory: memory, layout: mirror.layout, capabilities: capabilities,
                                             startIndex: reset.startIndex)) ?? writer
                }
            } else {
                let request = mirror.beginSession(epoch: epoch)
                if let fresh = try? LogWriter(memory: memory, layout: mirror.layout, capabilities: capabilities,
                                              startIndex: request.startIndex) { writer = fresh }
            }
        case 10:  // the fault ring: records written, bytes or a tail forged, a drain by the back-end
            switch input.u8() % 4 {
            case 0:
                for _ in 0..<Int(input.u8() % 20) {
                    faultWriter.append(FaultRecord(endpoint: UInt32(input.u8() % 10), reason: input.u8() % 2 == 0 ? .domain : .mapping,
                                                   access: FaultRecord.Access(rawValue: input.u8() % 3 + 1), address: input.u64(),
                                                   epoch: input.u8() % 4 == 0 ? input.u32() : faultReader.epoch))
                }
            case 1:
                let bytes = input.take(FaultRecord.size)
                bytes.withUnsafeBytes { faultMemory.storeBytes($0, at: faultLayout.faultRecordOffset(UInt64(input.u8()))) }
                roundTrip(bytes, { b throws(FrontendWireError) in try FaultRecord(decoding: b, index: 0) }) { $0.encoded(index: 0) }
            case 2:
                faultMemory.storeRelease(input.u8() % 2 == 0 ? input.u64() : faultReader.head &+ UInt64(input.u8() % 40),
                                         at: FaultRing.tailOffset)
            default:
                let before = faultReader.head
                let tail = faultMemory.loadAcquire(at: FaultRing.tailOffset)
                var taken = 0
                let currentEpoch = faultReader.epoch
                if (try? faultReader.drain({ record in
                    precondition(record.epoch == currentEpoch, "a record of another epoch was taken")
                    taken += 1
                })) != nil {
                    // Bounded work: never more than the ring's size per call, and the head lands on the tail.
                    precondition(taken <= Int(faultLayout.faultEntries) && faultReader.head == tail, "fault ring drain overran")
                } else {
                    precondition(faultReader.head == before, "a refused fault_tail moved the head")
                }
            }
        default:  // translations, notifiers, and the snapshot of what the mirror accepted
            mirror.setNotifier(endpoint: UInt32(input.u8() % 10), flags: input.u8())
            _ = mirror.translate(endpoint: UInt32(input.u8() % 10), address: UInt64(input.u16()) << 8, write: input.u8() % 2 == 0,
                                 bypassAllowed: input.u8() % 2 == 0, msiWindows: [0xfee0_0000...0xfeef_ffff])
            var copy = mirror
            let snapshot = copy.snapshot(bypass: input.u8() % 2 == 0)
            let request = StatePushRequest(for: snapshot)
            let decoded = snapshot.encoded.withUnsafeBytes { raw in
                Result { () throws(FrontendWireError) in try StateSnapshot(decoding: raw, request: request) }
            }
            // Everything the front-end's validation accepted, the back-end's snapshot decoder accepts.
            guard case .success(let back) = decoded, back == snapshot else { fatalError("mirror snapshot refused: \(decoded)") }
        }
        if let problem = mirror.invariantViolation() { fatalError("mirror invariant broken: \(problem)") }
    }
}

@main struct FuzzFrontendMain {
    static func main() throws { try runFuzzTarget("FuzzFrontend", fuzzFrontend, writeSeeds: writeSeeds(to:)) }
}

/// The seed corpus: a session that creates, attaches, maps, drains and snapshots; a reset; the LogWriter
/// path; each request payload and an entry.
func writeSeeds(to directory: String) {
    // An entry for `entryBytes`: its shape (op = shape % 7; 0x08 LAST, 0x10 SYNC), domain, endpoint,
    // first page, pages − 1, the op's fields, then req_pos and status (LAST), then "no corruption".
    let create: [UInt8] = [0x0e, 1, 0, 0, 0, 1, 1, 0, 0, 0]  // DOMAIN_CREATE(1)|LAST
    let attach: [UInt8] = [0x1e, 1, 2, 0, 0, 2, 0, 0, 0]  // ATTACH(2, 1)|SYNC|LAST
    let map: [UInt8] = [0x0b, 1, 0, 3, 1, 9, 3, 3, 0, 0, 0]  // MAP(1, 0x3000-0x4fff → 0x9000, RW)|LAST
    let drain: [UInt8] = [6, 0, 1]
    let look: [UInt8] = [9, 2, 3, 2, 0x30, 0, 1, 0, 0]  // notifier, translate, snapshot
    // setup (version-1 caps, 4 KiB granule, epoch 1), start index 0; inject 3 entries, keep the tail.
    var session: [UInt8] = [0x11, 0, 0, 4, 3]
    session += create
    session += attach
    session += map
    session += [1]
    session += drain
    session += look
    var reset = session
    reset += [8, 0, 4, 1]
    reset += create
    reset += [1]
    reset += drain
    reset += look
    var writer: [UInt8] = [0x13, 0, 0, 7, 1, 2]
    writer += create
    writer += attach
    writer += [1, 0x34, 0x12, 0, 2]
    writer += drain
    writer += look
    // Step 0: a length, the bytes, then which decoder; step 1: the valid header, unchanged; step 2: an entry.
    var payloads: [UInt8] = [0x01, 0, 0, 0, 16]
    payloads += HelloRequest(capabilities: .version1).encoded
    payloads += [0, 0, 24]
    payloads += SetRegionRequest(regionSize: 81920, epoch: 1, startIndex: 5).encoded
    payloads += [2, 0, 16]
    payloads += ResetRequest(epoch: 2, kind: .system, bypass: true, startIndex: 5).encoded
    payloads += [4, 1, 0, 1, 0, 0, 2]
    payloads += LogEntry(indexLow: 3, operation: .commit, flags: .last, status: 4, epoch: 1).encoded
    // The fault ring: two records (endpoint, reason, access, address, own epoch), then a drain.
    var faults: [UInt8] = [0x11, 0, 0, 10, 0, 2]
    faults += [1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    faults += [2, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 1]
    faults += [10, 3]
    for (name, bytes) in [("session", session), ("reset", reset), ("writer", writer), ("payloads", payloads), ("faults", faults)] {
        writeFile("\(directory)/\(name)", bytes)
    }
}
