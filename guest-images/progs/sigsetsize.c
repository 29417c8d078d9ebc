/*
 * Calls that take a signal mask with its size, given a wrong size: Linux answers
 * EINVAL at once (before looking at descriptors or the timeout), so none of them
 * may block. Each would block forever if the size were ignored (no descriptors,
 * no timeout). Output: one line per call, "<name> ret=-1 errno=22", then "done".
 * Identical natively.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>

static void show(const char *name, long r)
{
    printf("%s ret=%ld errno=%d\n", name, r, r < 0 ? errno : 0);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    unsigned long mask = 0;
    errno = 0;
    show("ppoll", syscall(SYS_ppoll, NULL, 0, NULL, &mask, 7));
    errno = 0;
    show("ppoll-big", syscall(SYS_ppoll, NULL, 0, NULL, &mask, 1UL << 40));
    struct { void *ss; unsigned long len; } ps = { &mask, 4 };
    errno = 0;
    show("pselect6", syscall(SYS_pselect6, 0, NULL, NULL, NULL, NULL, &ps));
    errno = 0;
    show("pselect6-fault", syscall(SYS_pselect6, 0, NULL, NULL, NULL, NULL, (void *)16));
    int ep = epoll_create1(0);
    struct epoll_event ev;
    errno = 0;
    show("epoll_pwait", syscall(SYS_epoll_pwait, ep, &ev, 1, -1, &mask, 16));
    errno = 0;
    show("epoll_pwait2", syscall(SYS_epoll_pwait2, ep, &ev, 1, NULL, &mask, 0));
    printf("done\n");
    return 0;
}
