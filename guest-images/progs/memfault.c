/*
 * Hands syscalls pointers into file pages that fault on the host: a MAP_SHARED page of an
 * empty file (past EOF: SIGBUS on touch) and a read-only MAP_SHARED page of a file opened
 * read-only (SIGSEGV on write). Natively every call returns EFAULT; under ditto the VMM
 * must do the same instead of dying of the fault (issue 17, defect 3).
 * Usage: memfault DIR [futex|doorbell] (DIR: a writable directory for the scratch files;
 * "futex": only the futex calls, which `--det` emulates on its own path; "doorbell": map
 * the empty file with MAP_FIXED over the 4 MiB above the main stack's end (from
 * /proc/self/maps), the top of ditto's guest memory, where the VMM keeps its doorbell
 * pages, report the mmap, then make 2000 syscalls: ditto must refuse the mapping
 * (ENOMEM, as Linux does past TASK_SIZE)).
 * Output: one "<call>=<ret> errno=<n>" line per call, then "survived"; exit status 3, so a
 * test can tell the program's own exit from a VMM death.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void report(const char *name, long r)
{
    printf("%s=%ld errno=%d\n", name, r, r < 0 ? errno : 0);
}

static void *map_file(const char *dir, const char *name, int size, int writable)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || ftruncate(fd, size) != 0)
        return NULL;
    if (!writable) {
        close(fd);
        fd = open(path, O_RDONLY);
        if (fd < 0)
            return NULL;
    }
    int prot = writable ? PROT_READ | PROT_WRITE : PROT_READ;
    void *p = mmap(NULL, 4096, prot, MAP_SHARED, fd, 0);
    close(fd);
    return p == MAP_FAILED ? NULL : p;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 1;
    setvbuf(stdout, NULL, _IOLBF, 0);
    /* Past EOF: the file is empty, so touching any byte of the page is SIGBUS. */
    char *eof = map_file(argv[1], "memfault-empty", 0, 1);
    /* A page of a read-only file: writing it is SIGSEGV. */
    char *ro = map_file(argv[1], "memfault-ro", 4096, 0);
    if (!eof || !ro) {
        perror("mmap");
        return 1;
    }
    if (argc >= 3 && strcmp(argv[2], "doorbell") == 0) {
        char path[4096];
        snprintf(path, sizeof path, "%s/memfault-empty", argv[1]);
        int fd = open(path, O_RDWR);
        unsigned long lo = 0, hi = 0;
        char line[512];
        FILE *maps = fopen("/proc/self/maps", "r");
        while (maps && fgets(line, sizeof line, maps))
            if (strstr(line, "[stack]"))
                sscanf(line, "%lx-%lx", &lo, &hi);
        if (maps)
            fclose(maps);
        void *at = (void *)hi;
        void *p = mmap(at, 4UL << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
        report("mmap_doorbell", p == MAP_FAILED ? -1 : 0);
        for (int i = 0; i < 2000; i++)
            syscall(SYS_getppid);
        printf("survived\n");
        return 3;
    }
    if (argc < 3 || strcmp(argv[2], "futex") != 0) {
        report("open_eof", syscall(SYS_open, eof, O_RDONLY));
        report("sigprocmask_ro", syscall(SYS_rt_sigprocmask, SIG_BLOCK, NULL, ro, 8));
        report("clock_gettime_ro", syscall(SYS_clock_gettime, CLOCK_MONOTONIC, ro));
    }
    report("futex_wait_eof", syscall(SYS_futex, (int *)eof, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0));
    report("futex_wake_op_eof",
           syscall(SYS_futex, (int *)(eof + 64), FUTEX_WAKE_OP_PRIVATE, 1, NULL, (int *)eof,
                   FUTEX_OP(FUTEX_OP_SET, 1, FUTEX_OP_CMP_EQ, 0)));
    printf("survived\n");
    return 3;
}
