/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * virtio-iommu PASID extension: aux domains and a paravirtual, system-wide PASID allocator.
 * Wire format of vhost-iommu (docs/pasid-extension.md). All fields are little-endian.
 * It stands alone (it needs only <linux/types.h>), so a driver can include it beside <linux/virtio_iommu.h>.
 */
#ifndef VIRTIO_IOMMU_PASID_H
#define VIRTIO_IOMMU_PASID_H

#include <linux/types.h>

/* Feature bit: none of the below exists unless it is negotiated. */
#define VIRTIO_IOMMU_F_PASID            63

/* Request types (a private block, away from the numbers drafts and forks used for 6-8). */
#define VIRTIO_IOMMU_T_ATTACH_PASID     0xe0
#define VIRTIO_IOMMU_T_DETACH_PASID     0xe1
#define VIRTIO_IOMMU_T_ALLOC_PASID      0xe2
#define VIRTIO_IOMMU_T_FREE_PASID       0xe3

/* PROBE property: the endpoint's PASID width. */
#define VIRTIO_IOMMU_PROBE_T_PASID      0x800

/* Fault flag: the fault's le32 at offset 12 (reserved1 in the base spec) holds the PASID. */
#define VIRTIO_IOMMU_FAULT_F_PASID      (1 << 9)

struct virtio_iommu_pasid_req_head {
	__u8	type;
	__u8	reserved[3];
};

struct virtio_iommu_pasid_req_tail {
	__u8	status;
	__u8	reserved[3];
};

/* ATTACH_PASID and DETACH_PASID: 32 bytes. */
struct virtio_iommu_req_attach_pasid {
	struct virtio_iommu_pasid_req_head	head;
	__le32					domain;
	__le32					endpoint;
	__le32					pasid;
	__le32					flags;		/* none defined: must be 0 */
	__u8					reserved[8];
	struct virtio_iommu_pasid_req_tail	tail;
};

#define virtio_iommu_req_detach_pasid virtio_iommu_req_attach_pasid

/* ALLOC_PASID: 32 bytes; the device writes pasid and the tail (device-writable from offset 20). */
struct virtio_iommu_req_alloc_pasid {
	struct virtio_iommu_pasid_req_head	head;
	__le32					min;		/* 0 and 0: any */
	__le32					max;
	__u8					reserved[8];
	/* device-writable */
	__le32					pasid;		/* 0 on failure */
	__u8					reserved2[4];
	struct virtio_iommu_pasid_req_tail	tail;
};

/* FREE_PASID: 24 bytes. */
struct virtio_iommu_req_free_pasid {
	struct virtio_iommu_pasid_req_head	head;
	__le32					pasid;
	__u8					reserved[12];
	struct virtio_iommu_pasid_req_tail	tail;
};

/* PROBE property PASID: header (type 0x800, length 4), then the width. */
struct virtio_iommu_probe_pasid {
	__le16					type;
	__le16					length;
	__u8					pasid_bits;	/* PASIDs 1 .. 2^pasid_bits - 1 */
	__u8					reserved[3];
};

#endif /* VIRTIO_IOMMU_PASID_H */
