/*
 * pthread_test [N=4] [M=10000]: N worker threads exercise every primitive libditto wraps and
 * check the results; the output depends only on N and M. Lines, in order:
 *   counter=<N*M> expected=<N*M>        mutex (lock + trylock) protected counter
 *   tls ok | tls FAIL ...                __thread values are per thread and start initialised
 *   barrier serial=<R> expected=<R>      one PTHREAD_BARRIER_SERIAL_THREAD per round
 *   rwlock value=<v> expected=<v>        writers under wrlock, readers check consistency
 *   sem max_active_ok=1                  a semaphore of 2 never admits a third thread
 *   condvar items=<n> sum=<s> expected=<s>  bounded-buffer producer/consumer
 *   join ok                              pthread_join hands back each thread's value
 *   PASS | FAIL                          exit status 0 | 1
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ROUNDS 10
#define ITEMS 500
#define CAP 8

static int N = 4, M = 10000;
static int failed;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static long counter;

static __thread long tls_count;
static __thread int tls_id = -1;
static __thread char tls_buf[16] = "init";
static int tls_bad;

static pthread_barrier_t bar;
static int serial_count;

static pthread_rwlock_t rw = PTHREAD_RWLOCK_INITIALIZER;
static long rw_a, rw_b; /* always equal when seen under the read lock */
static int rw_bad;

static sem_t sem;
static int active, max_active;

static pthread_mutex_t qmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t not_full = PTHREAD_COND_INITIALIZER;
static pthread_cond_t not_empty; /* initialised with a CLOCK_MONOTONIC attr in main */
static long queue[CAP];
static int qhead, qlen;
static long consumed, consumed_sum;

static void put(long v)
{
    pthread_mutex_lock(&qmu);
    while (qlen == CAP)
        pthread_cond_wait(&not_full, &qmu);
    queue[(qhead + qlen++) % CAP] = v;
    pthread_cond_signal(&not_empty);
    pthread_mutex_unlock(&qmu);
}

static void *consumer(void *arg)
{
    long total = (long)arg;
    pthread_mutex_lock(&qmu);
    while (consumed < total) {
        while (qlen == 0) {
            struct timespec ts; /* far deadline: exercises the timed path, never fires */
            clock_gettime(CLOCK_MONOTONIC, &ts);
            ts.tv_sec += 3600;
            pthread_cond_timedwait(&not_empty, &qmu, &ts);
        }
        consumed_sum += queue[qhead];
        qhead = (qhead + 1) % CAP;
        qlen--;
        consumed++;
        pthread_cond_broadcast(&not_full);
    }
    pthread_mutex_unlock(&qmu);
    return NULL;
}

static void *worker(void *arg)
{
    int idx = (int)(long)arg;
    if (tls_id != -1 || tls_count != 0 || strcmp(tls_buf, "init") != 0)
        __atomic_store_n(&tls_bad, 1, __ATOMIC_SEQ_CST);
    tls_id = idx;
    snprintf(tls_buf, sizeof tls_buf, "t%d", idx);

    for (int i = 0; i < M; i++) {
        if (i % 7 == 0 && pthread_mutex_trylock(&mu) == 0) {
            counter++;
        } else {
            pthread_mutex_lock(&mu);
            counter++;
        }
        pthread_mutex_unlock(&mu);
        tls_count++;
    }

    for (int r = 0; r < ROUNDS; r++)
        if (pthread_barrier_wait(&bar) == PTHREAD_BARRIER_SERIAL_THREAD)
            __atomic_fetch_add(&serial_count, 1, __ATOMIC_SEQ_CST);

    for (int i = 0; i < M / 10; i++) {
        if (i % 10 == 0) {
            pthread_rwlock_wrlock(&rw);
            rw_a++;
            rw_b++;
        } else {
            pthread_rwlock_rdlock(&rw);
            if (rw_a != rw_b)
                rw_bad = 1;
        }
        pthread_rwlock_unlock(&rw);
    }

    for (int i = 0; i < M / 100; i++) {
        if (i % 2 == 0 || sem_trywait(&sem) != 0)
            sem_wait(&sem);
        int a = __atomic_add_fetch(&active, 1, __ATOMIC_SEQ_CST);
        int m = __atomic_load_n(&max_active, __ATOMIC_SEQ_CST);
        while (a > m && !__atomic_compare_exchange_n(&max_active, &m, a, 0, __ATOMIC_SEQ_CST,
                                                     __ATOMIC_SEQ_CST))
            ;
        __atomic_sub_fetch(&active, 1, __ATOMIC_SEQ_CST);
        sem_post(&sem);
    }

    for (int i = 0; i < ITEMS; i++)
        put((long)idx * 1000000 + i);

    if (tls_id != idx || tls_count != M || tls_buf[0] != 't' || atoi(tls_buf + 1) != idx)
        __atomic_store_n(&tls_bad, 1, __ATOMIC_SEQ_CST);
    return (void *)(long)(idx * 2 + 1);
}

static void check(int ok) { failed |= !ok; }

int main(int argc, char **argv)
{
    if (argc > 1)
        N = atoi(argv[1]);
    if (argc > 2)
        M = atoi(argv[2]);
    if (N < 1 || M < 100) {
        fprintf(stderr, "usage: pthread_test [threads>=1] [iterations>=100]\n");
        return 2;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&not_empty, &ca);
    pthread_barrier_init(&bar, NULL, N);
    sem_init(&sem, 0, 2);
    tls_id = 999;

    pthread_t c, t[N];
    pthread_create(&c, NULL, consumer, (void *)(long)(N * ITEMS));
    for (int i = 0; i < N; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)(long)i) != 0) {
            printf("create failed\nFAIL\n");
            return 1;
        }
    int join_ok = 1;
    for (int i = 0; i < N; i++) {
        void *ret;
        join_ok &= pthread_join(t[i], &ret) == 0 && ret == (void *)(long)(i * 2 + 1);
    }
    join_ok &= pthread_join(c, NULL) == 0;

    long expected = (long)N * M;
    printf("counter=%ld expected=%ld\n", counter, expected);
    check(counter == expected);
    check(!tls_bad && tls_id == 999 && tls_count == 0 && strcmp(tls_buf, "init") == 0);
    printf(failed ? "tls FAIL\n" : "tls ok\n");
    printf("barrier serial=%d expected=%d\n", serial_count, ROUNDS);
    check(serial_count == ROUNDS);
    long rw_expected = (long)N * ((M / 10 + 9) / 10);
    printf("rwlock value=%ld expected=%ld%s\n", rw_a, rw_expected, rw_bad ? " torn" : "");
    check(rw_a == rw_expected && !rw_bad);
    printf("sem max_active_ok=%d\n", max_active >= 1 && max_active <= 2);
    check(max_active >= 1 && max_active <= 2);
    long items = (long)N * ITEMS;
    long sum_expected = 0;
    for (long i = 0; i < N; i++)
        sum_expected += i * 1000000 * ITEMS + (long)ITEMS * (ITEMS - 1) / 2;
    printf("condvar items=%ld sum=%ld expected=%ld\n", consumed, consumed_sum, sum_expected);
    check(consumed == items && consumed_sum == sum_expected);
    printf(join_ok ? "join ok\n" : "join FAIL\n");
    check(join_ok);
    printf(failed ? "FAIL\n" : "PASS\n");
    return failed;
}
