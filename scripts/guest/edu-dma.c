/*
 * edu-dma: drives the DMA engine of QEMU's edu device (hw/misc/edu.c) from the guest through VFIO, so that
 * its DMA goes through the guest's IOMMU. The device must already be bound to vfio-pci.
 *
 *   edu-dma GROUP BDF cases    the fault cases, one "@@EDU case=NAME ..." line each, then "@@EDU status=ok"
 *   edu-dma GROUP BDF flood [IOVA COUNT]
 *                              sets up, prints "@@EDU ready", waits for a line on stdin, then makes one
 *                              DMA of COUNT bytes (default 4 KiB) to IOVA (default one never mapped): a fault
 *                              per 4-byte access
 *
 * edu: registers 0x80 source, 0x88 destination, 0x90 count, 0x98 command (bit 0 run, bit 1 edu->RAM);
 * a 4 KiB buffer at device address 0x40000; a 28-bit DMA mask (IOVAs below 256 MiB).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "vfio-group.h"

#define EDU_ID          0x00
#define EDU_SRC         0x80
#define EDU_DST         0x88
#define EDU_COUNT       0x90
#define EDU_CMD         0x98
#define EDU_RUN         0x1
#define EDU_TO_RAM      0x2
#define EDU_BUFFER      0x40000
#define PAGE            4096

/* IOVAs, all below edu's 28-bit mask */
#define IOVA_SOURCE     0x100000
#define IOVA_TARGET     0x200000
#define IOVA_READONLY   0x300000
#define IOVA_UNMAPPED   0x400000   /* mapped, then unmapped before the DMA */
#define IOVA_NEVER      0x500000   /* never mapped */
#define IOVA_SECRET     0x600000   /* mapped, then unmapped before edu reads it */

/* A failing DMA faults once per 4-byte access; 8 bytes keep each case to 2 faults, so that the guest's
 * rate-limited fault log (10 lines per 5 s) shows every case. */
#define FAULT_COUNT     8

static volatile uint8_t *bar;
static int container;

static void write64(unsigned offset, uint64_t value) { *(volatile uint64_t *)(bar + offset) = value; }
static uint32_t read32(unsigned offset) { return *(volatile uint32_t *)(bar + offset); }

static int fail(const char *step)
{
    vfio_fail("EDU", step);
    return 1;
}

/* Starts one transfer and waits (up to 5 s) for edu to clear its run bit. */
static int edu_dma(uint64_t source, uint64_t destination, uint64_t count, int to_ram)
{
    write64(EDU_SRC, source);
    write64(EDU_DST, destination);
    write64(EDU_COUNT, count);
    write64(EDU_CMD, EDU_RUN | (to_ram ? EDU_TO_RAM : 0));
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (read32(EDU_CMD) & EDU_RUN) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > 5)
            return -1;
        usleep(1000);
    }
    return 0;
}

static int map(void *buffer, uint64_t iova, int writable)
{
    struct vfio_iommu_type1_dma_map m = {
        .argsz = sizeof(m), .flags = VFIO_DMA_MAP_FLAG_READ | (writable ? VFIO_DMA_MAP_FLAG_WRITE : 0),
        .vaddr = (uintptr_t)buffer, .iova = iova, .size = PAGE,
    };
    return ioctl(container, VFIO_IOMMU_MAP_DMA, &m);
}

static int unmap(uint64_t iova)
{
    struct vfio_iommu_type1_dma_unmap u = { .argsz = sizeof(u), .iova = iova, .size = PAGE };
    return ioctl(container, VFIO_IOMMU_UNMAP_DMA, &u) || u.size != PAGE;
}

static uint8_t *page(uint8_t fill)
{
    uint8_t *p = mmap(0, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p != MAP_FAILED)
        memset(p, fill, PAGE);
    return p == MAP_FAILED ? NULL : p;
}

/* Bytes of p[0..count) that are not `value`. */
static unsigned differing(const uint8_t *p, size_t count, uint8_t value)
{
    unsigned n = 0;
    for (size_t i = 0; i < count; i++)
        n += p[i] != value;
    return n;
}

/* edu -> RAM at `iova`, which the IOMMU refuses: reports `page` (the memory behind the IOVA, if any),
 * which must still hold `fill` everywhere. */
static int write_refused(const char *name, unsigned iova, const uint8_t *page, uint8_t fill)
{
    if (edu_dma(EDU_BUFFER, iova, FAULT_COUNT, 1))
        return fail(name);
    printf("@@EDU case=%s iova=0x%x count=%d", name, iova, FAULT_COUNT);
    if (page)
        printf(" changed=%u", differing(page, PAGE, fill));
    printf("\n");
    return 0;
}

static int cases(void)
{
    uint8_t *source = page(0), *target = page(0), *readonly = page(0x33), *unmapped = page(0x5a), *secret = page(0x77);
    if (!source || !target || !readonly || !unmapped || !secret)
        return fail("mmap");
    for (int i = 0; i < PAGE; i++)
        source[i] = (uint8_t)(i * 7 + 1);
    if (map(source, IOVA_SOURCE, 0) || map(target, IOVA_TARGET, 1) || map(readonly, IOVA_READONLY, 0) ||
        map(unmapped, IOVA_UNMAPPED, 1) || map(secret, IOVA_SECRET, 1))
        return fail("map");
    if (unmap(IOVA_UNMAPPED) || unmap(IOVA_SECRET))
        return fail("unmap");

    /* RAM -> edu -> RAM through two mappings: exactly the source's bytes arrive. */
    if (edu_dma(IOVA_SOURCE, EDU_BUFFER, PAGE, 0) || edu_dma(EDU_BUFFER, IOVA_TARGET, PAGE, 1))
        return fail("dma-copy");
    unsigned copy_differing = 0;
    for (int i = 0; i < PAGE; i++)
        copy_differing += source[i] != target[i];
    printf("@@EDU case=copy bytes=%d differing=%u\n", PAGE, copy_differing);

    /* edu -> RAM at an IOVA never mapped, and at one just unmapped: guest memory does not change. */
    if (write_refused("write-never-mapped", IOVA_NEVER, NULL, 0) ||
        write_refused("write-unmapped", IOVA_UNMAPPED, unmapped, 0x5a))
        return 1;

    /* edu <- RAM at an IOVA just unmapped: edu reads zeros, never the secret; shown by copying its
     * buffer back out to the target mapping. */
    memset(target, 0xee, PAGE);
    if (edu_dma(IOVA_SECRET, EDU_BUFFER, FAULT_COUNT, 0) || edu_dma(EDU_BUFFER, IOVA_TARGET, FAULT_COUNT, 1))
        return fail("dma-secret");
    printf("@@EDU case=read-unmapped iova=0x%x count=%d nonzero=%u secret=%u\n", IOVA_SECRET, FAULT_COUNT,
           differing(target, FAULT_COUNT, 0), FAULT_COUNT - differing(target, FAULT_COUNT, 0x77));

    /* edu -> RAM into a read-only mapping: a permission fault, the page unchanged. */
    if (write_refused("write-readonly", IOVA_READONLY, readonly, 0x33))
        return 1;

    /* And the device still works: the copy again. */
    memset(target, 0, PAGE);
    if (edu_dma(IOVA_SOURCE, EDU_BUFFER, PAGE, 0) || edu_dma(EDU_BUFFER, IOVA_TARGET, PAGE, 1))
        return fail("dma-copy-again");
    printf("@@EDU case=copy-again differing=%d\n", memcmp(source, target, PAGE) ? 1 : 0);
    return 0;
}

static int flood(uint64_t iova, uint64_t count)
{
    printf("@@EDU ready\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof(line), stdin))
        return fail("stdin");
    if (edu_dma(EDU_BUFFER, iova, count, 1))
        return fail("dma-flood");
    printf("@@EDU case=flood iova=0x%llx count=%llu\n", (unsigned long long)iova, (unsigned long long)count);
    return 0;
}

int main(int argc, char **argv)
{
    int is_flood = argc >= 4 && !strcmp(argv[3], "flood");
    if (!(argc == 4 && !strcmp(argv[3], "cases")) && !(is_flood && (argc == 4 || argc == 6))) {
        fprintf(stderr, "usage: edu-dma GROUP BDF cases|flood [IOVA COUNT]\n");
        return 2;
    }
    uint64_t flood_iova = argc == 6 ? strtoull(argv[4], 0, 0) : IOVA_NEVER;
    uint64_t flood_count = argc == 6 ? strtoull(argv[5], 0, 0) : PAGE;
    if (flood_count == 0 || flood_count > PAGE) {
        fprintf(stderr, "edu-dma: COUNT must be 1...4096 (edu's buffer)\n");
        return 2;
    }
    int group = -1;
    container = vfio_open_container("EDU", argv[1], &group);
    if (container < 0)
        return 1;
    int device = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, argv[2]);
    if (device < 0)
        return fail("device");
    struct vfio_region_info config = { .argsz = sizeof(config), .index = VFIO_PCI_CONFIG_REGION_INDEX };
    struct vfio_region_info bar0 = { .argsz = sizeof(bar0), .index = VFIO_PCI_BAR0_REGION_INDEX };
    if (ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &config) || ioctl(device, VFIO_DEVICE_GET_REGION_INFO, &bar0))
        return fail("region-info");
    /* Memory space and bus mastering on: without bus mastering edu's DMA reaches nothing. */
    uint16_t command;
    if (pread(device, &command, 2, config.offset + 4) != 2)
        return fail("config-read");
    command |= 0x6;
    if (pwrite(device, &command, 2, config.offset + 4) != 2)
        return fail("config-write");
    bar = mmap(0, bar0.size, PROT_READ | PROT_WRITE, MAP_SHARED, device, bar0.offset);
    if (bar == MAP_FAILED)
        return fail("mmap-bar");
    if ((read32(EDU_ID) & 0xffff) != 0x00ed)
        return fail("not-edu");
    int status = is_flood ? flood(flood_iova, flood_count) : cases();
    if (status == 0)
        printf("@@EDU status=ok\n");
    fflush(stdout);
    return status;
}
