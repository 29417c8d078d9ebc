/*
 * racey [T=4] [K=2000]: racey-style determinism probe. T threads each take one mutex K times
 * and fold (thread, iteration) into shared state; the unlocked work between acquisitions
 * varies per thread, so natively the acquisition order, and with it the signature, changes
 * from run to run. Under det execution it must not. Output: "signature=<16 hex digits>".
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t sig = 1;
static uint64_t arr[64];
static int K = 2000;

static void *worker(void *arg)
{
    uint64_t idx = (uint64_t)arg;
    uint64_t rng = idx * 0x9E3779B97F4A7C15ull + 1;
    volatile uint64_t sink = 0;
    for (int k = 0; k < K; k++) {
        pthread_mutex_lock(&mu);
        sig = sig * 31 + idx * 1000003 + (uint64_t)k;
        arr[sig % 64] ^= sig + idx;
        arr[(sig >> 6) % 64] += arr[sig % 64] >> 3;
        pthread_mutex_unlock(&mu);
        /* Private work of varying length, so threads collide at different points. */
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        for (uint64_t i = 0, n = (rng >> 33) % 512; i < n; i++)
            sink += i ^ idx;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int T = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2)
        K = atoi(argv[2]);
    if (T < 1 || T > 1024 || K < 0) {
        fprintf(stderr, "usage: racey [threads] [iterations]\n");
        return 2;
    }
    pthread_t t[T];
    for (int i = 0; i < T; i++)
        pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i);
    for (int i = 0; i < T; i++)
        pthread_join(t[i], NULL);
    uint64_t h = sig;
    for (int i = 0; i < 64; i++)
        h = (h ^ arr[i]) * 0x100000001B3ull;
    printf("signature=%016llx\n", (unsigned long long)h);
    return 0;
}
