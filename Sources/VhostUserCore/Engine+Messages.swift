/// Front-end message handling: validation before dispatch, then one handler per message type.
extension VhostUserEngine {
    /// Messages whose reply carries a body; on failure they still get a reply, with an empty payload.
    static let repliesWithBody: Set<FrontendRequest> = [.getFeatures, .getProtocolFeatures, .getVringBase,
                                                        .getQueueNum, .getConfig, .getMaxMemSlots, .getStatus]

    /// Replies go to the host whole (header and payload), in the order of the messages.
    func send(_ header: MessageHeader, _ payload: [UInt8]) {
        host.sendToFrontend(header.bytes + payload)
    }

    func handle(_ message: consuming Message) {
        record { $0.messages += 1 }
        let header = message.header
        let request = message.request
        if request == nil && header.request >= DeviceRequest.firstID {
            handleDeviceRequest(message)
            return
        }
        logger.debug("message", metadata: ["request": "\(request.map(\.name) ?? "\(header.request)")",
                                            "size": "\(header.size)", "fds": "\(message.descriptors.count)"])
        var body: [UInt8]?
        var failure: ProtocolError?
        do {
            try validate(message)
            body = try dispatch(&message)
        } catch {
            failure = error
            record { $0.refusedMessages += 1 }
            warnAboutInput("refused: \(error)")
        }
        let reply = MessageHeader(request: header.request, flags: MessageHeader.replyFlags, size: 0)
        if let request, Self.repliesWithBody.contains(request) {
            let payload = failure == nil ? (body ?? []) : []
            send(MessageHeader(request: reply.request, flags: reply.flags, size: UInt32(payload.count)), payload)
        } else if header.needsReply && protocolFeatures.contains(.replyAck) {
            var status: UInt64 = failure == nil ? 0 : 1
            send(MessageHeader(request: reply.request, flags: reply.flags, size: 8), withUnsafeBytes(of: &status) { Array($0) })
        }
    }

    /// A request of the device's own: it must ask for a reply under REPLY_ACK (QEMU's helper always
    /// does), because its reply is the only way the front-end learns the outcome. Refused otherwise,
    /// or when the device refuses it: an 8-byte nonzero status, as REPLY_ACK's NACK.
    private func handleDeviceRequest(_ message: consuming Message) {
        let header = message.header
        var reply: [UInt8]?
        if header.needsReply && protocolFeatures.contains(.replyAck) {
            reply = device.handleDeviceRequest(header.request, payload: message.payload, descriptors: &message.descriptors)
            watchDeviceDescriptors()
            releaseWaitingCompletions()
        }
        guard let reply else {
            record { $0.refusedMessages += 1 }
            warnAboutInput("refused: device request 0x\(String(header.request, radix: 16))")
            if header.needsReply && protocolFeatures.contains(.replyAck) {
                let status: UInt64 = 1
                send(MessageHeader(request: header.request, flags: MessageHeader.replyFlags, size: 8), withUnsafeBytes(of: status) { Array($0) })
            }
            return
        }
        send(MessageHeader(request: header.request, flags: MessageHeader.replyFlags, size: UInt32(reply.count)), reply)
    }

    /// Payload size and descriptor count for the message type, and the protocol feature it needs.
    private func validate(_ message: borrowing Message) throws(ProtocolError) {
        guard let request = message.request else { throw .unknownRequest(message.header.request) }
        let sizeOK = message.payload.withUnsafeBytes { MessageShape.of(request).accepts(message.payload.count, payload: $0) }
        guard sizeOK else { throw .badPayloadSize(request, message.payload.count) }
        let expected: Int? = switch request {
        case .setMemTable: Int(message.u32(at: 0))
        case .addMemReg, .setBackendReqFD: 1
        case .setVringKick, .setVringCall, .setVringErr: message.u64() & (1 << 8) != 0 ? 0 : 1
        case .remMemReg: nil  // a descriptor SHOULD NOT come, and MUST be closed if it does
        default: 0
        }
        if let expected, message.descriptors.count != expected {
            throw .badDescriptorCount(request, got: message.descriptors.count, expected: expected)
        }
        let needed: ProtocolFeatures? = switch request {
        case .getQueueNum: .multipleQueues
        case .getConfig, .setConfig: .config
        case .resetDevice: .resetDevice
        case .getMaxMemSlots, .addMemReg, .remMemReg: .configureMemorySlots
        case .setStatus, .getStatus: .status
        case .setBackendReqFD: .backendRequest
        default: nil
        }
        if let needed, !protocolFeatures.contains(needed) { throw .notNegotiated(request) }
        if request == .setVringEnable && ackedFeatures & TransportFeatures.protocolFeatures == 0 {
            throw .notNegotiated(request)
        }
    }

    private func queue(_ index: UInt64, for request: FrontendRequest) throws(ProtocolError) -> Virtqueue {
        guard index < UInt64(queues.count) else { throw .invalidArgument(request, "no queue \(index)") }
        return queues[Int(index)]
    }

    private func stoppedQueue(_ index: UInt64, for request: FrontendRequest) throws(ProtocolError) -> Virtqueue {
        let queue = try queue(index, for: request)
        guard !queue.started else { throw .invalidArgument(request, "queue \(index) is running") }
        return queue
    }

    private static func u64Payload(_ value: UInt64) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

    private static func vringState(_ index: UInt32, _ num: UInt32) -> [UInt8] {
        withUnsafeBytes(of: index) { Array($0) } + withUnsafeBytes(of: num) { Array($0) }
    }

    /// Runs a validated message; returns the reply body for messages that have one.
    private func dispatch(_ message: inout Message) throws(ProtocolError) -> [UInt8]? {
        let request = message.request!
        switch request {
        case .getFeatures:
            return Self.u64Payload(offeredFeatures)
        case .setFeatures:
            let features = message.u64()
            guard features & ~offeredFeatures == 0 else { throw .invalidArgument(request, "unoffered bits") }
            ackedFeatures = features
            for queue in queues {
                queue.eventIndex = features & TransportFeatures.eventIndex != 0
                queue.indirectDescriptors = features & TransportFeatures.indirectDescriptors != 0
                // Without PROTOCOL_FEATURES there is no SET_VRING_ENABLE: rings start enabled.
                if features & TransportFeatures.protocolFeatures == 0 { queue.enabled = true }
            }
            device.setNegotiatedFeatures(features & device.deviceFeatures)
        case .setOwner:
            break
        case .resetOwner:
            // Deprecated; the protocol recommends ignoring it.
            logger.info("RESET_OWNER ignored")
        case .getProtocolFeatures:
            return Self.u64Payload(ProtocolFeatures.supported.rawValue)
        case .setProtocolFeatures:
            let features = ProtocolFeatures(rawValue: message.u64())
            guard ProtocolFeatures.supported.contains(features) else { throw .invalidArgument(request, "unoffered bits") }
            protocolFeatures = features
        case .getQueueNum:
            return Self.u64Payload(UInt64(queues.count))
        case .setMemTable:
            try setMemoryTable(&message)
        case .getMaxMemSlots:
            return Self.u64Payload(UInt64(memory.maxRegions))
        case .addMemReg:
            let region = try mapRegion(&message, payloadOffset: 8, descriptor: 0, request: request)
            do { try memory.add(region) } catch { throw .invalidArgument(request, "\(error)") }
            memoryChanged()
        case .remMemReg:
            let removed = memory.remove(guestPhysicalAddress: message.u64(at: 8), size: message.u64(at: 16),
                                        userAddress: message.u64(at: 24))
            guard removed else { throw .invalidArgument(request, "no such region") }
            memoryChanged()
        case .setVringNum:
            let queue = try stoppedQueue(UInt64(message.u32(at: 0)), for: request)
            let size = Int(message.u32(at: 4))
            guard size > 0, size & (size - 1) == 0, size <= min(device.maxQueueSize, Virtqueue.maxSize) else {
                throw .invalidArgument(request, "queue size \(size)")
            }
            queue.size = size
            queue.unresolve()
        case .setVringAddr:
            let queue = try stoppedQueue(UInt64(message.u32(at: 0)), for: request)
            queue.descriptorAddress = message.u64(at: 8)
            queue.usedAddress = message.u64(at: 16)
            queue.availAddress = message.u64(at: 24)
            queue.addressesSet = true
            queue.unresolve()
        case .setVringBase:
            let queue = try stoppedQueue(UInt64(message.u32(at: 0)), for: request)
            let base = message.u32(at: 4)
            guard base <= UInt32(UInt16.max) else { throw .invalidArgument(request, "base \(base)") }
            setBase(queue, UInt16(base))
        case .getVringBase:
            let queue = try queue(UInt64(message.u32(at: 0)), for: request)
            return stop(queue)
        case .setVringKick, .setVringCall, .setVringErr:
            let value = message.u64()
            guard value & ~UInt64(0x1ff) == 0 else { throw .invalidArgument(request, "reserved bits set") }
            let queue = try queue(value & 0xff, for: request)
            let noDescriptor = value & (1 << 8) != 0
            switch request {
            case .setVringKick:
                guard !noDescriptor else { throw .unsupported(request) }  // polling mode is not implemented
                if let old = queue.kick?.descriptor { host.unwatch(old) }
                let kick = message.descriptors.take(0)
                do {
                    try host.watch(kick.descriptor, token: Self.kickTokenBase + UInt64(queue.index))
                } catch {
                    throw .system(request, "watching the kick: \(error)")
                }
                queue.kick = consume kick
            case .setVringCall:
                queue.call = noDescriptor ? nil : message.descriptors.take(0)
            default:
                queue.error = noDescriptor ? nil : message.descriptors.take(0)
            }
        case .setVringEnable:
            let queue = try queue(UInt64(message.u32(at: 0)), for: request)
            let enable = message.u32(at: 4)
            guard enable <= 1 else { throw .invalidArgument(request, "enable \(enable)") }
            queue.enabled = enable == 1
            if queue.enabled { resumeIfPending(queue) }
        case .getConfig:
            return try getConfig(message)
        case .setConfig:
            let offset = Int(message.u32(at: 0)), size = Int(message.u32(at: 4)), flags = message.u32(at: 8)
            guard flags <= 1 else { throw .invalidArgument(request, "flags \(flags)") }
            guard offset <= device.readConfig().count - size else { throw .invalidArgument(request, "out of bounds") }
            guard device.writeConfig(offset: offset, bytes: Array(message.payload[12...]), migration: flags == 1) else {
                throw .invalidArgument(request, "write refused by the device")
            }
        case .resetDevice:
            resetDeviceState(restartsFresh: true)
            logger.info("RESET_DEVICE: device reset")
        case .setStatus:
            let value = message.u64()
            guard value <= 0xff else { throw .invalidArgument(request, "status \(value)") }
            status = UInt8(value)
        case .getStatus:
            return Self.u64Payload(UInt64(deviceStatus))
        case .setBackendReqFD:
            backendChannel = message.descriptors.take(0)
        default:
            throw .unsupported(request)
        }
        return nil
    }

    private func setMemoryTable(_ message: inout Message) throws(ProtocolError) {
        let count = Int(message.u32(at: 0))
        var table = GuestMemory(maxRegions: limits.maxMemoryRegions)
        for i in 0..<count {
            let region = try mapRegion(&message, payloadOffset: 8 + 32 * i, descriptor: i, request: .setMemTable)
            do { try table.add(region) } catch { throw .invalidArgument(.setMemTable, "\(error)") }
        }
        // The old regions stay mapped until nothing refers to them; rings are re-resolved first.
        memory = table
        memoryChanged()
    }

    private func mapRegion(_ message: inout Message, payloadOffset: Int, descriptor: Int,
                           request: FrontendRequest) throws(ProtocolError) -> MemoryRegion {
        let fd = message.descriptors.take(descriptor)
        do {
            return try MemoryRegion(guestPhysicalAddress: message.u64(at: payloadOffset), size: message.u64(at: payloadOffset + 8),
                                    userAddress: message.u64(at: payloadOffset + 16), mmapOffset: message.u64(at: payloadOffset + 24),
                                    descriptor: fd, host: host)
        } catch {
            throw .invalidArgument(request, "memory region: \(error)")
        }
    }

    private func getConfig(_ message: borrowing Message) throws(ProtocolError) -> [UInt8] {
        let offset = Int(message.u32(at: 0)), size = Int(message.u32(at: 4))
        let config = device.readConfig()
        guard offset <= config.count, size <= config.count - offset else { throw .invalidArgument(.getConfig, "out of bounds") }
        return Array(message.payload[0..<12]) + Array(config[offset..<offset + size])
    }

    /// SET_VRING_BASE: where the ring continues. A base that differs from what the last GET_VRING_BASE
    /// returned means the guest reset the device while it was stopped (QEMU's generic device sends no
    /// RESET_DEVICE): reset the device before any ring runs. An unchanged base is a pause: keep state.
    private func setBase(_ queue: Virtqueue, _ base: UInt16) {
        if let previous = queue.lastStoppedBase, previous != base {
            record { $0.guestResetsDetected += 1 }
            logger.info("queue \(queue.index) restarts at \(base), not \(previous): guest reset, device state cleared")
            device.reset()
            for other in queues {
                other.lastStoppedBase = nil
                other.restartsFresh = true  // the reset guest's rings start over, whatever they hold
            }
        }
        queue.lastStoppedBase = nil
        queue.lastAvailIndex = base
    }

    /// GET_VRING_BASE: stops the ring (every chain it popped has completed: handling is synchronous)
    /// and returns the next avail index.
    private func stop(_ queue: Virtqueue) -> [UInt8] {
        // The front-end must find every request it took completed; a waiting one is completed now.
        if queue.waitingCompletion != nil {
            device.completionForced(queue: queue.index)
            completeWaiting(queue)
        }
        // A ring stopped while polling had kicks off would leave the resumed driver never kicking.
        if queue.kicksSuppressed { _ = try? queue.setKicks(enabled: true) }
        queue.started = false
        if let kick = queue.kick?.descriptor { host.unwatch(kick) }
        queue.kick = nil
        queue.unresolve()
        queue.lastStoppedBase = queue.lastAvailIndex
        return Self.vringState(UInt32(queue.index), UInt32(queue.lastAvailIndex))
    }

    /// An enabled ring with chains already available starts at once: after a pause, the driver's
    /// kick may have been consumed before the stop, and it will not kick again.
    private func resumeIfPending(_ queue: Virtqueue) {
        guard !queue.isBroken, queue.suspectedError == nil, queue.kick != nil, queue.size > 0, queue.addressesSet else { return }
        if !queue.started {
            do { try queue.resolve(in: memory) } catch { return }
            guard (try? queue.pendingCount()) ?? 0 > 0 else { queue.unresolve(); return }
            start(queue)
        }
        process(queue)
    }
}
