import CHeaderCheck
import Testing
@_spi(Fuzzing) @testable import VirtioIOMMU

/// include/virtio_iommu_pasid.h must agree with the model's wire format: a C compiler checks the
/// sizes and offsets against the numbers the Swift encoders produce.
@Suite struct PASIDHeaderTests {
    @Test func headerMatchesTheWireFormat() throws {
        let attach = PASIDAttachmentRequest(domain: 1, endpoint: 2, pasid: 3).encoded(.attachPASID).count + 4
        let alloc = AllocPASIDRequest().encoded.count + AllocPASIDRequest.writableSize
        let free = FreePASIDRequest(pasid: 1).encoded.count + 4
        let source = """
            #include <stddef.h>
            #include "virtio_iommu_pasid.h"
            _Static_assert(sizeof(struct virtio_iommu_req_attach_pasid) == \(attach), "attach");
            _Static_assert(offsetof(struct virtio_iommu_req_attach_pasid, pasid) == 12, "attach pasid");
            _Static_assert(offsetof(struct virtio_iommu_req_attach_pasid, flags) == 16, "attach flags");
            _Static_assert(offsetof(struct virtio_iommu_req_attach_pasid, tail) == 28, "attach tail");
            _Static_assert(sizeof(struct virtio_iommu_req_alloc_pasid) == \(alloc), "alloc");
            _Static_assert(offsetof(struct virtio_iommu_req_alloc_pasid, pasid) == 20, "alloc pasid");
            _Static_assert(offsetof(struct virtio_iommu_req_alloc_pasid, tail) == 28, "alloc tail");
            _Static_assert(sizeof(struct virtio_iommu_req_free_pasid) == \(free), "free");
            _Static_assert(offsetof(struct virtio_iommu_req_free_pasid, tail) == 20, "free tail");
            _Static_assert(sizeof(struct virtio_iommu_probe_pasid) == \(PASIDProperty.size), "probe");
            _Static_assert(VIRTIO_IOMMU_T_ATTACH_PASID == \(RequestType.attachPASID.rawValue), "type");
            _Static_assert(VIRTIO_IOMMU_T_FREE_PASID == \(RequestType.freePASID.rawValue), "type");
            _Static_assert(VIRTIO_IOMMU_PROBE_T_PASID == \(PASIDProperty.type), "probe type");
            _Static_assert(VIRTIO_IOMMU_FAULT_F_PASID == \(Fault.Flags.pasid.rawValue), "fault flag");
            _Static_assert((1ULL << VIRTIO_IOMMU_F_PASID) == \(Features.pasid.rawValue)ULL, "feature");
            int main(void) { return 0; }
            """
        try CHeaderCheck.compile(source)
        #expect(attach == 32 && alloc == 32 && free == 24)
    }
}
