/*
 * Hands the kernel clearly invalid pointers. Under ditto each must come back as EFAULT
 * (errno 14) without harming the VMM; natively Linux gives the same answers, so the
 * output is identical in both. Raw syscall() keeps glibc from checking or rewriting.
 * Output: one "<call>=<ret> errno=<n>" line per call (errno=0 when it succeeded), then
 * "survived".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void report(const char *name, long r)
{
    printf("%s=%ld errno=%d\n", name, r, r < 0 ? errno : 0);
}

int main(void)
{
    int p[2];
    if (pipe(p) != 0)
        return 1;
    /* Data waiting in the pipe, so the read cannot block and must fail on the buffer. */
    if (write(p[1], "0123456789", 10) != 10)
        return 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    report("read", syscall(SYS_read, p[0], (void *)1, 10));
    report("write", syscall(SYS_write, 1, (void *)0x10, 5));
    report("write_high", syscall(SYS_write, 1, (void *)0x7ff0000000000000UL, 5));
    report("open", syscall(SYS_open, (char *)8, O_RDONLY));
    report("openat", syscall(SYS_openat, AT_FDCWD, (char *)8, O_RDONLY));
    report("clock_gettime", syscall(SYS_clock_gettime, CLOCK_MONOTONIC, (void *)8));
    printf("survived\n");
    return 0;
}
