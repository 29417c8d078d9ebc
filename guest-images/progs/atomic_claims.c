/* atomic_claims: worker threads that claim work with an atomic counter (bwa mem's kt_for,
 * a hand-written thread pool) and allocate per item, in the shape of real programs whose
 * split of the work between threads is timing.
 *
 *   atomic_claims THREADS ITEMS
 *
 * Each item allocates blocks whose sizes depend on the item: large ones (glibc maps and
 * unmaps them, or grows its heap), small ones kept until another thread frees them (they
 * go back to the arena that gave them). So how many mmap/munmap calls each thread makes,
 * and when, depends on which items it claimed. No pthread mutex: the only det points are
 * the address-space calls, thread creation and exit. Prints one line of totals that do not
 * depend on the split. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SLOTS 64

static long items;
static long next_item;
static unsigned long total;
/* Small blocks handed between threads: a thread frees what another left in the slot. */
static void *slots[SLOTS];

static unsigned long work(long i)
{
    size_t big = 40000 + (size_t)(i % 5) * 90000 + (size_t)(i % 3) * 300000;
    unsigned char *p = malloc(big);
    if (!p)
        abort();
    memset(p, (int)(i & 0xff), big);
    unsigned long sum = 0;
    for (size_t k = 0; k < big; k += 4096)
        sum += p[k] + k;
    volatile unsigned long x = (unsigned long)i;
    for (long k = 0; k < 20000 + (i % 7) * 30000; k++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    free(p);
    void *mine = malloc(64 + (size_t)(i % 11) * 200);
    if (!mine)
        abort();
    void *theirs = __atomic_exchange_n(&slots[i % SLOTS], mine, __ATOMIC_ACQ_REL);
    free(theirs);
    return sum;
}

static void *worker(void *arg)
{
    (void)arg;
    unsigned long sum = 0;
    for (;;) {
        long i = __atomic_fetch_add(&next_item, 1, __ATOMIC_RELAXED);
        if (i >= items)
            break;
        sum += work(i);
    }
    __atomic_fetch_add(&total, sum, __ATOMIC_RELAXED);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: atomic_claims THREADS ITEMS\n");
        return 2;
    }
    int threads = atoi(argv[1]);
    items = atol(argv[2]);
    if (threads < 1 || threads > 64 || items < 1) {
        fprintf(stderr, "atomic_claims: THREADS must be 1-64 and ITEMS positive\n");
        return 2;
    }
    pthread_t t[64];
    for (int k = 0; k < threads; k++)
        if (pthread_create(&t[k], NULL, worker, NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
    for (int k = 0; k < threads; k++)
        pthread_join(t[k], NULL);
    for (int s = 0; s < SLOTS; s++)
        free(slots[s]);
    printf("atomic_claims threads=%d items=%ld total=%lu\n", threads, items, total);
    return 0;
}
