/*
 * race_counter [T=4] [N=20000000]: a deliberate data race, for divergence tests. T threads
 * increment one shared counter N times each with no synchronization at all (a load, some
 * work, a store), so updates are lost whenever a thread is preempted inside that window.
 * Det execution cannot order accesses that make no det call, so two replicas of this
 * program lose different updates and print different totals: "counter=<n> of <T*N>".
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static volatile unsigned long counter;
static long N = 20000000;

static void *worker(void *arg)
{
    (void)arg;
    for (long i = 0; i < N; i++) {
        unsigned long c = counter;
        /* Widen the window between the load and the store. */
        for (volatile int k = 0; k < 4; k++)
            ;
        counter = c + 1;
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int T = argc > 1 ? atoi(argv[1]) : 4;
    if (argc > 2)
        N = atol(argv[2]);
    if (T < 1 || T > 64 || N < 1) {
        fprintf(stderr, "usage: race_counter [T 1..64] [N >= 1]\n");
        return 2;
    }
    pthread_t th[64];
    for (int t = 0; t < T; t++)
        pthread_create(&th[t], NULL, worker, NULL);
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    printf("counter=%lu of %lu\n", counter, (unsigned long)T * (unsigned long)N);
    return 0;
}
