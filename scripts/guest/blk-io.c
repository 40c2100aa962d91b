/*
 * blk-io: the disk DMA workload of the real-guest tests. Reads and writes a block device with O_DIRECT, so
 * every byte goes through the disk's DMA (and so through the guest's IOMMU when the device sits behind one).
 *
 *   blk-io DEV write SIZE BS SEED [--timeout S]   writes the SEED pattern over DEV's first SIZE bytes, BS at a time
 *   blk-io DEV read  SIZE BS SEED [--timeout S]   reads them back and verifies them against the SEED pattern
 *   blk-io DEV bench SIZE BS SEED [--timeout S] [--seconds T]
 *                                                  sequential write, then read, at BS; then random 4 KiB reads
 *                                                  for T seconds (default 3)
 *
 * SIZE and BS take a K, M or G suffix; SIZE is a multiple of BS, BS a multiple of 4096. SEED is a number
 * (0x… for hexadecimal). The pattern: 64-bit little-endian words from xorshift64 (13, 7, 17) started at SEED
 * (SEED 0 starts at 0x9e3779b97f4a7c15), word i at byte 8 i of the device, whatever BS is. The sum: FNV-1a-64
 * over the SIZE bytes written or read. Prints one parseable line (seconds and mbps count only the I/O and,
 * for writes, the final fdatasync; MB = 10^6 bytes):
 *   @@BLK op=write|read bytes=N bs=B seconds=T mbps=R sum=0x… status=ok
 *   @@BLK op=bench bytes=N bs=B write_mbps=R read_mbps=R iops=R random_reads=N random_seconds=T sum=0x… status=ok
 *   @@BLK op=… status=error step=… errno=E offset=O        (step=verify: the first differing byte, errno=0)
 * With --timeout the work runs in a child process: if it has not finished after S seconds the parent prints
 *   @@BLK op=… status=timeout seconds=S
 * and exits 124, leaving the child behind (an I/O the device never completes keeps it in D state; the host
 * then powers the VM off). Exit status: 0 ok, 1 error, 2 usage, 124 timeout.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096ul
#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull

static const char *op_name;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int fail(const char *step, int error, unsigned long long offset) {
    printf("@@BLK op=%s status=error step=%s errno=%d offset=%llu (%s)\n", op_name, step, error, offset,
           error ? strerror(error) : "data differs");
    fflush(stdout);
    return 1;
}

static int parse_size(const char *text, unsigned long long *value) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 0);
    if (errno || end == text) return -1;
    switch (*end) {
    case 'K': case 'k': v <<= 10; end++; break;
    case 'M': case 'm': v <<= 20; end++; break;
    case 'G': case 'g': v <<= 30; end++; break;
    default: break;
    }
    if (*end) return -1;
    *value = v;
    return 0;
}

/* The pattern's generator: one state per stream, advanced once per 64-bit word. */
static uint64_t xorshift64(uint64_t *state) {
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

static void fill(unsigned char *buffer, size_t length, uint64_t *state) {
    for (size_t i = 0; i < length; i += 8) {
        uint64_t word = xorshift64(state);
        for (int b = 0; b < 8; b++) buffer[i + b] = (unsigned char)(word >> (8 * b));   /* little-endian */
    }
}

static uint64_t fnv1a(uint64_t hash, const unsigned char *data, size_t length) {
    for (size_t i = 0; i < length; i++) hash = (hash ^ data[i]) * FNV_PRIME;
    return hash;
}

struct job {
    int fd;
    unsigned long long size, bs;
    uint64_t seed;
    double random_seconds;
    unsigned char *buffer, *expected;
};

/* Writes the pattern over [0, size); *seconds counts the pwrites and the fdatasync only. */
static int write_range(struct job *job, uint64_t *sum, double *seconds) {
    uint64_t state = job->seed, hash = FNV_OFFSET;
    double spent = 0;
    for (unsigned long long offset = 0; offset < job->size; offset += job->bs) {
        fill(job->buffer, job->bs, &state);
        hash = fnv1a(hash, job->buffer, job->bs);
        double start = now();
        ssize_t n = pwrite(job->fd, job->buffer, job->bs, (off_t)offset);
        spent += now() - start;
        if (n < 0) return fail("pwrite", errno, offset);
        if ((unsigned long long)n != job->bs) return fail("pwrite-short", EIO, offset + (unsigned long long)n);
    }
    double start = now();
    if (fdatasync(job->fd) < 0) return fail("fdatasync", errno, job->size);
    *seconds = spent + now() - start;
    *sum = hash;
    return 0;
}

/* Reads [0, size) and compares it with the pattern; *seconds counts the preads only. */
static int read_range(struct job *job, uint64_t *sum, double *seconds) {
    uint64_t state = job->seed, hash = FNV_OFFSET;
    double spent = 0;
    for (unsigned long long offset = 0; offset < job->size; offset += job->bs) {
        memset(job->buffer, 0xa5, job->bs);   /* a read that transfers nothing must not pass */
        double start = now();
        ssize_t n = pread(job->fd, job->buffer, job->bs, (off_t)offset);
        spent += now() - start;
        if (n < 0) return fail("pread", errno, offset);
        if ((unsigned long long)n != job->bs) return fail("pread-short", EIO, offset + (unsigned long long)n);
        hash = fnv1a(hash, job->buffer, job->bs);
        fill(job->expected, job->bs, &state);
        if (memcmp(job->buffer, job->expected, job->bs)) {
            unsigned long long i = 0;
            while (job->buffer[i] == job->expected[i]) i++;
            return fail("verify", 0, offset + i);
        }
    }
    *seconds = spent;
    *sum = hash;
    return 0;
}

/* Random 4 KiB reads over [0, size) for job->random_seconds; returns the number of reads. */
static int random_reads(struct job *job, unsigned long long *reads, double *seconds) {
    uint64_t state = job->seed ^ 0x5bd1e9955bd1e995ull;
    unsigned long long pages = job->size / PAGE, count = 0;
    double start = now(), elapsed = 0;
    do {
        unsigned long long offset = (xorshift64(&state) % pages) * PAGE;
        ssize_t n = pread(job->fd, job->buffer, PAGE, (off_t)offset);
        if (n < 0) return fail("random-pread", errno, offset);
        if (n != (ssize_t)PAGE) return fail("random-pread-short", EIO, offset + (unsigned long long)n);
        count++;
        elapsed = now() - start;
    } while (elapsed < job->random_seconds);
    *reads = count;
    *seconds = elapsed;
    return 0;
}

static double mbps(unsigned long long bytes, double seconds) { return seconds > 0 ? bytes / seconds / 1e6 : 0; }

static int work(struct job *job) {
    uint64_t sum = 0;
    double seconds = 0;
    if (!strcmp(op_name, "write") || !strcmp(op_name, "read")) {
        int rc = op_name[0] == 'w' ? write_range(job, &sum, &seconds) : read_range(job, &sum, &seconds);
        if (rc) return rc;
        printf("@@BLK op=%s bytes=%llu bs=%llu seconds=%.3f mbps=%.2f sum=0x%016llx status=ok\n", op_name,
               job->size, job->bs, seconds, mbps(job->size, seconds), (unsigned long long)sum);
    } else {
        uint64_t read_sum = 0;
        double read_seconds = 0, random_seconds = 0;
        unsigned long long reads = 0;
        if (write_range(job, &sum, &seconds) || read_range(job, &read_sum, &read_seconds)) return 1;
        if (read_sum != sum) return fail("bench-sum", 0, 0);
        if (random_reads(job, &reads, &random_seconds)) return 1;
        printf("@@BLK op=bench bytes=%llu bs=%llu write_seconds=%.3f write_mbps=%.2f read_seconds=%.3f "
               "read_mbps=%.2f iops=%.0f random_reads=%llu random_seconds=%.3f sum=0x%016llx status=ok\n",
               job->size, job->bs, seconds, mbps(job->size, seconds), read_seconds, mbps(job->size, read_seconds),
               reads / random_seconds, reads, random_seconds, (unsigned long long)sum);
    }
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: blk-io DEV write|read|bench SIZE BS SEED [--timeout S] [--seconds T]\n");
        return 2;
    }
    const char *device = argv[1];
    op_name = argv[2];
    struct job job = {.random_seconds = 3};
    unsigned long long seed;
    double timeout = 0;
    if (strcmp(op_name, "write") && strcmp(op_name, "read") && strcmp(op_name, "bench")) {
        fprintf(stderr, "blk-io: unknown operation %s\n", op_name);
        return 2;
    }
    if (parse_size(argv[3], &job.size) || parse_size(argv[4], &job.bs) || parse_size(argv[5], &seed) ||
        job.bs == 0 || job.bs % PAGE || job.size == 0 || job.size % job.bs) {
        fprintf(stderr, "blk-io: SIZE must be a positive multiple of BS, BS a positive multiple of 4096\n");
        return 2;
    }
    for (int i = 6; i < argc; i++) {
        if (!strcmp(argv[i], "--timeout") && i + 1 < argc) timeout = atof(argv[++i]);
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) job.random_seconds = atof(argv[++i]);
        else {
            fprintf(stderr, "blk-io: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    job.seed = seed ? seed : 0x9e3779b97f4a7c15ull;

    job.fd = open(device, (op_name[0] == 'r' ? O_RDONLY : O_RDWR) | O_DIRECT);
    if (job.fd < 0) return fail("open", errno, 0);
    unsigned long long capacity = 0;
    struct stat st;
    if (fstat(job.fd, &st) < 0) return fail("fstat", errno, 0);
    if (S_ISBLK(st.st_mode)) {
        if (ioctl(job.fd, BLKGETSIZE64, &capacity) < 0) return fail("blkgetsize64", errno, 0);
    } else {
        capacity = (unsigned long long)st.st_size;
    }
    if (job.size > capacity) return fail("size", ENOSPC, capacity);
    void *buffer, *expected;
    if (posix_memalign(&buffer, PAGE, job.bs) || posix_memalign(&expected, PAGE, job.bs)) return fail("posix_memalign", ENOMEM, 0);
    job.buffer = buffer;
    job.expected = expected;

    if (timeout <= 0) return work(&job);

    fflush(stdout);
    pid_t child = fork();
    if (child < 0) return fail("fork", errno, 0);
    if (child == 0) _exit(work(&job));
    double deadline = now() + timeout;
    while (now() < deadline) {
        int status;
        pid_t done = waitpid(child, &status, WNOHANG);
        if (done == child) return WIFEXITED(status) ? WEXITSTATUS(status) : fail("child-signal", EINTR, 0);
        if (done < 0) return fail("waitpid", errno, 0);
        struct timespec pause = {0, 20 * 1000 * 1000};
        nanosleep(&pause, 0);
    }
    kill(child, SIGKILL);   /* takes effect only once a stuck I/O ends, if ever */
    printf("@@BLK op=%s status=timeout seconds=%g\n", op_name, timeout);
    fflush(stdout);
    return 124;
}
