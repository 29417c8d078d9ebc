/*
 * poolwrite MODE [T=4] [N=200] [US=2000]: a pool of T threads writes T*N numbered records to
 * "records.bin" in the current directory (created, truncated). A record is 64 bytes:
 * "rec <8 digits> of <8 digits> <16 hex digits>" padded with '.' and ended by '\n', the
 * hex digits a hash of the record's number only, so no record depends on the thread that
 * wrote it. Threads take the next record number from a counter under a mutex and sleep US
 * microseconds after each record, so that a test can kill a replica while the pool writes.
 *   MODE pwrite: record i is written at offset 64*i with pwrite: the file is the same
 *   whatever the schedule.
 *   MODE append: records are written with write() on a descriptor opened O_APPEND: their
 *   order depends on the schedule, the set of records does not.
 * Then the main thread reads the file back and checks that every record is there exactly
 * once and intact.
 * Output: "records=<T*N> bytes=<file size>"; exit 1 with an ERROR line when the file is not
 * what was written, 2 for bad arguments.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define REC 64

static int T = 4, N = 200, US = 2000, append_mode;
static int fd;
static int next_rec;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

static void fail(const char *what, long i)
{
    printf("ERROR %s %ld\n", what, i);
    fflush(stdout);
    exit(1);
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static void record(char *buf, int i)
{
    int n = snprintf(buf, REC, "rec %08d of %08d %016llx ", i, T * N,
                     (unsigned long long)mix((uint64_t)i));
    memset(buf + n, '.', REC - 1 - n);
    buf[REC - 1] = '\n';
}

static void *worker(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&lock);
        int i = next_rec < T * N ? next_rec++ : -1;
        pthread_mutex_unlock(&lock);
        if (i < 0)
            return NULL;
        char buf[REC];
        record(buf, i);
        ssize_t w = append_mode ? write(fd, buf, REC) : pwrite(fd, buf, REC, (off_t)i * REC);
        if (w != REC)
            fail("write", i);
        struct timespec ts = {0, (long)US * 1000};
        nanosleep(&ts, NULL);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "pwrite") && strcmp(argv[1], "append"))) {
        fprintf(stderr, "usage: poolwrite pwrite|append [threads] [records per thread] [us]\n");
        return 2;
    }
    append_mode = !strcmp(argv[1], "append");
    if (argc > 2)
        T = atoi(argv[2]);
    if (argc > 3)
        N = atoi(argv[3]);
    if (argc > 4)
        US = atoi(argv[4]);
    if (T < 1 || T > 64 || N < 1 || N > 1000000 || US < 0 || US > 1000000) {
        fprintf(stderr, "poolwrite: threads 1..64, records 1..1000000, us 0..1000000\n");
        return 2;
    }
    int flags = O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | (append_mode ? O_APPEND : 0);
    fd = open("records.bin", flags, 0644);
    if (fd < 0)
        fail("open", -1);
    pthread_t th[64];
    for (int t = 0; t < T; t++)
        if (pthread_create(&th[t], NULL, worker, NULL) != 0)
            fail("pthread_create", t);
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    if (close(fd) != 0)
        fail("close", -1);

    /* Read back: every record exactly once, intact. */
    int in = open("records.bin", O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (in < 0 || fstat(in, &st) != 0)
        fail("reopen", -1);
    long total = (long)T * N;
    if (st.st_size != total * REC)
        fail("size", (long)st.st_size);
    char *seen = calloc((size_t)total, 1);
    char got[REC], want[REC];
    for (long k = 0; k < total; k++) {
        ssize_t r = read(in, got, REC);
        if (r != REC)
            fail("short read at record", k);
        int i;
        if (sscanf(got, "rec %d ", &i) != 1 || i < 0 || i >= total)
            fail("garbled record at", k);
        record(want, i);
        if (memcmp(got, want, REC) != 0)
            fail("corrupt record", i);
        if (seen[i]++)
            fail("duplicate record", i);
        if (!append_mode && i != k)
            fail("record out of place", i);
    }
    close(in);
    printf("records=%ld bytes=%lld\n", total, (long long)st.st_size);
    return 0;
}
