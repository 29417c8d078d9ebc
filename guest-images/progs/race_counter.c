/*
 * race_counter [T=4] [N=20000000]: a deliberate data race, for divergence tests. T threads
 * increment one shared counter N times each with no synchronization (a load, some work, a
 * store), so updates are lost whenever a thread is preempted inside that window. Every 65536
 * increments each thread also takes and drops a mutex of its own (a det section under
 * libditto), so that threads keep running side by side under det execution instead of one
 * holding back the others. Det execution orders the sections, not the unsynchronized
 * accesses between them, so two replicas of this program lose different updates and print
 * different totals: "counter=<n> of <T*N>".
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static volatile unsigned long counter;
static long N = 20000000;

static pthread_mutex_t own[64];

static void *worker(void *arg)
{
    pthread_mutex_t *mine = &own[(long)arg];
    for (long i = 0; i < N; i++) {
        if ((i & 65535) == 0) {
            pthread_mutex_lock(mine);
            pthread_mutex_unlock(mine);
        }
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
    for (int t = 0; t < T; t++) {
        pthread_mutex_init(&own[t], NULL);
        pthread_create(&th[t], NULL, worker, (void *)(long)t);
    }
    for (int t = 0; t < T; t++)
        pthread_join(th[t], NULL);
    printf("counter=%lu of %lu\n", counter, (unsigned long)T * (unsigned long)N);
    return 0;
}
