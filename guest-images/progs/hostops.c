/* hostops: calls that would change the host or use kernel features a process VM does not
 * have, and prints what each returned: "name=0" or "name=ERRNONAME". Under ditto they get
 * an unprivileged container's answers (EPERM, EOPNOTSUPP) and one-node NUMA defaults,
 * never ENOSYS. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *name(long r)
{
    if (r >= 0)
        return "0";
    switch (errno) {
    case EPERM: return "EPERM";
    case EINVAL: return "EINVAL";
    case EBADF: return "EBADF";
    case EFAULT: return "EFAULT";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case ENOSYS: return "ENOSYS";
    default: return strerror(errno);
    }
}

#define SHOW(label, call) do { long r_ = (call); printf("%s=%s\n", label, name(r_)); } while (0)

int main(void)
{
    char value[16];
    unsigned long mask[2] = {0, 0};
    int mode = -1;
    SHOW("sethostname", syscall(SYS_sethostname, "x", 1));
    SHOW("settimeofday", syscall(SYS_settimeofday, NULL, NULL));
    SHOW("chroot", syscall(SYS_chroot, "/"));
    SHOW("mount", syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, NULL));
    SHOW("unshare0", syscall(SYS_unshare, 0));
    SHOW("unshare_net", syscall(SYS_unshare, CLONE_NEWNET));
    SHOW("getxattr", syscall(SYS_getxattr, "/", "user.x", value, sizeof value));
    SHOW("getxattr_badptr", syscall(SYS_getxattr, (void *)8, "user.x", value, sizeof value));
    SHOW("fgetxattr", syscall(SYS_fgetxattr, 1, "user.x", value, sizeof value));
    SHOW("fgetxattr_badfd", syscall(SYS_fgetxattr, 99, "user.x", value, sizeof value));
    SHOW("listxattr", syscall(SYS_listxattr, "/", value, sizeof value));
    SHOW("get_mempolicy", syscall(SYS_get_mempolicy, &mode, mask, 128, NULL, 0));
    printf("mode=%d mask=%lx,%lx\n", mode, mask[0], mask[1]);
    SHOW("mems_allowed", syscall(SYS_get_mempolicy, NULL, mask, 128, NULL, 4));
    printf("allowed=%lx,%lx\n", mask[0], mask[1]);
    mask[0] = 1;
    SHOW("set_mempolicy_bind0", syscall(SYS_set_mempolicy, 2, mask, 64));
    mask[0] = 2;
    SHOW("set_mempolicy_bind1", syscall(SYS_set_mempolicy, 2, mask, 64));
    SHOW("set_mempolicy_badmode", syscall(SYS_set_mempolicy, 99, NULL, 0));
    SHOW("ioprio_get", syscall(SYS_ioprio_get, 1, 0));
    SHOW("ioprio_set_be", syscall(SYS_ioprio_set, 1, 0, (2 << 13) | 4));
    SHOW("ioprio_set_rt", syscall(SYS_ioprio_set, 1, 0, (1 << 13) | 4));
    SHOW("readahead_badfd", syscall(SYS_readahead, 99, 0, 4096));
    SHOW("sync_file_range", syscall(SYS_sync_file_range, 1, 0, 0, 0));
    SHOW("mlock2_badflag", syscall(SYS_mlock2, value, sizeof value, 2));
    return 0;
}
