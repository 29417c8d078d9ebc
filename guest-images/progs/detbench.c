/*
 * detbench pair N | handoff T N: the cost of det sections (ditto.h) under `ditto run --det`.
 * Prints one line like bench.c: "<name> <iterations> <total_ns> <ns_per_iter>".
 *   pair N       one thread, N det_start+det_end pairs (uncontended)
 *   handoff T N  T threads, N pairs each; every pair hands the token to another thread, so
 *                ns_per_iter is the cost of one contended hand-off (iterations = T*N)
 * Natively every call is -ENOSYS, so the numbers are the raw syscall cost.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ditto.h"

static long N = 10000;

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *pairs(void *arg)
{
    /* Ends go through the thread's det-page slot (no exit unless another thread waits). */
    unsigned long *slot = ditto_det_slot();
    for (long i = 0; i < N; i++) {
        ditto_det_start();
        ditto_det_end_at(slot);
    }
    return arg;
}

int main(int argc, char **argv)
{
    if (argc < 3 || (strcmp(argv[1], "pair") && strcmp(argv[1], "handoff"))) {
        fprintf(stderr, "usage: detbench pair N | handoff T N\n");
        return 2;
    }
    int handoff = !strcmp(argv[1], "handoff");
    int T = handoff ? atoi(argv[2]) : 1;
    N = atol(argv[handoff ? 3 : 2]);
    if (T < 1 || T > 64 || N < 1) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    pthread_t t[64];
    long long t0 = now_ns();
    if (handoff) {
        for (int i = 0; i < T; i++)
            pthread_create(&t[i], NULL, pairs, NULL);
        for (int i = 0; i < T; i++)
            pthread_join(t[i], NULL);
    } else {
        pairs(NULL);
    }
    long long dt = now_ns() - t0;
    long iters = T * N;
    printf("%s %ld %lld %.2f\n", argv[1], iters, dt, (double)dt / iters);
    return 0;
}
