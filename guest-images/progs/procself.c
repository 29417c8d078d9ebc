/*
 * procself: checks the program's own /proc/self against what it knows of itself.
 * One line per check, "ok NAME" or "FAIL NAME: detail"; the exit status is the number of
 * failures. Runs natively and under ditto with the same expected output.
 *
 * Checks: maps lines for anonymous RW, RO, PROT_NONE, shared anonymous and file-at-offset
 * mappings (perms, offset, inode, path); an mprotect split gives 3 lines and munmap removes
 * them; [stack] holds a local; pthread_getattr_np on the main thread; /proc/self/mem
 * pread/pwrite of a global and EIO at unmapped addresses; exe, cmdline, environ (read live:
 * a value the program overwrites in its own environment is seen so), status Threads: and
 * stat field 20 with two extra threads; comm; fd/N readlink; getdents64 of fd/.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char **environ;

/* The inode of shared anonymous memory differs by kernel: not checked. */
#define ANY_INODE ((unsigned long)-1)

static int failures;
static volatile uint64_t global_word = 0x1122334455667788ull;

static void check(int ok, const char *name, const char *detail)
{
    if (ok) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: %s\n", name, detail);
        failures++;
    }
}

static char *slurp(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    for (int i = 0; i < 4096; i++) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r <= 0)
            break;
        n += r;
    }
    close(fd);
    buf[n] = 0;
    if (len)
        *len = n;
    return buf;
}

/* Finds the maps line that starts at addr; returns how many start there. */
static int maps_line(uintptr_t addr, char *out, size_t outlen)
{
    char *m = slurp("/proc/self/maps", NULL);
    int count = 0;
    if (!m)
        return -1;
    for (char *line = strtok(m, "\n"); line; line = strtok(NULL, "\n")) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx", &s, &e) == 2 && s == addr) {
            count++;
            snprintf(out, outlen, "%s", line);
        }
    }
    free(m);
    return count;
}

static int lines_within(uintptr_t lo, uintptr_t hi)
{
    char *m = slurp("/proc/self/maps", NULL);
    int count = 0;
    for (char *line = strtok(m, "\n"); line; line = strtok(NULL, "\n")) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx", &s, &e) == 2 && s >= lo && e <= hi)
            count++;
    }
    free(m);
    return count;
}

static void check_map(const char *name, void *p, const char *perms, unsigned long off,
                      unsigned long ino, const char *path)
{
    char line[512], detail[700];
    int n = maps_line((uintptr_t)p, line, sizeof line);
    unsigned long s, e, o, i;
    char pr[8] = "", dev[16] = "";
    int pos = 0;
    if (n == 1)
        sscanf(line, "%lx-%lx %4s %lx %15s %lu %n", &s, &e, pr, &o, dev, &i, &pos);
    const char *lpath = pos ? line + pos : "";
    while (*lpath == ' ')
        lpath++;
    int ok = n == 1 && strcmp(pr, perms) == 0 && o == off && (ino == ANY_INODE || i == ino) &&
             (path ? strcmp(lpath, path) == 0 : 1);
    snprintf(detail, sizeof detail, "%d lines, last '%s'", n, line);
    check(ok, name, detail);
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int release_threads;
static pthread_barrier_t started;
static pid_t thread_tids[2];

static void *waiter(void *arg)
{
    thread_tids[(intptr_t)arg] = (pid_t)syscall(SYS_gettid);
    pthread_barrier_wait(&started);
    pthread_mutex_lock(&mu);
    while (!release_threads)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    return NULL;
}

static long status_field(const char *key)
{
    char *s = slurp("/proc/self/status", NULL);
    if (!s)
        return -1;
    char *p = strstr(s, key);
    long v = p ? strtol(p + strlen(key), NULL, 10) : -1;
    free(s);
    return v;
}

static long stat_field(int field)
{
    char *s = slurp("/proc/self/stat", NULL);
    if (!s)
        return -1;
    char *p = strrchr(s, ')');
    long v = -1;
    /* Field 3 is the first after ") ". */
    for (int f = 3; p && f <= field; f++) {
        p = strchr(p, ' ');
        if (!p)
            break;
        p++;
        if (f == field)
            v = strtol(p, NULL, 10);
    }
    free(s);
    return v;
}

int main(int argc, char **argv)
{
    char detail[512];
    long pg = sysconf(_SC_PAGESIZE);

    /* Mappings of each kind inside a PROT_NONE reservation, so no neighbour merges. */
    char *res = mmap(NULL, 16 * pg, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    int fixed = MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED;
    char *rw = mmap(res + pg, 2 * pg, PROT_READ | PROT_WRITE, fixed, -1, 0);
    char *ro = mmap(res + 4 * pg, 3 * pg, PROT_READ, fixed, -1, 0);
    char *shared = mmap(res + 10 * pg, pg, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    char *none = res + 11 * pg;
    rw[0] = 1;
    check_map("maps-anon-rw", rw, "rw-p", 0, 0, NULL);
    check_map("maps-anon-ro", ro, "r--p", 0, 0, NULL);
    check_map("maps-prot-none", none, "---p", 0, 0, NULL);
    check_map("maps-shared-anon", shared, "rw-s", 0, ANY_INODE, NULL);

    /* A file at an offset: the program's own executable. */
    char exe[4096];
    ssize_t el = readlink("/proc/self/exe", exe, sizeof exe - 1);
    exe[el > 0 ? el : 0] = 0;
    const char *base = strrchr(argv[0], '/');
    base = base ? base + 1 : argv[0];
    const char *ebase = strrchr(exe, '/');
    check(el > 0 && exe[0] == '/' && ebase && strcmp(ebase + 1, base) == 0, "exe-readlink", exe);
    int efd = open("/proc/self/exe", O_RDONLY);
    struct stat est;
    fstat(efd, &est);
    char *fmap = mmap(res + 8 * pg, pg, PROT_READ, MAP_PRIVATE | MAP_FIXED, efd, pg);
    check_map("maps-file-offset", fmap, "r--p", pg, est.st_ino, exe);
    char magic[4] = {0};
    pread(efd, magic, 4, 0);
    check(memcmp(magic, "\177ELF", 4) == 0, "exe-open-reads-elf", "no ELF magic");
    close(efd);

    /* mprotect splits, munmap removes. */
    mprotect(ro + pg, pg, PROT_READ | PROT_WRITE);
    int split = lines_within((uintptr_t)ro, (uintptr_t)ro + 3 * pg);
    snprintf(detail, sizeof detail, "%d lines", split);
    check(split == 3, "maps-mprotect-split", detail);
    munmap(ro, 3 * pg);
    split = lines_within((uintptr_t)ro, (uintptr_t)ro + 3 * pg);
    snprintf(detail, sizeof detail, "%d lines", split);
    check(split == 0, "maps-munmap-removes", detail);

    /* [stack] holds a local. */
    char *m = slurp("/proc/self/maps", NULL);
    int local = 0, in_stack = 0;
    for (char *l = strtok(m, "\n"); l; l = strtok(NULL, "\n")) {
        unsigned long s, e;
        if (strstr(l, "[stack]") && sscanf(l, "%lx-%lx", &s, &e) == 2)
            in_stack = (uintptr_t)&local >= s && (uintptr_t)&local < e;
    }
    free(m);
    check(in_stack, "maps-stack-holds-local", "no [stack] line around a local");

    /* glibc reads maps for the main thread's stack. */
    pthread_attr_t attr;
    void *saddr = NULL;
    size_t ssize = 0;
    int r = pthread_getattr_np(pthread_self(), &attr);
    if (r == 0)
        pthread_attr_getstack(&attr, &saddr, &ssize);
    snprintf(detail, sizeof detail, "r=%d addr=%p size=%zu local=%p", r, saddr, ssize, &local);
    check(r == 0 && (char *)&local >= (char *)saddr && (char *)&local < (char *)saddr + ssize,
          "pthread-getattr-np", detail);

    /* /proc/self/mem: offset = address. */
    int mfd = open("/proc/self/mem", O_RDWR);
    uint64_t v = 0;
    ssize_t n = pread(mfd, &v, 8, (off_t)(uintptr_t)&global_word);
    snprintf(detail, sizeof detail, "n=%zd v=%llx errno=%d", n, (unsigned long long)v, errno);
    check(n == 8 && v == 0x1122334455667788ull, "mem-pread-global", detail);
    uint64_t nv = 0xa5a5a5a5deadbeefull;
    n = pwrite(mfd, &nv, 8, (off_t)(uintptr_t)&global_word);
    snprintf(detail, sizeof detail, "n=%zd now=%llx", n, (unsigned long long)global_word);
    check(n == 8 && global_word == nv, "mem-pwrite-global", detail);
    errno = 0;
    n = pread(mfd, &v, 8, (off_t)(uintptr_t)ro);
    snprintf(detail, sizeof detail, "n=%zd errno=%d", n, errno);
    check(n == -1 && errno == EIO, "mem-eio-after-munmap", detail);
    errno = 0;
    n = pread(mfd, &v, 8, 0x1000);
    snprintf(detail, sizeof detail, "n=%zd errno=%d", n, errno);
    check(n == -1 && errno == EIO, "mem-eio-low", detail);
    errno = 0;
    n = pread(mfd, &v, 8, (off_t)0x7ffffffff000ll);
    snprintf(detail, sizeof detail, "n=%zd errno=%d", n, errno);
    check(n == -1 && errno == EIO, "mem-eio-high", detail);
    close(mfd);

    /* cmdline is argv with NULs. */
    size_t cl;
    char *cmd = slurp("/proc/self/cmdline", &cl);
    size_t want = 0;
    for (int i = 0; i < argc; i++)
        want += strlen(argv[i]) + 1;
    check(cmd && cl == want && strcmp(cmd, argv[0]) == 0, "cmdline", cmd ? cmd : "(none)");
    free(cmd);

    /* environ is read live: overwrite a marker's value and look for it. */
    char *marker = getenv("PROCSELF_MARKER");
    char secret[128] = "";
    if (marker) {
        snprintf(secret, sizeof secret, "%s", marker);
        memset(marker, 'x', strlen(marker));
    }
    size_t envl;
    char *envtext = slurp("/proc/self/environ", &envl);
    int seen = 0, has_path = 0;
    for (size_t off = 0; envtext && off < envl; off += strlen(envtext + off) + 1) {
        if (secret[0] && strstr(envtext + off, secret))
            seen = 1;
        if (strncmp(envtext + off, "PROCSELF_MARKER=", 16) == 0)
            has_path = 1;
    }
    check(envtext && !seen && (!marker || has_path), "environ-live", seen ? "old marker value seen" : "marker missing");
    free(envtext);

    /* Threads: in status and stat field 20. */
    pthread_t t[2];
    pthread_barrier_init(&started, NULL, 3);
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, waiter, (void *)(intptr_t)i);
    pthread_barrier_wait(&started);
    long threads = status_field("Threads:");
    long st20 = stat_field(20);
    snprintf(detail, sizeof detail, "status %ld stat %ld", threads, st20);
    check(threads == 3 && st20 == 3, "threads", detail);
    /* Each thread has its task directory; its stat starts with its tid. */
    char tpath[64];
    snprintf(tpath, sizeof tpath, "/proc/self/task/%d/stat", thread_tids[1]);
    char *tstat = slurp(tpath, NULL);
    snprintf(detail, sizeof detail, "%s: %s", tpath, tstat ? tstat : "(cannot open)");
    check(tstat && atoi(tstat) == thread_tids[1], "task-tid-stat", detail);
    free(tstat);
    pthread_mutex_lock(&mu);
    release_threads = 1;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);

    /* auxv is the vector the program started with. */
    size_t al;
    unsigned long *auxv = (unsigned long *)slurp("/proc/self/auxv", &al);
    unsigned long pagesz = 0, entry = 0;
    for (size_t i = 0; auxv && (i + 1) * 2 * sizeof(long) <= al && auxv[2 * i]; i++) {
        if (auxv[2 * i] == AT_PAGESZ)
            pagesz = auxv[2 * i + 1];
        if (auxv[2 * i] == AT_ENTRY)
            entry = auxv[2 * i + 1];
    }
    snprintf(detail, sizeof detail, "pagesz %lu entry %lx want %lx", pagesz, entry,
             getauxval(AT_ENTRY));
    check(pagesz == 4096 && entry && entry == getauxval(AT_ENTRY), "auxv", detail);
    free(auxv);

    /* comm is the base name (15 bytes at most). */
    char *comm = slurp("/proc/self/comm", NULL);
    char wantc[17];
    snprintf(wantc, sizeof wantc, "%.15s\n", base);
    check(comm && strcmp(comm, wantc) == 0, "comm", comm ? comm : "(none)");
    free(comm);

    /* fd/N and fd/ listing. */
    int dfd = open("/proc/self/exe", O_RDONLY);
    char fdpath[64], target[4096];
    snprintf(fdpath, sizeof fdpath, "/proc/self/fd/%d", dfd);
    ssize_t tl = readlink(fdpath, target, sizeof target - 1);
    target[tl > 0 ? tl : 0] = 0;
    check(tl > 0 && strcmp(target, exe) == 0, "fd-readlink", target);
    DIR *d = opendir("/proc/self/fd");
    int found = 0, entries = 0;
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        entries++;
        if (atoi(de->d_name) == dfd && de->d_name[0] != '.')
            found = 1;
    }
    if (d)
        closedir(d);
    snprintf(detail, sizeof detail, "%d entries", entries);
    check(found, "fd-dir-lists", detail);
    close(dfd);

    /* /dev/stdin and /dev/fd/N reopen the program's own descriptors. */
    int in = open("/dev/stdin", O_RDONLY);
    struct stat a0, b0;
    int same = in >= 0 && fstat(in, &a0) == 0 && fstat(0, &b0) == 0 && a0.st_ino == b0.st_ino;
    snprintf(detail, sizeof detail, "fd %d errno %d", in, errno);
    check(same, "dev-stdin", detail);
    if (in >= 0)
        close(in);

    /* Read-only: writes elsewhere than mem fail (at open, or, for root natively, at write). */
    errno = 0;
    int wfd = open("/proc/self/status", O_WRONLY);
    ssize_t wn = wfd < 0 ? -1 : write(wfd, "x", 1);
    snprintf(detail, sizeof detail, "fd %d wrote %zd errno %d", wfd, wn, errno);
    check(wn < 0, "status-not-writable", detail);
    if (wfd >= 0)
        close(wfd);

    printf("failures %d\n", failures);
    return failures;
}
