import CHeaderCheck
import Testing
@testable import IOMMUFrontend

/// include/vhost_iommu_frontend.h must agree with the Swift codecs (docs/frontend-protocol.md §2–§8): a C
/// compiler checks every size, offset and constant against the numbers the Swift side uses.
@Suite struct FrontendHeaderTests {
    /// Offsets of fields in the Swift encodings, found by encoding distinct values and searching for them.
    static func offset(of needle: [UInt8], in bytes: [UInt8]) -> Int {
        for i in 0...(bytes.count - needle.count) where Array(bytes[i..<i + needle.count]) == needle { return i }
        return -1
    }

    static func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }

    // §2.1, §3, §4.1, §5.1, §7, §8.2: every structure and constant.
    @Test func headerMatchesTheSwiftCodecs() throws {
        let entry = LogEntry(indexLow: 0x1111_1111, operation: .map(domain: 0x2222_2222, virtualStart: 0x3333_3333_3333_0000,
                                                                     virtualEnd: 0x3333_3333_3333_ffff,
                                                                     physicalStart: 0x4444_4444_4444_0000, flags: 7),
                             flags: .last, requestPosition: 0x5555, status: 6, epoch: 0x7777_7777).encoded
        let attach = LogEntry(indexLow: 0, operation: .attach(endpoint: 0x8888, domain: 1), epoch: 0).encoded
        let layout = RegionLayout.standard(epoch: 0x9999_9999).encodedHeader
        let snapshot = StateSnapshot(epoch: 0xaaaa_aaaa, bypass: true,
                                     domains: [.init(id: 0xbbbb_bbbb, bypass: false)],
                                     endpoints: [.init(endpoint: 0xcccc, domain: 0xbbbb_bbbb)],
                                     mappings: [.init(domain: 0xbbbb_bbbb, flags: 3, virtualStart: 0xdddd_dddd_dddd_0000,
                                                      virtualEnd: 0xdddd_dddd_dddd_ffff, physicalStart: 0xeeee_eeee_eeee_0000)],
                                     commits: [.init(position: 0xf0f0, status: 8)]).encoded
        let fault = FaultRecord(endpoint: 0x1234_5678, reason: .mapping, access: .write, address: 0x1111_2222_3333_4444,
                                epoch: 0x9abc_def0).encoded(index: 0)
        let offsets = (
            entryDomain: Self.offset(of: Self.le(UInt32(0x2222_2222)), in: entry),
            entryEnd: Self.offset(of: Self.le(UInt64(0x3333_3333_3333_ffff)), in: entry),
            entryPhys: Self.offset(of: Self.le(UInt64(0x4444_4444_4444_0000)), in: entry),
            entryPos: Self.offset(of: Self.le(UInt16(0x5555)), in: entry),
            entryEpoch: Self.offset(of: Self.le(UInt32(0x7777_7777)), in: entry),
            entryEndpoint: Self.offset(of: Self.le(UInt32(0x8888)), in: attach),
            regionEpoch: Self.offset(of: Self.le(UInt32(0x9999_9999)), in: layout),
            mappingEnd: Self.offset(of: Self.le(UInt64(0xdddd_dddd_dddd_ffff)), in: snapshot) - 48,
            mappingPhys: Self.offset(of: Self.le(UInt64(0xeeee_eeee_eeee_0000)), in: snapshot) - 48,
            commitPos: Self.offset(of: Self.le(UInt16(0xf0f0)), in: snapshot) - 80,
            faultEndpoint: Self.offset(of: Self.le(UInt32(0x1234_5678)), in: fault),
            faultReason: Self.offset(of: [FaultRecord.Reason.mapping.rawValue, FaultRecord.Access.write.rawValue], in: fault),
            faultEpoch: Self.offset(of: Self.le(UInt32(0x9abc_def0)), in: fault),
            faultAddress: Self.offset(of: Self.le(UInt64(0x1111_2222_3333_4444)), in: fault)
        )
        let source = """
            #include <stddef.h>
            #include "vhost_iommu_frontend.h"
            #define CHECK(cond) _Static_assert(cond, #cond)
            CHECK(VHOST_IOMMU_REQ_HELLO == \(FrontendProtocol.Request.hello.rawValue)U);
            CHECK(VHOST_IOMMU_REQ_SET_REGION == \(FrontendProtocol.Request.setRegion.rawValue)U);
            CHECK(VHOST_IOMMU_REQ_STATE_PUSH == \(FrontendProtocol.Request.statePush.rawValue)U);
            CHECK(VHOST_IOMMU_REQ_RESET == \(FrontendProtocol.Request.reset.rawValue)U);
            CHECK(VHOST_IOMMU_SET_REGION_FDS == \(SetRegionRequest.descriptorCount));
            CHECK(VHOST_IOMMU_STATE_PUSH_FDS == \(StatePushRequest.descriptorCount));
            CHECK(VHOST_IOMMU_STATUS_UNSUPPORTED == \(FrontendStatus.unsupported.rawValue));
            CHECK(VHOST_IOMMU_STATUS_INVALID == \(FrontendStatus.invalid.rawValue));
            CHECK(VHOST_IOMMU_STATUS_BAD_STATE == \(FrontendStatus.badState.rawValue));
            CHECK(VHOST_IOMMU_STATUS_REFUSED == \(FrontendStatus.refused.rawValue));
            CHECK(VHOST_IOMMU_STATUS_FAILED == \(FrontendStatus.failed.rawValue));
            CHECK(VHOST_IOMMU_VERSION == \(FrontendProtocol.version));
            CHECK(VHOST_IOMMU_CAP_COMMIT_WINDOW == \(FrontendCapabilities.commitWindow.rawValue)ULL);
            CHECK(VHOST_IOMMU_CAP_FAULT_RING == \(FrontendCapabilities.faultRing.rawValue)ULL);
            CHECK(VHOST_IOMMU_CAP_LOCAL_CHANGES == \(FrontendCapabilities.localChanges.rawValue)ULL);
            CHECK(VHOST_IOMMU_HELLO_MAGIC == \(FrontendProtocol.helloMagic)U);
            CHECK(VHOST_IOMMU_REGION_MAGIC == \(FrontendProtocol.regionMagic)U);
            CHECK(VHOST_IOMMU_SNAPSHOT_MAGIC == \(FrontendProtocol.snapshotMagic)U);
            CHECK(sizeof(struct vhost_iommu_hello) == \(HelloRequest.size));
            CHECK(sizeof(struct vhost_iommu_hello_reply) == \(HelloReply.size));
            CHECK(offsetof(struct vhost_iommu_hello_reply, queue_size) == 16);
            CHECK(sizeof(struct vhost_iommu_set_region) == \(SetRegionRequest.size));
            CHECK(offsetof(struct vhost_iommu_set_region, start_index) == 16);
            CHECK(sizeof(struct vhost_iommu_state_push) == \(StatePushRequest.size));
            CHECK(offsetof(struct vhost_iommu_state_push, n_mappings) == 24);
            CHECK(offsetof(struct vhost_iommu_state_push, n_commits) == 32);
            CHECK(sizeof(struct vhost_iommu_reset) == \(ResetRequest.size));
            CHECK(offsetof(struct vhost_iommu_reset, kind) == 4);
            CHECK(offsetof(struct vhost_iommu_reset, start_index) == 8);
            CHECK(VHOST_IOMMU_RESET_DEVICE == \(ResetRequest.Kind.device.rawValue));
            CHECK(VHOST_IOMMU_RESET_SYSTEM == \(ResetRequest.Kind.system.rawValue));
            CHECK(VHOST_IOMMU_REGION_HEADER_SIZE == \(RegionLayout.headerSize));
            CHECK(VHOST_IOMMU_REGION_MAX_SIZE == \(RegionLayout.maxRegionSize)ULL);
            CHECK(VHOST_IOMMU_LOG_ENTRIES_MIN == \(RegionLayout.logEntryRange.lowerBound));
            CHECK(VHOST_IOMMU_LOG_ENTRIES_MAX == \(RegionLayout.logEntryRange.upperBound));
            CHECK(VHOST_IOMMU_LOG_ENTRIES_DEFAULT == \(RegionLayout.defaultLogEntries));
            CHECK(VHOST_IOMMU_EP_BITMAP_SIZE == \(RegionLayout.endpointBitmapSize));
            CHECK(VHOST_IOMMU_NOTIFIER_SIZE == \(RegionLayout.notifierSize));
            CHECK(VHOST_IOMMU_AREA_ALIGN == \(RegionLayout.areaAlignment));
            CHECK(sizeof(struct vhost_iommu_region_header) == 320);
            CHECK(offsetof(struct vhost_iommu_region_header, epoch) == \(offsets.regionEpoch));
            CHECK(offsetof(struct vhost_iommu_region_header, log_off) == 16);
            CHECK(offsetof(struct vhost_iommu_region_header, ep_bitmap_off) == 24);
            CHECK(offsetof(struct vhost_iommu_region_header, notifier_off) == 32);
            CHECK(offsetof(struct vhost_iommu_region_header, fault_entries) == 48);
            CHECK(offsetof(struct vhost_iommu_region_header, reserved0) + 12 == \(RegionLayout.configurationSize));
            CHECK(offsetof(struct vhost_iommu_region_header, tail) == \(RegionLayout.tailOffset));
            CHECK(offsetof(struct vhost_iommu_region_header, applied) == \(RegionLayout.appliedOffset));
            CHECK(offsetof(struct vhost_iommu_region_header, acked) == \(RegionLayout.ackedOffset));
            CHECK(offsetof(struct vhost_iommu_region_header, fault_tail) == \(FaultRing.tailOffset));
            CHECK(offsetof(struct vhost_iommu_region_header, fault_dropped) == \(FaultRing.droppedOffset));
            CHECK(offsetof(struct vhost_iommu_region_header, fault_head) == \(FaultRing.headOffset));
            CHECK(VHOST_IOMMU_SET_REGION_FDS_FAULT_RING == \(SetRegionRequest.descriptorCount(.faultRing)));
            CHECK(VHOST_IOMMU_FAULT_ENTRIES_MIN == \(FaultRing.entryRange.lowerBound));
            CHECK(VHOST_IOMMU_FAULT_ENTRIES_MAX == \(FaultRing.entryRange.upperBound));
            CHECK(VHOST_IOMMU_FAULT_R_DOMAIN == \(FaultRecord.Reason.domain.rawValue));
            CHECK(VHOST_IOMMU_FAULT_R_MAPPING == \(FaultRecord.Reason.mapping.rawValue));
            CHECK(VHOST_IOMMU_FAULT_F_READ == \(FaultRecord.Access.read.rawValue));
            CHECK(VHOST_IOMMU_FAULT_F_WRITE == \(FaultRecord.Access.write.rawValue));
            CHECK(sizeof(struct vhost_iommu_fault_record) == \(FaultRecord.size));
            CHECK(offsetof(struct vhost_iommu_fault_record, endpoint) == \(offsets.faultEndpoint));
            CHECK(offsetof(struct vhost_iommu_fault_record, reason) == \(offsets.faultReason));
            CHECK(offsetof(struct vhost_iommu_fault_record, epoch) == \(offsets.faultEpoch));
            CHECK(offsetof(struct vhost_iommu_fault_record, address) == \(offsets.faultAddress));
            CHECK(sizeof(struct vhost_iommu_log_entry) == \(LogEntry.size));
            CHECK(VHOST_IOMMU_LOG_ENTRY_SIZE == \(LogEntry.size));
            CHECK(VHOST_IOMMU_MAX_REQUEST_ENTRIES == \(LogEntry.maxPerRequest));
            CHECK(offsetof(struct vhost_iommu_log_entry, domain) == \(offsets.entryDomain));
            CHECK(offsetof(struct vhost_iommu_log_entry, endpoint) == \(offsets.entryEndpoint));
            CHECK(offsetof(struct vhost_iommu_log_entry, virt_end) == \(offsets.entryEnd));
            CHECK(offsetof(struct vhost_iommu_log_entry, phys_start) == \(offsets.entryPhys));
            CHECK(offsetof(struct vhost_iommu_log_entry, req_pos) == \(offsets.entryPos));
            CHECK(offsetof(struct vhost_iommu_log_entry, status) == 46);
            CHECK(offsetof(struct vhost_iommu_log_entry, epoch) == \(offsets.entryEpoch));
            CHECK(VHOST_IOMMU_OP_DOMAIN_CREATE == \(LogOperation.domainCreate(domain: 0, bypass: false).code));
            CHECK(VHOST_IOMMU_OP_DOMAIN_DESTROY == \(LogOperation.domainDestroy(domain: 0).code));
            CHECK(VHOST_IOMMU_OP_ATTACH == \(LogOperation.attach(endpoint: 0, domain: 0).code));
            CHECK(VHOST_IOMMU_OP_DETACH == \(LogOperation.detach(endpoint: 0, domain: 0).code));
            CHECK(VHOST_IOMMU_OP_MAP == \(LogOperation.map(domain: 0, virtualStart: 0, virtualEnd: 0, physicalStart: 0, flags: 0).code));
            CHECK(VHOST_IOMMU_OP_UNMAP == \(LogOperation.unmap(domain: 0, virtualStart: 0, virtualEnd: 0).code));
            CHECK(VHOST_IOMMU_OP_COMMIT == \(LogOperation.commit.code));
            CHECK(VHOST_IOMMU_LOG_F_LAST == \(LogEntryFlags.last.rawValue));
            CHECK(VHOST_IOMMU_LOG_F_SYNC == \(LogEntryFlags.sync.rawValue));
            CHECK(VHOST_IOMMU_LOG_F_BYPASS == \(LogEntryFlags.bypass.rawValue));
            CHECK(VHOST_IOMMU_LOG_F_LOCAL == \(LogEntryFlags.local.rawValue));
            CHECK(VHOST_IOMMU_SNAPSHOT_MAX_SIZE == \(StateSnapshot.maxSize)ULL);
            CHECK(sizeof(struct vhost_iommu_snapshot_header) == \(StateSnapshot.headerSize));
            CHECK(offsetof(struct vhost_iommu_snapshot_header, n_mappings) == 24);
            CHECK(sizeof(struct vhost_iommu_snapshot_domain) == \(StateSnapshot.domainSize));
            CHECK(sizeof(struct vhost_iommu_snapshot_endpoint) == \(StateSnapshot.endpointSize));
            CHECK(sizeof(struct vhost_iommu_snapshot_mapping) == \(StateSnapshot.mappingSize));
            CHECK(offsetof(struct vhost_iommu_snapshot_mapping, virt_end) == \(offsets.mappingEnd));
            CHECK(offsetof(struct vhost_iommu_snapshot_mapping, phys_start) == \(offsets.mappingPhys));
            CHECK(sizeof(struct vhost_iommu_snapshot_commit) == \(StateSnapshot.commitSize));
            CHECK(offsetof(struct vhost_iommu_snapshot_commit, req_pos) == \(offsets.commitPos));
            int main(void) { return 0; }
            """
        try CHeaderCheck.compile(source)
        // The encodings have the sizes the header gives (§5.1, §8.2).
        #expect(entry.count == 64 && layout.count == 64 && snapshot.count == 32 + 8 + 8 + 32 + 8)
    }

    // §2.1: every request id lies in the range vhost-user leaves to device protocols (qemu/patches/0001).
    @Test func requestIdsLieAboveTheDeviceRequestMinimum() {
        for request in FrontendProtocol.Request.allCases {
            #expect(request.rawValue >= FrontendProtocol.deviceRequestMinimum)
        }
    }
}
