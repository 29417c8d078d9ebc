/* transient_reads: worker threads that do glibc-style one-time lazy reads of constant
 * /proc files, in whichever thread gets there first, between ordinary descriptor work.
 *
 *   transient_reads THREADS ITEMS
 *
 * glibc's malloc reads /proc/sys/vm/overcommit_memory once per process, in the first thread
 * that shrinks a non-main arena's heap (check_may_shrink_heap): open, read one byte, close.
 * Here each of five constant files is read once, by the first worker to finish an item
 * after its moment (1 to 5 times LAZY_TICKS TSC ticks after the start). The moments are
 * read from the TSC itself, which no replica records or replays, so which thread reads
 * which file is a race, as the heap shrink's is. Each is parsed a byte at a time, so its
 * descriptor stays open while other threads take numbers. The main thread reads what is
 * left at the end, so every run reads all five.
 *
 * Workers take items from a pipe the main thread filled (a read on a pipe is a det point,
 * so the split of the items follows the primary's turns), and per item make a pipe, write
 * and read back the result, close it, and write the result to a file in the current
 * directory (a host file: Recorded in a pair, its descriptor placed at the primary's
 * number in the secondary). So descriptor numbers are taken lowest-first by ordered calls
 * while the lazy reads open theirs. Prints one line of totals that do not depend on the
 * split. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <x86intrin.h>

#define LAZY_FILES 5
#define LAZY_TICKS 8000000ULL

static int queue[2];
static const char *const lazy_paths[LAZY_FILES] = {
    "/proc/sys/vm/overcommit_memory", "/proc/sys/vm/max_map_count",
    "/proc/sys/kernel/pid_max",       "/proc/sys/kernel/osrelease",
    "/proc/sys/kernel/ostype",
};
static int lazy_once[LAZY_FILES];
static long lazy_reads;
static unsigned long long start_tsc;
static unsigned long total;

/* One-time lazy read of a constant file, glibc's way. */
static void lazy_read(int k)
{
    if (__atomic_exchange_n(&lazy_once[k], 1, __ATOMIC_ACQ_REL))
        return;
    int fd = open(lazy_paths[k], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        perror(lazy_paths[k]);
        exit(1);
    }
    /* Parsed a byte at a time, as a line parser would: the descriptor stays open a
     * while, so other threads' ordered opens and pipes come in between. */
    char c;
    int first = 1;
    while (read(fd, &c, 1) == 1) {
        if (first && c != '\n')
            __atomic_fetch_add(&lazy_reads, 1, __ATOMIC_RELAXED);
        first = 0;
        volatile unsigned long x = (unsigned long)c;
        for (int k = 0; k < 400000; k++)
            x = x * 6364136223846793005UL + 1442695040888963407UL;
    }
    close(fd);
}

/* The lazy reads whose moment has come. */
static void lazy_reads_due(void)
{
    unsigned long long now = __rdtsc() - start_tsc;
    for (int k = 0; k < LAZY_FILES; k++)
        if (now >= (k + 1) * LAZY_TICKS)
            lazy_read(k);
}

static unsigned long compute(long i)
{
    long rounds = 100000 + (i % 7) * 150000;
    volatile unsigned long x = (unsigned long)i;
    for (long k = 0; k < rounds; k++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    return (unsigned long)i * 3 + 1;
}

static void *worker(void *arg)
{
    (void)arg;
    unsigned long sum = 0;
    for (;;) {
        long i;
        if (read(queue[0], &i, sizeof i) != sizeof i) {
            perror("read queue");
            exit(1);
        }
        if (i < 0)
            break;
        unsigned long r = compute(i);
        lazy_reads_due();
        int p[2];
        unsigned long back = 0;
        if (pipe2(p, O_CLOEXEC) != 0 || write(p[1], &r, sizeof r) != sizeof r ||
            read(p[0], &back, sizeof back) != sizeof back) {
            perror("pipe");
            exit(1);
        }
        close(p[0]);
        close(p[1]);
        char name[32];
        snprintf(name, sizeof name, "item.%ld", i);
        int fd = open(name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, &back, sizeof back) != sizeof back) {
            perror(name);
            exit(1);
        }
        close(fd);
        sum += back;
    }
    __atomic_fetch_add(&total, sum, __ATOMIC_RELAXED);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: transient_reads THREADS ITEMS\n");
        return 2;
    }
    int threads = atoi(argv[1]);
    long items = atol(argv[2]);
    /* The queue holds every item and the stop marks at once (a pipe holds 64 KiB). */
    if (threads < 1 || threads > 64 || items < 1 || items > 4000) {
        fprintf(stderr, "transient_reads: THREADS must be 1-64 and ITEMS 1-4000\n");
        return 2;
    }
    if (pipe2(queue, O_CLOEXEC) != 0) {
        perror("pipe2");
        return 1;
    }
    for (long i = 0; i < items + threads; i++) {
        long v = i < items ? i : -1;
        if (write(queue[1], &v, sizeof v) != sizeof v) {
            perror("write queue");
            return 1;
        }
    }
    start_tsc = __rdtsc();
    pthread_t t[64];
    for (int k = 0; k < threads; k++)
        if (pthread_create(&t[k], NULL, worker, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
    for (int k = 0; k < threads; k++)
        pthread_join(t[k], NULL);
    for (int k = 0; k < LAZY_FILES; k++)
        lazy_read(k);
    printf("transient_reads threads=%d items=%ld total=%lu lazy_reads=%ld\n", threads, items,
           total, lazy_reads);
    return 0;
}
