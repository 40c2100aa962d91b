/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * vhost-user-iommu front-end protocol, version 1: the requests QEMU's vhost-user-iommu-pci sends on the
 * vhost-user socket, the shared region, its op log and the STATE_PUSH snapshot (docs/frontend-protocol.md).
 * All fields are little-endian. It stands alone (it needs only <linux/types.h>).
 */
#ifndef VHOST_IOMMU_FRONTEND_H
#define VHOST_IOMMU_FRONTEND_H

#include <linux/types.h>

/* Front-end requests (vhost-user request ids, above VHOST_USER_DEVICE_REQUEST_MIN 0x10000). */
#define VHOST_IOMMU_REQ_HELLO			0x76690001
#define VHOST_IOMMU_REQ_SET_REGION		0x76690002
#define VHOST_IOMMU_REQ_STATE_PUSH		0x76690003
#define VHOST_IOMMU_REQ_RESET			0x76690004

#define VHOST_IOMMU_SET_REGION_FDS		3	/* region memfd, doorbell eventfd, ack eventfd */
#define VHOST_IOMMU_SET_REGION_FDS_FAULT_RING	4	/* ... and the fault eventfd (FAULT_RING) */
#define VHOST_IOMMU_STATE_PUSH_FDS		1	/* sealed snapshot memfd */

/* The u64 status that answers SET_REGION, STATE_PUSH, RESET and a failed HELLO. */
#define VHOST_IOMMU_STATUS_OK			0
#define VHOST_IOMMU_STATUS_UNSUPPORTED		1
#define VHOST_IOMMU_STATUS_INVALID		2
#define VHOST_IOMMU_STATUS_BAD_STATE		3
#define VHOST_IOMMU_STATUS_REFUSED		4
#define VHOST_IOMMU_STATUS_FAILED		5

#define VHOST_IOMMU_VERSION			1

/* Capabilities (HELLO). */
#define VHOST_IOMMU_CAP_COMMIT_WINDOW		(1ULL << 0)
#define VHOST_IOMMU_CAP_FAULT_RING		(1ULL << 1)
#define VHOST_IOMMU_CAP_LOCAL_CHANGES		(1ULL << 2)

/* Magics: the ASCII bytes, read as a little-endian u32. */
#define VHOST_IOMMU_HELLO_MAGIC			0x4d4f4956	/* "VIOM" */
#define VHOST_IOMMU_REGION_MAGIC		0x4c4d4956	/* "VIML" */
#define VHOST_IOMMU_SNAPSHOT_MAGIC		0x53534956	/* "VISS" */

/* HELLO: 16 bytes. */
struct vhost_iommu_hello {
	__le32	magic;
	__le16	min_version;
	__le16	max_version;
	__le64	frontend_caps;
};

/* HELLO reply: 24 bytes. */
struct vhost_iommu_hello_reply {
	__le32	magic;
	__le16	version;
	__le16	reserved0;
	__le64	backend_caps;
	__le32	queue_size;		/* power of two, 16..1024 */
	__le32	reserved1;
};

/* SET_REGION: 24 bytes. */
struct vhost_iommu_set_region {
	__le64	region_size;
	__le32	epoch;
	__le32	flags;			/* 0 */
	__le64	start_index;		/* < 2^63: the front-end's applied */
};

/* STATE_PUSH: 40 bytes. */
struct vhost_iommu_state_push {
	__le64	snapshot_size;
	__le32	epoch;
	__le32	flags;			/* 0 */
	__le32	n_domains;
	__le32	n_endpoints;
	__le64	n_mappings;
	__le32	n_commits;
	__le32	reserved;
};

/* RESET: 16 bytes. */
#define VHOST_IOMMU_RESET_DEVICE		1
#define VHOST_IOMMU_RESET_SYSTEM		2

struct vhost_iommu_reset {
	__le32	epoch;			/* the new epoch */
	__u8	kind;
	__u8	bypass;			/* 0 or 1 */
	__le16	reserved;
	__le64	start_index;		/* the front-end's applied */
};

/* The shared region: a header of VHOST_IOMMU_REGION_HEADER_SIZE bytes, then the areas it names. */
#define VHOST_IOMMU_REGION_HEADER_SIZE		4096
#define VHOST_IOMMU_REGION_MAX_SIZE		(64ULL << 20)
#define VHOST_IOMMU_LOG_ENTRIES_MIN		64
#define VHOST_IOMMU_LOG_ENTRIES_MAX		(1U << 19)
#define VHOST_IOMMU_LOG_ENTRIES_DEFAULT		65536
#define VHOST_IOMMU_EP_BITMAP_SIZE		8192	/* 65536 bits, one per requester ID */
#define VHOST_IOMMU_NOTIFIER_SIZE		65536	/* one byte per requester ID */
#define VHOST_IOMMU_NOTIFIER_MAP		(1 << 0)
#define VHOST_IOMMU_NOTIFIER_UNMAP		(1 << 1)
#define VHOST_IOMMU_AREA_ALIGN			64

struct vhost_iommu_region_header {
	/* written by the front-end before SET_REGION */
	__le32	magic;
	__le16	version;
	__le16	header_size;
	__le32	epoch;
	__le32	log_entries;
	__le64	log_off;
	__le64	ep_bitmap_off;
	__le64	notifier_off;
	__le64	fault_off;		/* 0 without FAULT_RING */
	__le32	fault_entries;		/* 0 without FAULT_RING */
	__u8	reserved0[12];
	/* offset 64, its own cache line: written by the back-end */
	__le64	tail;
	__u8	reserved1[56];
	/* offset 128: written by the front-end */
	__le64	applied;
	__le64	acked;
	__u8	reserved2[48];
	/* offset 192: written by the front-end (FAULT_RING) */
	__le64	fault_tail;
	__le64	fault_dropped;
	__u8	reserved3[48];
	/* offset 256, its own cache line: written by the back-end (FAULT_RING) */
	__le64	fault_head;
	__u8	reserved4[56];
	/* offset 320 up to header_size: reserved */
};

/* Log entries: 64 bytes. */
#define VHOST_IOMMU_LOG_ENTRY_SIZE		64
#define VHOST_IOMMU_MAX_REQUEST_ENTRIES		8

#define VHOST_IOMMU_OP_DOMAIN_CREATE		1
#define VHOST_IOMMU_OP_DOMAIN_DESTROY		2
#define VHOST_IOMMU_OP_ATTACH			3
#define VHOST_IOMMU_OP_DETACH			4
#define VHOST_IOMMU_OP_MAP			5
#define VHOST_IOMMU_OP_UNMAP			6
#define VHOST_IOMMU_OP_COMMIT			7

#define VHOST_IOMMU_LOG_F_LAST			(1 << 0)
#define VHOST_IOMMU_LOG_F_SYNC			(1 << 1)
#define VHOST_IOMMU_LOG_F_BYPASS		(1 << 2)
#define VHOST_IOMMU_LOG_F_LOCAL			(1 << 3)

#define VHOST_IOMMU_MAP_F_READ			(1 << 0)
#define VHOST_IOMMU_MAP_F_WRITE			(1 << 1)
#define VHOST_IOMMU_MAP_F_MMIO			(1 << 2)

struct vhost_iommu_log_entry {
	__le32	index_lo;		/* low 32 bits of the entry's index */
	__le16	op;
	__le16	flags;
	__le32	domain;
	__le32	endpoint;
	__le64	virt_start;
	__le64	virt_end;		/* inclusive */
	__le64	phys_start;
	__le32	map_flags;
	__le16	req_pos;		/* LAST only */
	__u8	status;			/* LAST only: virtio-iommu status */
	__u8	reserved0;
	__le32	epoch;
	__u8	reserved1[12];
};

/* Fault ring records (FAULT_RING): 32 bytes, written by the front-end. */
#define VHOST_IOMMU_FAULT_ENTRIES_MIN		16
#define VHOST_IOMMU_FAULT_ENTRIES_MAX		4096
#define VHOST_IOMMU_FAULT_R_DOMAIN		1	/* virtio-iommu fault reasons */
#define VHOST_IOMMU_FAULT_R_MAPPING		2
#define VHOST_IOMMU_FAULT_F_READ		(1 << 0)
#define VHOST_IOMMU_FAULT_F_WRITE		(1 << 1)

struct vhost_iommu_fault_record {
	__le32	index_lo;		/* low 32 bits of the record's index */
	__le32	endpoint;		/* requester ID */
	__u8	reason;
	__u8	flags;			/* the access that faulted */
	__le16	reserved0;
	__le32	epoch;
	__le64	address;
	__u8	reserved1[8];
};

/* STATE_PUSH snapshot: header, then domains, endpoints, mappings and commits, in that order. */
#define VHOST_IOMMU_SNAPSHOT_MAX_SIZE		(256ULL << 20)
#define VHOST_IOMMU_SNAPSHOT_F_BYPASS		(1 << 0)
#define VHOST_IOMMU_SNAPSHOT_DOMAIN_F_BYPASS	(1 << 0)

struct vhost_iommu_snapshot_header {
	__le32	magic;
	__le16	version;
	__le16	flags;			/* VHOST_IOMMU_SNAPSHOT_F_BYPASS: the bypass config value */
	__le32	epoch;
	__le32	n_domains;
	__le32	n_endpoints;
	__le32	n_commits;
	__le64	n_mappings;
};

struct vhost_iommu_snapshot_domain {
	__le32	id;
	__le32	flags;
};

struct vhost_iommu_snapshot_endpoint {
	__le32	endpoint;		/* < 65536 */
	__le32	domain;
};

struct vhost_iommu_snapshot_mapping {
	__le32	domain;
	__le32	map_flags;
	__le64	virt_start;
	__le64	virt_end;		/* inclusive */
	__le64	phys_start;
};

struct vhost_iommu_snapshot_commit {
	__le16	req_pos;
	__u8	status;
	__u8	reserved0;
	__le32	reserved1;
};

#endif /* VHOST_IOMMU_FRONTEND_H */
