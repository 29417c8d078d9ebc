/* bigrecord: one recorded call whose result is larger than a channel record.
 *
 * usage: bigrecord [MIB [THREADS]]   (defaults 20 and 3, at most 3 threads)
 *
 * Fills a MIB-MiB buffer with one getrandom call (a Recorded call in a pair: the secondary
 * gets the primary's bytes from the channel), then has THREADS threads each take 64 KiB more
 * from getrandom. Prints, in order:
 *   big <bytes returned> <FNV-1a 64 of the buffer, hex>
 *   thread <i> <FNV-1a 64 of its 64 KiB, hex>      (i = 0, 1, ..., in join order)
 * A pair whose secondary replays every byte prints the same lines on both sides.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>

static uint64_t fnv(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ull;
    }
    return h;
}

static uint64_t hashes[3];

static void *worker(void *arg) {
    long i = (long)arg;
    static unsigned char bufs[3][65536];
    ssize_t n = getrandom(bufs[i], sizeof bufs[i], 0);
    hashes[i] = n == (ssize_t)sizeof bufs[i] ? fnv(bufs[i], sizeof bufs[i]) : 0;
    return NULL;
}

int main(int argc, char **argv) {
    size_t mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 20;
    long threads = argc > 2 ? strtol(argv[2], NULL, 10) : 3;
    if (threads < 0 || threads > 3)
        threads = 3;
    size_t len = mib << 20;
    unsigned char *buf = malloc(len);
    if (!buf) {
        perror("malloc");
        return 1;
    }
    ssize_t n = getrandom(buf, len, 0);
    if (n < 0) {
        perror("getrandom");
        return 1;
    }
    printf("big %zd %016llx\n", n, (unsigned long long)fnv(buf, (size_t)n));
    pthread_t t[3];
    for (long i = 0; i < threads; i++)
        pthread_create(&t[i], NULL, worker, (void *)i);
    for (int i = 0; i < threads; i++) {
        pthread_join(t[i], NULL);
        printf("thread %d %016llx\n", i, (unsigned long long)hashes[i]);
    }
    return 0;
}
