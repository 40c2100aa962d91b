// Thin C helpers for what Swift's Glibc module does not expose: epoll, eventfd, memfd, the CMSG macros,
// and atomic access to the front-end protocol's 64-bit indices in memory shared with QEMU (the engine's
// 16-bit ring indices go through swift-atomics: VhostUserCore's RingAtomics).
#ifndef C_VHOST_USER_H
#define C_VHOST_USER_H

#include <stdint.h>
#include <stddef.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <unistd.h>

static inline struct cmsghdr *cvu_cmsg_firsthdr(struct msghdr *m) { return CMSG_FIRSTHDR(m); }
static inline struct cmsghdr *cvu_cmsg_nxthdr(struct msghdr *m, struct cmsghdr *c) { return CMSG_NXTHDR(m, c); }
static inline unsigned char *cvu_cmsg_data(struct cmsghdr *c) { return CMSG_DATA(c); }
static inline size_t cvu_cmsg_space(size_t n) { return CMSG_SPACE(n); }
static inline size_t cvu_cmsg_len(size_t n) { return CMSG_LEN(n); }

// 64-bit indices in memory shared with another process (the front-end protocol's log indices).
static inline uint64_t cvu_load_acquire_u64(const void *p) {
    return __atomic_load_n((const uint64_t *)p, __ATOMIC_ACQUIRE);
}
static inline void cvu_store_release_u64(void *p, uint64_t v) {
    __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE);
}
// The full barrier virtio needs between publishing an index and reading the other side's
// notification-suppression field (and vice versa).
static inline void cvu_full_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
/* A spin-wait hint: lets the sibling hyperthread (or the hypervisor) run while we poll a ring. */
static inline void cvu_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

// Declared here rather than through _GNU_SOURCE, which would change struct layouts seen by Glibc.
extern int memfd_create(const char *name, unsigned int flags);
#ifndef MFD_CLOEXEC
#define MFD_CLOEXEC 1U
#endif

static const uint32_t cvu_epollin = EPOLLIN;
static const uint32_t cvu_epollout = EPOLLOUT;
static const uint32_t cvu_epollhup = EPOLLHUP;
static const uint32_t cvu_epollerr = EPOLLERR;

extern int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags);
static inline int cvu_accept_cloexec(int fd) { return accept4(fd, NULL, NULL, SOCK_CLOEXEC); }

// Seals of a memfd (<linux/fcntl.h>; glibc declares them only with _GNU_SOURCE, which this header
// does not set).
#ifndef F_GET_SEALS
#define F_GET_SEALS 1034
#define F_SEAL_SHRINK 0x0002
#define F_SEAL_GROW 0x0004
#define F_SEAL_WRITE 0x0008
#endif
#ifndef F_ADD_SEALS
#define F_ADD_SEALS 1033
#endif
#ifndef MFD_ALLOW_SEALING
#define MFD_ALLOW_SEALING 0x0002U
#endif
static inline int cvu_get_seals(int fd) { return fcntl(fd, F_GET_SEALS); }
static inline int cvu_add_seals(int fd, int seals) { return fcntl(fd, F_ADD_SEALS, seals); }
static const unsigned int cvu_mfd_allow_sealing = MFD_ALLOW_SEALING;
static const int cvu_seal_shrink = F_SEAL_SHRINK;
static const int cvu_seal_grow = F_SEAL_GROW;
static inline int cvu_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }

#endif
