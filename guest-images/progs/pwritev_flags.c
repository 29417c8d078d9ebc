/*
 * pwritev and preadv take no flags argument; whatever the sixth register holds must be
 * ignored. The program writes "BB" at offset 0 of a file holding "AAAAAAAA" with
 * RWF_APPEND (0x10) left in that register, then reads 2 bytes at offset 6 with
 * RWF_NOWAIT|RWF_HIPRI junk there. Output: "file=BBAAAAAA", "read=AA", "done".
 * Identical natively.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    char path[] = "/tmp/ditto-pwritev-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return 1;
    unlink(path);
    if (write(fd, "AAAAAAAA", 8) != 8)
        return 2;
    struct iovec w = {"BB", 2};
    syscall(SYS_pwritev, fd, &w, 1, 0L, 0L, 0x10L);
    char all[16] = {0};
    pread(fd, all, sizeof all - 1, 0);
    printf("file=%s\n", all);
    char two[3] = {0};
    struct iovec r = {two, 2};
    syscall(SYS_preadv, fd, &r, 1, 6L, 0L, 0x9L);
    printf("read=%s\n", two);
    printf("done\n");
    return 0;
}
