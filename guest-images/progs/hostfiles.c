/*
 * hostfiles [T=4] [N=6]: T threads each do N jobs in the current directory: mkstemp a
 * "job-XXXXXX" file, write a known text to it, fsync, read it back through the same
 * descriptor (lseek + read, fstat for its size), rename it to "done-<t>-<j>.txt", open that
 * read-only and read it again, stat it, and unlink it when j is odd. Every job appends one
 * line "t=<t> j=<j>\n" to "app.log" with O_APPEND, on a descriptor the main thread opened for
 * even j and on the thread's own for odd j. The main thread then lists the directory and
 * reads app.log back.
 * Output: "jobs=<T*N> kept=<done files listed> lines=<lines in app.log> sum=<16 hex digits>"
 * (the sum is order-independent, so a native run prints the same line); exit 1 with an
 * ERROR line when anything read back is not what was written.
 * hostfiles mmap: instead, writes one page to "m.bin", maps it read-only and private, and
 * prints "mmap=ok <first byte>" or "mmap=errno <n>" (a pair refuses maps of host files it
 * writes: ENODEV in both replicas); then unlinks it.
 */
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static int T = 4, N = 6;
static int shared_log;

static void fail(const char *what, int t, int j)
{
    printf("ERROR %s t=%d j=%d\n", what, t, j);
    fflush(stdout);
    exit(1);
}

static void text_of(char *buf, size_t cap, int t, int j)
{
    snprintf(buf, cap, "job %d of thread %d: %0*d\n", j, t, 40 + j, t * 1000 + j);
}

static void *worker(void *arg)
{
    int t = (int)(intptr_t)arg;
    int own_log = open("app.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (own_log < 0)
        fail("open own log", t, -1);
    for (int j = 0; j < N; j++) {
        char tmpl[] = "job-XXXXXX", want[128], got[128], done[64];
        text_of(want, sizeof want, t, j);
        size_t len = strlen(want);
        int fd = mkstemp(tmpl);
        if (fd < 0)
            fail("mkstemp", t, j);
        if (write(fd, want, len) != (ssize_t)len || fsync(fd) != 0)
            fail("write", t, j);
        struct stat st;
        if (fstat(fd, &st) != 0 || st.st_size != (off_t)len)
            fail("fstat", t, j);
        memset(got, 0, sizeof got);
        if (lseek(fd, 0, SEEK_SET) != 0 || read(fd, got, sizeof got) != (ssize_t)len ||
            memcmp(got, want, len) != 0)
            fail("read back", t, j);
        close(fd);
        snprintf(done, sizeof done, "done-%d-%d.txt", t, j);
        if (rename(tmpl, done) != 0)
            fail("rename", t, j);
        fd = open(done, O_RDONLY | O_CLOEXEC);
        memset(got, 0, sizeof got);
        if (fd < 0 || read(fd, got, sizeof got) != (ssize_t)len || memcmp(got, want, len) != 0)
            fail("read renamed", t, j);
        close(fd);
        if (stat(done, &st) != 0 || st.st_size != (off_t)len || access(tmpl, F_OK) == 0)
            fail("stat renamed", t, j);
        if (j % 2 == 1 && unlink(done) != 0)
            fail("unlink", t, j);
        char line[32];
        int n = snprintf(line, sizeof line, "t=%d j=%d\n", t, j);
        if (write(j % 2 ? own_log : shared_log, line, n) != n)
            fail("append", t, j);
    }
    close(own_log);
    return NULL;
}

static int map_written_file(void)
{
    char page[4096];
    memset(page, 'm', sizeof page);
    int fd = open("m.bin", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write(fd, page, sizeof page) != (ssize_t)sizeof page)
        fail("write m.bin", -1, -1);
    char *m = mmap(NULL, sizeof page, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED)
        printf("mmap=errno %d\n", errno);
    else
        printf("mmap=ok %c\n", m[0]);
    close(fd);
    if (unlink("m.bin") != 0)
        fail("unlink m.bin", -1, -1);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "mmap") == 0)
        return map_written_file();
    if (argc > 1)
        T = atoi(argv[1]);
    if (argc > 2)
        N = atoi(argv[2]);
    if (T < 1 || T > 64 || N < 1 || N > 1000)
        return 2;
    shared_log = open("app.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (shared_log < 0)
        fail("open log", -1, -1);
    pthread_t th[64];
    for (int t = 0; t < T; t++)
        if (pthread_create(&th[t], NULL, worker, (void *)(intptr_t)t) != 0)
            fail("pthread_create", t, -1);
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    close(shared_log);

    int kept = 0;
    DIR *d = opendir(".");
    if (!d)
        fail("opendir", -1, -1);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, "done-", 5) == 0)
            kept++;
        if (strncmp(e->d_name, "job-", 4) == 0)
            fail("leftover temporary file", -1, -1);
    }
    closedir(d);

    FILE *f = fopen("app.log", "r");
    if (!f)
        fail("reopen log", -1, -1);
    char line[64];
    int lines = 0;
    uint64_t sum = 0;
    while (fgets(line, sizeof line, f)) {
        uint64_t h = 1469598103934665603ull;
        for (char *c = line; *c; c++)
            h = (h ^ (unsigned char)*c) * 1099511628211ull;
        sum += h;
        lines++;
    }
    fclose(f);
    printf("jobs=%d kept=%d lines=%d sum=%016llx\n", T * N, kept, lines,
           (unsigned long long)sum);
    return 0;
}
