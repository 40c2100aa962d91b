/*
 * vfio-group.h: what the guest's VFIO workloads share. Opens a type1v2 container with one group in it,
 * or prints "@@<TAG> status=error step=..." and returns -1.
 */
#ifndef VFIO_GROUP_H
#define VFIO_GROUP_H

#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

static int vfio_fail(const char *tag, const char *step)
{
    printf("@@%s status=error step=%s errno=%d (%s)\n", tag, step, errno, strerror(errno));
    fflush(stdout);
    return -1;
}

/* Opens /dev/vfio/GROUP into a new type1v2 container; returns the container, the group in *group. */
static int vfio_open_container(const char *tag, const char *group_number, int *group)
{
    char path[64];
    int container = open("/dev/vfio/vfio", O_RDWR);

    if (container < 0)
        return vfio_fail(tag, "open-container");
    if (ioctl(container, VFIO_GET_API_VERSION) != VFIO_API_VERSION)
        return vfio_fail(tag, "api-version");
    if (!ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU))
        return vfio_fail(tag, "type1v2");
    snprintf(path, sizeof(path), "/dev/vfio/%s", group_number);
    *group = open(path, O_RDWR);
    if (*group < 0)
        return vfio_fail(tag, "open-group");
    struct vfio_group_status status = { .argsz = sizeof(status) };
    if (ioctl(*group, VFIO_GROUP_GET_STATUS, &status) || !(status.flags & VFIO_GROUP_FLAGS_VIABLE))
        return vfio_fail(tag, "group-viable");
    if (ioctl(*group, VFIO_GROUP_SET_CONTAINER, &container))
        return vfio_fail(tag, "set-container");
    if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU))
        return vfio_fail(tag, "set-iommu");
    return container;
}

#endif
