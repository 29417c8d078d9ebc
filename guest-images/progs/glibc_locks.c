/*
 * glibc_locks - N threads exercising glibc's internal locks under contention, for follow-mode
 * pairs (tests/follow_stall.rs): stdio's FILE lock (printf/fputs to one line-buffered stdout),
 * malloc's arena locks (blocks allocated by one thread and freed by another through a shared
 * ring guarded by a pthread mutex), and getaddrinfo("localhost") (its resolver locks and
 * files). Usage: glibc_locks THREADS ROUNDS. Output: per round, one line per thread
 * "t<i> r<j> sum=<checksum> ai=<ok|err>", then "done <threads> <rounds>" from main.
 * Each thread writes only its own lines, so every write's bytes are a function of the thread
 * (stdout is line-buffered: a line is written by the thread that printed it).
 */
#define _GNU_SOURCE
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define RING 64
static void *ring[RING];
static int ring_n;
static pthread_mutex_t ring_lock = PTHREAD_MUTEX_INITIALIZER;
static int rounds, with_ai;

static void *worker(void *arg)
{
    long id = (long)arg;
    unsigned x = 2463534242u + (unsigned)id;
    for (int r = 0; r < rounds; r++) {
        unsigned long sum = 0;
        for (int k = 0; k < 64; k++) {
            x ^= x << 13, x ^= x >> 17, x ^= x << 5;
            size_t len = 16 + x % 8192;
            unsigned char *p = malloc(len);
            if (!p)
                abort();
            memset(p, (int)(id + k), len);
            sum += p[len - 1] + len;
            /* Hand the block to whichever thread comes next: it frees it into our arena. */
            pthread_mutex_lock(&ring_lock);
            void *old = ring_n == RING ? ring[x % RING] : NULL;
            if (old)
                ring[x % RING] = p;
            else
                ring[ring_n++] = p;
            pthread_mutex_unlock(&ring_lock);
            free(old);
        }
        struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *ai = NULL;
        int e = with_ai ? getaddrinfo("localhost", "80", &hints, &ai) : 0;
        if (!e && ai)
            freeaddrinfo(ai);
        printf("t%ld r%d ", id, r);
        fputs(e ? "ai=err" : "ai=ok", stdout);
        printf(" sum=%lu\n", sum);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 4;
    rounds = argc > 2 ? atoi(argv[2]) : 20;
    with_ai = argc > 3 && strcmp(argv[3], "ai") == 0;
    if (n < 1 || n > 64 || rounds < 1)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t t[64];
    for (long i = 0; i < n; i++)
        if (pthread_create(&t[i], NULL, worker, (void *)i))
            return 1;
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < RING; i++)
        free(ring[i]);
    printf("done %d %d\n", n, rounds);
    return 0;
}
