/*
 * Runs out of one resource and reports the error Linux gives. argv[1] picks it:
 *   mem:     mmap 64 MiB anonymous chunks, touching one byte a page, until mmap fails;
 *            prints "mem err=12" (ENOMEM) after up to 4096 chunks (256 GiB), else "mem none".
 *   threads: pthread_create (64 KiB stacks, threads park in pause) until it fails;
 *            prints "threads err=11" (EAGAIN) or "threads none" after 100000.
 *   fds:     dup(0) until it fails; prints "fds err=24" (EMFILE) or "fds none" after 1<<20.
 *   pipe:    write 4 KiB blocks to a pipe nobody reads: prints "pipe full" once the pipe
 *            would block (checked with O_NONBLOCK first), then writes blocking for ever.
 * Then "done" (all but pipe).
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void *park(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *what = argc > 1 ? argv[1] : "fds";
    if (!strcmp(what, "mem")) {
        for (int i = 0; i < 4096; i++) {
            size_t len = 64UL << 20;
            char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                           -1, 0);
            if (p == MAP_FAILED) {
                printf("mem err=%d\n", errno);
                printf("done\n");
                return 0;
            }
            for (size_t off = 0; off < len; off += 4096)
                p[off] = 1;
        }
        printf("mem none\n");
    } else if (!strcmp(what, "threads")) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 64 * 1024);
        for (int i = 0; i < 100000; i++) {
            pthread_t t;
            int e = pthread_create(&t, &attr, park, NULL);
            if (e) {
                printf("threads err=%d\n", e);
                printf("done\n");
                return 0;
            }
        }
        printf("threads none\n");
    } else if (!strcmp(what, "fds")) {
        for (int i = 0; i < (1 << 20); i++) {
            if (dup(0) < 0) {
                printf("fds err=%d\n", errno);
                printf("done\n");
                return 0;
            }
        }
        printf("fds none\n");
    } else if (!strcmp(what, "pipe")) {
        int fd[2];
        static char block[4096];
        if (pipe(fd) != 0)
            return 2;
        fcntl(fd[1], F_SETFL, O_NONBLOCK);
        for (int i = 0; i < (1 << 20); i++)
            if (write(fd[1], block, sizeof block) < 0)
                break;
        printf("pipe full errno=%d\n", errno);
        fcntl(fd[1], F_SETFL, 0);
        for (;;)
            if (write(fd[1], block, sizeof block) < 0)
                return 3;
    }
    printf("done\n");
    return 0;
}
