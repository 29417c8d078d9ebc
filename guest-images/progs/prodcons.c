/*
 * prodcons [P=3] [N=2000]: P producer threads each write N 8-byte records (producer id << 32
 * | sequence) into one pipe and count them on an eventfd; one consumer thread reads the
 * eventfd, then that many records, folding the order it saw them in into a checksum. Pipe
 * writes of 8 bytes are atomic, so no lock is needed; the interleaving is left to the
 * scheduler, so natively the checksum varies from run to run. Under det it must not.
 * Output: "items=<P*N> order_checksum=<16 hex digits>"; exit 1 (with an ERROR line) if a
 * producer's records arrive out of order or go missing.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

static int P = 3, N = 2000;
static int pfd[2], efd;

static void *producer(void *arg)
{
    uint64_t id = (uint64_t)arg;
    for (uint64_t s = 0; s < (uint64_t)N; s++) {
        uint64_t rec = id << 32 | s, one = 1;
        if (write(pfd[1], &rec, 8) != 8 || write(efd, &one, 8) != 8)
            abort();
    }
    return NULL;
}

static uint64_t checksum = 0xcbf29ce484222325ull;
static long items;
static int bad;

static void *consumer(void *arg)
{
    (void)arg;
    uint32_t next[P];
    for (int i = 0; i < P; i++)
        next[i] = 0;
    long total = (long)P * N;
    while (items < total) {
        uint64_t n;
        if (read(efd, &n, 8) != 8)
            abort();
        /* Every counted record is already in the pipe: it was written before the count. */
        for (uint64_t i = 0; i < n; i++) {
            uint64_t rec;
            if (read(pfd[0], &rec, 8) != 8)
                abort();
            uint32_t id = rec >> 32, seq = (uint32_t)rec;
            if (id >= (uint32_t)P || seq != next[id]++)
                bad = 1;
            checksum = (checksum ^ rec) * 0x100000001B3ull;
            items++;
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        P = atoi(argv[1]);
    if (argc > 2)
        N = atoi(argv[2]);
    if (P < 1 || P > 1024 || N < 0) {
        fprintf(stderr, "usage: prodcons [producers] [items each]\n");
        return 2;
    }
    if (pipe(pfd) != 0 || (efd = eventfd(0, 0)) < 0) {
        perror("pipe/eventfd");
        return 1;
    }
    pthread_t c, t[P];
    pthread_create(&c, NULL, consumer, NULL);
    for (int i = 0; i < P; i++)
        pthread_create(&t[i], NULL, producer, (void *)(uintptr_t)i);
    for (int i = 0; i < P; i++)
        pthread_join(t[i], NULL);
    pthread_join(c, NULL);
    printf("items=%ld order_checksum=%016llx\n", items, (unsigned long long)checksum);
    if (bad) {
        printf("ERROR: records out of order\n");
        return 1;
    }
    return 0;
}
