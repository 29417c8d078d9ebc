/*
 * reserve: address space reserved far beyond the memory a program commits, as V8, the
 * JVM, Go and glibc's malloc arenas do. One case per run (argv[1]); each prints its
 * lines, the same natively (on a host with the default overcommit heuristic and at
 * least 512 MiB free) and under `ditto run --memory 512M`:
 *   reserve:  16 x 1 GiB PROT_NONE MAP_NORESERVE reservations, then 1 MiB of each made
 *             read-write (mprotect), written and read back;
 *             "reserve: 16 GiB reserved, 16 MiB committed, ok"
 *   arenas:   M_ARENA_MAX 64, then 40 threads alive at once, each doing malloc/free
 *             (each gets its own 64 MiB arena reservation); the arena count from
 *             malloc_info, and a check of every thread's blocks;
 *             "arenas: 40 threads, 41 arenas, ok"
 *   limit:    a 1 GiB read-write private mapping (over a 512 MiB limit, so only ditto
 *             refuses it; natively it succeeds), a 1 GiB PROT_NONE one (succeeds), and
 *             mprotect of all of it read-write; prints each result as ok or errno:
 *             "limit: rw=<r> none=ok protect=<r>"
 *   touch:    writes one byte into a PROT_NONE reservation without mprotect: natively
 *             SIGSEGV; under ditto the program is killed (docs/pair.md); prints
 *             "touch: before" first and nothing after.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define GIB (1UL << 30)
#define MIB (1UL << 20)
#define THREADS 40

static int reserve(void)
{
    char *r[16];
    for (int i = 0; i < 16; i++) {
        r[i] = mmap(NULL, GIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                    0);
        if (r[i] == MAP_FAILED) {
            printf("reserve: reservation %d failed: errno=%d\n", i, errno);
            return 1;
        }
    }
    for (int i = 0; i < 16; i++) {
        char *p = r[i] + (size_t)i * 61 * MIB;
        if (mprotect(p, MIB, PROT_READ | PROT_WRITE)) {
            printf("reserve: mprotect %d failed: errno=%d\n", i, errno);
            return 1;
        }
        for (size_t off = 0; off < MIB; off += 4096)
            p[off] = (char)(i + off / 4096);
    }
    for (int i = 0; i < 16; i++) {
        char *p = r[i] + (size_t)i * 61 * MIB;
        for (size_t off = 0; off < MIB; off += 4096)
            if (p[off] != (char)(i + off / 4096)) {
                printf("reserve: reservation %d lost a byte at %zu\n", i, off);
                return 1;
            }
    }
    printf("reserve: 16 GiB reserved, 16 MiB committed, ok\n");
    return 0;
}

static pthread_barrier_t all_alive;
static pthread_barrier_t all_checked;

static void *arena_user(void *arg)
{
    long id = (long)arg;
    char *blocks[64];
    for (int i = 0; i < 64; i++) {
        blocks[i] = malloc(1000 + i);
        if (!blocks[i])
            return (void *)1;
        memset(blocks[i], (int)id, 1000 + i);
    }
    /* Everyone allocates while everyone is alive: each thread needs its own arena. */
    pthread_barrier_wait(&all_alive);
    long bad = 0;
    for (int i = 0; i < 64; i++) {
        for (int j = 0; j < 1000 + i; j++)
            bad |= blocks[i][j] != (char)id;
        free(blocks[i]);
    }
    pthread_barrier_wait(&all_checked);
    return (void *)bad;
}

static int count_arenas(void)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f || malloc_info(0, f))
        return -1;
    fclose(f);
    int n = 0;
    for (char *p = text; (p = strstr(p, "<heap nr=")); p++)
        n++;
    free(text);
    return n;
}

static int arenas(void)
{
    mallopt(M_ARENA_MAX, 64);
    pthread_barrier_init(&all_alive, NULL, THREADS + 1);
    pthread_barrier_init(&all_checked, NULL, THREADS + 1);
    pthread_t t[THREADS];
    for (long i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, arena_user, (void *)(i + 1))) {
            printf("arenas: pthread_create failed\n");
            return 1;
        }
    pthread_barrier_wait(&all_alive);
    pthread_barrier_wait(&all_checked);
    int n = count_arenas();
    long bad = 0;
    for (int i = 0; i < THREADS; i++) {
        void *r;
        pthread_join(t[i], &r);
        bad |= (long)r;
    }
    printf("arenas: %d threads, %d arenas, %s\n", THREADS, n, bad ? "bad" : "ok");
    return bad != 0;
}

static void result(const char *what, int ok)
{
    if (ok)
        printf("%s=ok", what);
    else
        printf("%s=%d", what, errno);
}

static int limit(void)
{
    char *rw = mmap(NULL, GIB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    printf("limit: ");
    result("rw", rw != MAP_FAILED);
    if (rw != MAP_FAILED)
        munmap(rw, GIB);
    char *none = mmap(NULL, GIB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1,
                      0);
    printf(" ");
    result("none", none != MAP_FAILED);
    printf(" ");
    result("protect", none != MAP_FAILED && mprotect(none, GIB, PROT_READ | PROT_WRITE) == 0);
    printf("\n");
    return 0;
}

static int touch(void)
{
    volatile char *r = mmap(NULL, GIB, PROT_NONE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (r == MAP_FAILED) {
        printf("touch: reservation failed: errno=%d\n", errno);
        return 1;
    }
    printf("touch: before\n");
    fflush(stdout);
    r[GIB / 2] = 1;
    printf("touch: after, the write went through\n");
    return 1;
}

int main(int argc, char **argv)
{
    const char *what = argc > 1 ? argv[1] : "reserve";
    if (!strcmp(what, "reserve"))
        return reserve();
    if (!strcmp(what, "arenas"))
        return arenas();
    if (!strcmp(what, "limit"))
        return limit();
    if (!strcmp(what, "touch"))
        return touch();
    fprintf(stderr, "usage: reserve reserve|arenas|limit|touch\n");
    return 2;
}
