/* omp_claims: OpenMP work sharing whose split between threads is decided by libgomp's own
 * atomics (dynamic and guided loops, sections, single, critical), with det points (pthread
 * mutex operations, which libditto orders) inside each piece of work, in the shape of
 * GraphicsMagick's row loops.
 *
 *   omp_claims THREADS ROUNDS
 *
 * Which thread runs which iteration is timing, so how many det points each thread reaches
 * is too, unless libditto orders the claims (follow-mode pairs). Work per iteration varies
 * with the iteration, so threads drift apart and claim in varying orders. Prints one line
 * of totals that do not depend on the split. */
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static long total, ticks, singles, sections;

/* A piece of work: compute for a while (longer for some iterations), then add to the
 * total under the mutex, `locks` times. */
static void work(long i, int locks)
{
    volatile unsigned long x = (unsigned long)i;
    for (long k = 0; k < 2000 + (i % 7) * 3000; k++)
        x = x * 6364136223846793005UL + 1442695040888963407UL;
    for (int l = 0; l < locks; l++) {
        pthread_mutex_lock(&m);
        total += i;
        pthread_mutex_unlock(&m);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: omp_claims THREADS ROUNDS\n");
        return 2;
    }
    int threads = atoi(argv[1]), rounds = atoi(argv[2]);
    omp_set_num_threads(threads);
    long rows = 96, done = 0;
    for (int r = 0; r < rounds; r++) {
#pragma omp parallel
        {
#pragma omp for schedule(dynamic, 1)
            for (long i = 0; i < rows; i++) {
                work(i, 1 + (int)(i % 3));
                /* GraphicsMagick's progress counter: a named critical around a det point. */
#pragma omp critical(omp_claims_progress)
                {
                    done++;
                    if (done % 16 == 0) {
                        pthread_mutex_lock(&m);
                        ticks++;
                        pthread_mutex_unlock(&m);
                    }
                }
            }
#pragma omp for schedule(guided)
            for (long i = 0; i < rows; i++)
                work(i, 1);
#pragma omp single
            {
                pthread_mutex_lock(&m);
                singles++;
                pthread_mutex_unlock(&m);
            }
#pragma omp sections
            {
#pragma omp section
                work(1, 2);
#pragma omp section
                work(2, 2);
#pragma omp section
                {
                    work(3, 2);
#pragma omp atomic
                    sections++;
                }
            }
        }
    }
    printf("total %ld ticks %ld singles %ld sections %ld\n", total, ticks, singles, sections);
    return 0;
}
