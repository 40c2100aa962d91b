/*
 * vfio-dma: the guest workload of the real-guest test. Binds nothing itself: the device must already be
 * bound to vfio-pci. Maps and unmaps BUFFERS buffers of SIZE bytes through VFIO type1 (so through the
 * guest's virtio-iommu), ITERATIONS times, and prints one parseable line:
 *   @@VFIO status=ok buffers=N size=S iterations=I maps=M unmaps=U seconds=T pairs_per_second=R
 * With --hold it stops after the first round of maps, prints "@@VFIO-HOLD mapped=N" and reads one line
 * from stdin: "reboot" reboots with the mappings in place, anything else carries on.
 * With --hugetlb the buffers are 2 MiB huge pages (one MAP per buffer for any SIZE up to 2 MiB).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/reboot.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/reboot.h>
#include <time.h>
#include <unistd.h>

#include "vfio-group.h"

#define IOVA_BASE 0x100000000ull

static int fail(const char *step) {
    vfio_fail("VFIO", step);
    return 1;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: vfio-dma GROUP BUFFERS SIZE ITERATIONS [--hold] [--hugetlb]\n");
        return 2;
    }
    const char *group_number = argv[1];
    unsigned long buffers = strtoul(argv[2], 0, 0), size = strtoul(argv[3], 0, 0);
    unsigned long iterations = strtoul(argv[4], 0, 0);
    int hold = 0, hugetlb = 0;
    for (int i = 5; i < argc; i++) {
        if (!strcmp(argv[i], "--hold")) hold = 1;
        else if (!strcmp(argv[i], "--hugetlb")) hugetlb = 1;
    }
    if (buffers == 0 || size == 0 || size % 4096 || iterations == 0) {
        fprintf(stderr, "vfio-dma: BUFFERS, SIZE (a multiple of 4096) and ITERATIONS must be positive\n");
        return 2;
    }

    int group = -1;
    int container = vfio_open_container("VFIO", group_number, &group);
    if (container < 0) return 1;

    size_t stride = hugetlb ? (2ul << 20) : size;
    size_t total = buffers * stride;
    int flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE | (hugetlb ? MAP_HUGETLB : 0);
    uint8_t *memory = mmap(0, total, PROT_READ | PROT_WRITE, flags, -1, 0);
    if (memory == MAP_FAILED) return fail("mmap");

    unsigned long maps = 0, unmaps = 0;
    double start = now();
    for (unsigned long round = 0; round < iterations; round++) {
        for (unsigned long i = 0; i < buffers; i++) {
            struct vfio_iommu_type1_dma_map map = {
                .argsz = sizeof map, .flags = VFIO_DMA_MAP_FLAG_READ | VFIO_DMA_MAP_FLAG_WRITE,
                .vaddr = (uintptr_t)(memory + i * stride), .iova = IOVA_BASE + i * stride, .size = size,
            };
            if (ioctl(container, VFIO_IOMMU_MAP_DMA, &map)) return fail("map");
            maps++;
        }
        if (hold && round == 0) {
            double paused = now();
            printf("@@VFIO-HOLD mapped=%lu\n", buffers);
            fflush(stdout);
            char line[64] = "";
            if (!fgets(line, sizeof line, stdin)) line[0] = 0;
            if (!strncmp(line, "reboot", 6)) {
                sync();
                reboot(LINUX_REBOOT_CMD_RESTART);
                return fail("reboot");
            }
            start += now() - paused;
        }
        for (unsigned long i = 0; i < buffers; i++) {
            struct vfio_iommu_type1_dma_unmap unmap = {
                .argsz = sizeof unmap, .iova = IOVA_BASE + i * stride, .size = size,
            };
            if (ioctl(container, VFIO_IOMMU_UNMAP_DMA, &unmap) || unmap.size != size) return fail("unmap");
            unmaps++;
        }
    }
    double seconds = now() - start;
    printf("@@VFIO status=ok buffers=%lu size=%lu iterations=%lu maps=%lu unmaps=%lu seconds=%.6f pairs_per_second=%.0f\n",
           buffers, size, iterations, maps, unmaps, seconds, maps / seconds);
    fflush(stdout);
    close(group);
    close(container);
    return 0;
}
