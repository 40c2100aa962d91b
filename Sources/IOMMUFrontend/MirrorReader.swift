/// Why the front-end stopped applying the log (docs/frontend-protocol.md §9.1). Each is a protocol
/// violation: the front-end keeps the valid prefix, disconnects and resyncs at the reconnect.
public enum MirrorViolation: Error, Hashable, Sendable {
    /// An earlier violation stopped this mirror; only a new session (`beginSession`) restarts it.
    case fenced
    /// `tail` is below `applied` or more than `log_entries` ahead of it.
    case tail(tail: UInt64, applied: UInt64)
    case entry(index: UInt64, EntryViolation)
}

/// What is wrong with one entry (§9.1).
public enum EntryViolation: Hashable, Sendable {
    case malformed(FrontendWireError)
    case indexMismatch(found: UInt32)
    case epochMismatch(found: UInt32)
    case localNotGranted
    /// LOCAL on some entries of a group and not on others.
    case localMixed
    /// The entry just below `tail` does not end a request.
    case noLastAtTail
    /// With COMMIT_WINDOW: a request's position is already in the commit window (§8.3).
    case positionInWindow(UInt16)
    case domainExists(UInt32)
    case noSuchDomain(UInt32)
    case domainHasEndpoints(UInt32)
    case tooManyDomains
    case unknownEndpoint(UInt32)
    case endpointAttached(UInt32)
    case notAttached(endpoint: UInt32, domain: UInt32)
    case bypassDomain(UInt32)
    case outsideInputRange
    case misaligned
    case overlap
    case tooManyMappings
    case straddle
    case nothingToUnmap
}

/// What a translation from the mirror gives (plan §1.7, the front-end's `translate()`).
public enum MirrorTranslation: Hashable, Sendable {
    case identity
    case translated(UInt64)
    case refused(Reason)

    public enum Reason: Hashable, Sendable {
        /// Not in the endpoint bitmap: the back-end does not serve it.
        case unknownEndpoint
        /// Unattached while bypass is not allowed.
        case domain
        /// No mapping holds the address.
        case mapping
        /// The mapping lacks READ or WRITE.
        case permission
    }
}

/// A reference implementation of the front-end's side of the log, for tests and the fuzzer: it creates
/// the region header, copies and validates every entry exactly as §9.1 says QEMU does, applies it to a
/// private mirror of domains, attachments and mappings, keeps the commit window, translates, builds
/// the STATE_PUSH snapshot and plays the front-end's part of RESET and reconnect.
///
/// Effects (address-space switches, notifiers) do not exist here, so every drain is a full one.
public struct MirrorReader {
    public struct Rules: Sendable {
        /// The mapping granule (from `page_size_mask`): a power of two.
        public var granule: UInt64
        public var inputRange: ClosedRange<UInt64>
        public var capabilities: FrontendCapabilities
        /// HELLO's queue size: the commit window's length.
        public var queueSize: Int
        /// The front-end's own caps, independent of the back-end's (§9.1).
        public var maxDomains: Int
        public var maxMappings: Int

        public init(granule: UInt64, inputRange: ClosedRange<UInt64> = 0...UInt64.max,
                    capabilities: FrontendCapabilities = .version1, queueSize: Int = 1024,
                    maxDomains: Int = 1 << 20, maxMappings: Int = 1 << 22) {
            self.granule = granule
            self.inputRange = inputRange
            self.capabilities = capabilities
            self.queueSize = queueSize
            self.maxDomains = maxDomains
            self.maxMappings = maxMappings
        }
    }

    public struct Mapping: Hashable, Sendable {
        public var virtualStart: UInt64
        public var virtualEnd: UInt64
        public var physicalStart: UInt64
        public var flags: UInt32

        public init(virtualStart: UInt64, virtualEnd: UInt64, physicalStart: UInt64, flags: UInt32) {
            self.virtualStart = virtualStart
            self.virtualEnd = virtualEnd
            self.physicalStart = physicalStart
            self.flags = flags
        }
    }

    public struct Domain: Hashable, Sendable {
        public let bypass: Bool
        public internal(set) var endpoints: Set<UInt32> = []
        /// Ascending `virtualStart`, apart.
        public internal(set) var mappings: [Mapping] = []

        /// The index of the last mapping starting at or below `address`, if any.
        func floorIndex(_ address: UInt64) -> Int? {
            var low = 0, high = mappings.count
            while low < high {
                let mid = (low + high) / 2
                if mappings[mid].virtualStart <= address { low = mid + 1 } else { high = mid }
            }
            return low == 0 ? nil : low - 1
        }

        public func mapping(containing address: UInt64) -> Mapping? {
            guard let i = floorIndex(address), mappings[i].virtualEnd >= address else { return nil }
            return mappings[i]
        }
    }

    public let memory: any RegionMemory
    public private(set) var layout: RegionLayout
    public let rules: Rules
    public private(set) var knownEndpoints = EndpointBitmap()
    public private(set) var domains: [UInt32: Domain] = [:]
    public private(set) var endpointDomain: [UInt32: UInt32] = [:]
    public private(set) var mappingCount = 0
    public private(set) var applied: UInt64
    public private(set) var acked: UInt64
    public private(set) var violation: MirrorViolation?
    /// Entries applied since this reader was made.
    public private(set) var appliedEntries = 0
    /// The commit window (§8.3), kept with COMMIT_WINDOW only, and the positions in it.
    private var commitRing: [StateSnapshot.Commit] = []
    private var windowPositions: Set<UInt16> = []
    /// Whether the group in progress is LOCAL (nil between groups).
    private var groupIsLocal: Bool?

    /// The front-end's part before SET_REGION (§4.1): writes the header and `applied = acked = startIndex`.
    public init(memory: any RegionMemory, layout: RegionLayout, rules: Rules, startIndex: UInt64) {
        self.memory = memory
        self.layout = layout
        self.rules = rules
        self.applied = startIndex
        self.acked = startIndex
        writeHeader()
    }

    private func writeHeader() {
        layout.encodedHeader.withUnsafeBytes { memory.storeBytes($0, at: 0) }
        memory.storeRelease(applied, at: RegionLayout.appliedOffset)
        memory.storeRelease(acked, at: RegionLayout.ackedOffset)
    }

    /// After SET_REGION's OK: copies the endpoint bitmap, once.
    public mutating func loadEndpointBitmap() {
        knownEndpoints = EndpointBitmap(reading: memory, layout: layout)
    }

    /// The SET_REGION request this session needs.
    public var setRegionRequest: SetRegionRequest {
        SetRegionRequest(regionSize: layout.regionSize, epoch: layout.epoch, startIndex: applied)
    }

    /// A reconnect (§8.2): the mirror stays; a new epoch, `start_index` = `applied`, violations forgotten.
    public mutating func beginSession(epoch: UInt32) -> SetRegionRequest {
        layout.epoch = epoch
        acked = applied
        violation = nil
        groupIsLocal = nil
        writeHeader()
        return setRegionRequest
    }

    /// Rule 2's front-end half (§6): store the notifier byte, full fence; the caller then drains.
    public func setNotifier(endpoint: UInt32, flags: UInt8) {
        guard endpoint < UInt32(FrontendProtocol.endpointCount) else { return }
        withUnsafeBytes(of: flags) { memory.storeBytes($0, at: layout.notifierOffset(of: endpoint)) }
        memory.fullFence()
    }

    // MARK: Draining

    /// Applies up to `limit` entries below `tail` (acquire), storing `applied` as it goes; with
    /// `acknowledge`, stores `acked` once everything below the loaded `tail` is applied. Returns how
    /// many entries it applied. A violation stops it for good (until `beginSession`).
    @discardableResult
    public mutating func drain(limit: Int = .max, acknowledge: Bool = true) throws(MirrorViolation) -> Int {
        guard violation == nil else { throw .fenced }
        let tail = memory.loadAcquire(at: RegionLayout.tailOffset)
        guard tail >= applied, tail - applied <= UInt64(layout.logEntries) else {
            throw fail(.tail(tail: tail, applied: applied))
        }
        var count = 0
        var bytes = [UInt8](repeating: 0, count: LogEntry.size)
        while applied < tail && count < limit {
            let index = applied
            bytes.withUnsafeMutableBytes { memory.copyBytes(at: layout.entryOffset(index), into: $0) }
            let decoded = bytes.withUnsafeBytes { raw in
                Result { () throws(FrontendWireError) in try LogEntry(decoding: raw) }
            }
            let entry: LogEntry
            switch decoded {
            case .success(let value): entry = value
            case .failure(let error): throw fail(.entry(index: index, .malformed(error)))
            }
            if let problem = apply(entry, index: index, atTail: index + 1 == tail) {
                throw fail(.entry(index: index, problem))
            }
            applied = index + 1
            appliedEntries += 1
            memory.storeRelease(applied, at: RegionLayout.appliedOffset)
            count += 1
        }
        if acknowledge && applied == tail {
            acked = applied
            memory.storeRelease(acked, at: RegionLayout.ackedOffset)
        }
        return count
    }

    private mutating func fail(_ problem: MirrorViolation) -> MirrorViolation {
        violation = problem
        return problem
    }

    /// Checks one entry against the session and the mirror, and applies it only if every check passes.
    private mutating func apply(_ entry: LogEntry, index: UInt64, atTail: Bool) -> EntryViolation? {
        guard entry.indexLow == UInt32(truncatingIfNeeded: index) else { return .indexMismatch(found: entry.indexLow) }
        guard entry.epoch == layout.epoch else { return .epochMismatch(found: entry.epoch) }
        let local = entry.flags.contains(.local)
        if local && !rules.capabilities.contains(.localChanges) { return .localNotGranted }
        if let groupIsLocal, groupIsLocal != local { return .localMixed }
        let last = entry.flags.contains(.last)
        if atTail && !last { return .noLastAtTail }
        let recorded = last && !local && rules.capabilities.contains(.commitWindow)
        if recorded && windowPositions.contains(entry.requestPosition) { return .positionInWindow(entry.requestPosition) }
        if let problem = applyOperation(entry.operation) { return problem }
        groupIsLocal = last ? nil : local
        if recorded {
            if commitRing.count >= rules.queueSize, let oldest = commitRing.first {
                commitRing.removeFirst()
                windowPositions.remove(oldest.position)
            }
            if rules.queueSize > 0 {
                commitRing.append(StateSnapshot.Commit(position: entry.requestPosition, status: entry.status))
                windowPositions.insert(entry.requestPosition)
            }
        }
        return nil
    }

    private mutating func applyOperation(_ operation: LogOperation) -> EntryViolation? {
        switch operation {
        case .domainCreate(let id, let bypass):
            guard domains[id] == nil else { return .domainExists(id) }
            guard domains.count < rules.maxDomains else { return .tooManyDomains }
            domains[id] = Domain(bypass: bypass)
        case .domainDestroy(let id):
            guard let domain = domains[id] else { return .noSuchDomain(id) }
            guard domain.endpoints.isEmpty else { return .domainHasEndpoints(id) }
            mappingCount -= domain.mappings.count
            domains[id] = nil
        case .attach(let endpoint, let id):
            guard knownEndpoints.contains(endpoint) else { return .unknownEndpoint(endpoint) }
            guard endpointDomain[endpoint] == nil else { return .endpointAttached(endpoint) }
            guard domains[id] != nil else { return .noSuchDomain(id) }
            domains[id]!.endpoints.insert(endpoint)
            endpointDomain[endpoint] = id
        case .detach(let endpoint, let id):
            guard endpointDomain[endpoint] == id, domains[id] != nil else { return .notAttached(endpoint: endpoint, domain: id) }
            domains[id]!.endpoints.remove(endpoint)
            endpointDomain[endpoint] = nil
        case .map(let id, let start, let end, let physical, let flags):
            guard let domain = domains[id] else { return .noSuchDomain(id) }
            guard !domain.bypass else { return .bypassDomain(id) }
            guard rules.inputRange.contains(start) && rules.inputRange.contains(end) else { return .outsideInputRange }
            let mask = rules.granule &- 1
            guard start & mask == 0, physical & mask == 0, (end &+ 1) & mask == 0 else { return .misaligned }
            let floor = domain.floorIndex(end)
            if let floor, domain.mappings[floor].virtualEnd >= start { return .overlap }
            guard mappingCount < rules.maxMappings else { return .tooManyMappings }
            let at = floor.map { $0 + 1 } ?? 0
            domains[id]!.mappings.insert(Mapping(virtualStart: start, virtualEnd: end, physicalStart: physical, flags: flags), at: at)
            mappingCount += 1
        case .unmap(let id, let start, let end):
            guard let domain = domains[id] else { return .noSuchDomain(id) }
            guard !domain.bypass else { return .bypassDomain(id) }
            // The first mapping that ends at or after `start`, then every one starting inside the range.
            var first = domain.floorIndex(start) ?? 0
            if first < domain.mappings.count && domain.mappings[first].virtualEnd < start { first += 1 }
            var past = first
            while past < domain.mappings.count && domain.mappings[past].virtualStart <= end { past += 1 }
            guard past > first else { return .nothingToUnmap }
            if domain.mappings[first].virtualStart < start || domain.mappings[past - 1].virtualEnd > end { return .straddle }
            domains[id]!.mappings.removeSubrange(first..<past)
            mappingCount -= past - first
        case .commit:
            break
        }
        return nil
    }

    // MARK: Using the mirror

    /// The commit window: the last `queueSize` request results applied, oldest first (§8.3); empty
    /// without COMMIT_WINDOW.
    public var commitWindow: [StateSnapshot.Commit] { commitRing }

    /// Translates one access the way the front-end's `translate()` does (plan §1.7): unknown endpoints
    /// are refused; the MSI windows are identity; unattached endpoints follow `bypassAllowed`; bypass
    /// domains are identity; otherwise a mapping with the permission is needed.
    public func translate(endpoint: UInt32, address: UInt64, write: Bool, bypassAllowed: Bool,
                          msiWindows: [ClosedRange<UInt64>] = []) -> MirrorTranslation {
        guard knownEndpoints.contains(endpoint) else { return .refused(.unknownEndpoint) }
        if msiWindows.contains(where: { $0.contains(address) }) { return .identity }
        guard let id = endpointDomain[endpoint], let domain = domains[id] else {
            return bypassAllowed ? .identity : .refused(.domain)
        }
        if domain.bypass { return .identity }
        guard let mapping = domain.mapping(containing: address) else { return .refused(.mapping) }
        guard mapping.flags & (write ? 2 : 1) != 0 else { return .refused(.permission) }
        return .translated(mapping.physicalStart &+ (address &- mapping.virtualStart))
    }

    /// The STATE_PUSH snapshot of the mirror (§8.2). Domains without endpoints (held only by aux
    /// attachments the mirror never sees) are dropped from the mirror first, as the snapshot cannot carry them.
    public mutating func snapshot(bypass: Bool) -> StateSnapshot {
        for (id, domain) in domains where domain.endpoints.isEmpty {
            mappingCount -= domain.mappings.count
            domains[id] = nil
        }
        var snapshot = StateSnapshot(epoch: layout.epoch, bypass: bypass)
        for id in domains.keys.sorted() {
            let domain = domains[id]!
            snapshot.domains.append(.init(id: id, bypass: domain.bypass))
            for m in domain.mappings {
                snapshot.mappings.append(.init(domain: id, flags: m.flags, virtualStart: m.virtualStart,
                                               virtualEnd: m.virtualEnd, physicalStart: m.physicalStart))
            }
        }
        snapshot.endpoints = endpointDomain.keys.sorted().map { .init(endpoint: $0, domain: endpointDomain[$0]!) }
        snapshot.commits = commitWindow
        return snapshot
    }

    /// The front-end's part of RESET (§7), after a full drain: the mirror and commit window emptied, a new
    /// epoch, `acked = applied`. Returns the request to send.
    public mutating func reset(epoch: UInt32, kind: ResetRequest.Kind, bypass: Bool) -> ResetRequest {
        domains.removeAll()
        endpointDomain.removeAll()
        mappingCount = 0
        commitRing.removeAll()
        windowPositions.removeAll()
        groupIsLocal = nil
        layout.epoch = epoch
        acked = applied
        writeHeader()
        return ResetRequest(epoch: epoch, kind: kind, bypass: bypass, startIndex: applied)
    }
}

extension MirrorReader {
    /// A description of the first broken invariant of the mirror, or nil (for fuzzers and randomized
    /// tests): attachments agree both ways, mappings are ordered, apart, aligned and counted, bypass
    /// domains hold none, and the caps hold.
    public func invariantViolation() -> String? {
        var total = 0
        let mask = rules.granule &- 1
        for (id, domain) in domains {
            if domain.bypass && !domain.mappings.isEmpty { return "bypass domain \(id) has mappings" }
            for endpoint in domain.endpoints where endpointDomain[endpoint] != id {
                return "domain \(id) lists endpoint \(endpoint), attached elsewhere"
            }
            for (i, m) in domain.mappings.enumerated() {
                if m.virtualStart > m.virtualEnd { return "domain \(id): reversed mapping" }
                if i > 0 && domain.mappings[i - 1].virtualEnd >= m.virtualStart { return "domain \(id): overlap or disorder" }
                if m.virtualStart & mask != 0 || m.physicalStart & mask != 0 || (m.virtualEnd &+ 1) & mask != 0 {
                    return "domain \(id): misaligned mapping"
                }
            }
            total += domain.mappings.count
        }
        for (endpoint, id) in endpointDomain where domains[id]?.endpoints.contains(endpoint) != true {
            return "endpoint \(endpoint) attached to \(id), which does not list it"
        }
        if total != mappingCount { return "mapping count \(mappingCount), domains hold \(total)" }
        if domains.count > rules.maxDomains || mappingCount > rules.maxMappings { return "caps exceeded" }
        if applied < acked { return "acked \(acked) beyond applied \(applied)" }
        return nil
    }
}
