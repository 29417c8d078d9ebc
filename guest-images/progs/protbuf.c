/*
 * Syscall buffers in memory the program may not write: Linux checks the program's own
 * mappings and protections when it copies, so read() into a read-only page, a PROT_NONE
 * page or an unmapped page is EFAULT and leaves the page as it was. Found by sysfuzz.
 * Output: "ro ret=-1 errno=14 intact=1", "none ret=-1 errno=14", "hole ret=-1 errno=14",
 * then "done". Identical natively.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static long fill(int fd[2], void *dst)
{
    if (write(fd[1], "xxxxxxxx", 8) != 8)
        return -2;
    errno = 0;
    long r = read(fd[0], dst, 8);
    char drain[8];
    if (r != 8) /* the bytes stay in the pipe on EFAULT */
        (void)!read(fd[0], drain, 8);
    return r;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fd[2];
    if (pipe(fd) != 0)
        return 2;
    unsigned char *m = mmap(NULL, 3 * 4096, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return 2;
    memset(m, 'a', 3 * 4096);
    mprotect(m, 4096, PROT_READ);
    mprotect(m + 4096, 4096, PROT_NONE);
    munmap(m + 2 * 4096, 4096);
    long r = fill(fd, m);
    printf("ro ret=%ld errno=%d intact=%d\n", r, r < 0 ? errno : 0, m[0] == 'a');
    r = fill(fd, m + 4096);
    printf("none ret=%ld errno=%d\n", r, r < 0 ? errno : 0);
    r = fill(fd, m + 2 * 4096);
    printf("hole ret=%ld errno=%d\n", r, r < 0 ? errno : 0);
    printf("done\n");
    return 0;
}
