/*
 * vdsotime - the clocks a program reads through the vDSO (docs/det.md, "Time without exits").
 *
 *   vdsotime loop N          N clock_gettime(CLOCK_MONOTONIC) calls; "loop ok" if none went back
 *   vdsotime threads T N     T threads, N calls each: every read is no earlier than any read
 *                            another thread published before it; "threads ok"
 *   vdsotime host K          K rounds, 300 ms apart: a file's mtime (the host kernel's clock)
 *                            lies between the REALTIME reads around the write, within 10 ms;
 *                            gettimeofday and time agree with clock_gettime; "host ok"
 *   vdsotime raw N           N rounds of vDSO read, raw `syscall` read, vDSO read (MONOTONIC and
 *                            REALTIME): each in order; "raw ok"
 *   vdsotime misc            the vDSO is in auxv and /proc/self/maps; clocks it does not serve
 *                            (CPU time, TAI), a bad clock id, clock_getres, getcpu: as natively
 *   vdsotime mixed N         N reads, clock_gettime (MONOTONIC, REALTIME, BOOTTIME) and
 *                            gettimeofday and time in turn: each clock never goes back; "mixed ok"
 *   vdsotime print N         N rounds: prints a REALTIME and a MONOTONIC clock_gettime and a
 *                            gettimeofday (values that differ from run to run), then "print ok"
 *   vdsotime tprint T        T threads, one after another: each reads REALTIME, prints it with
 *                            write(2) and exits at once; "tprint ok"
 *
 * Failures print "FAIL ..." and exit 1. Same output natively and under ditto.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef long long i64;

static i64 ns_of(struct timespec t) { return (i64)t.tv_sec * 1000000000LL + t.tv_nsec; }

static i64 now(clockid_t c)
{
    struct timespec t;
    if (clock_gettime(c, &t) != 0) {
        printf("FAIL clock_gettime(%d): errno %d\n", (int)c, errno);
        exit(1);
    }
    return ns_of(t);
}

/* clock_gettime as a static program with its own syscall stub makes it: never the vDSO. */
static i64 raw_now(clockid_t c)
{
    struct timespec t;
    long r;
    __asm__ volatile("syscall" : "=a"(r) : "a"(SYS_clock_gettime), "D"((long)c), "S"(&t)
                     : "rcx", "r11", "memory");
    if (r != 0) {
        printf("FAIL raw clock_gettime(%d) = %ld\n", (int)c, r);
        exit(1);
    }
    return ns_of(t);
}

static int loop(long n)
{
    i64 last = now(CLOCK_MONOTONIC);
    for (long i = 0; i < n; i++) {
        i64 t = now(CLOCK_MONOTONIC);
        if (t < last) {
            printf("FAIL loop: %lld after %lld\n", t, last);
            return 1;
        }
        last = t;
    }
    printf("loop ok\n");
    return 0;
}

static i64 published;
static long per_thread;
static int thread_failed;

static void *reader(void *arg)
{
    (void)arg;
    for (long i = 0; i < per_thread; i++) {
        i64 seen = __atomic_load_n(&published, __ATOMIC_ACQUIRE);
        i64 t = now(CLOCK_MONOTONIC);
        if (t < seen) {
            printf("FAIL threads: read %lld after another thread published %lld\n", t, seen);
            __atomic_store_n(&thread_failed, 1, __ATOMIC_RELAXED);
            return NULL;
        }
        i64 cur = seen;
        while (cur < t && !__atomic_compare_exchange_n(&published, &cur, t, 0, __ATOMIC_RELEASE,
                                                       __ATOMIC_ACQUIRE))
            ;
    }
    return NULL;
}

static int threads(int n, long each)
{
    pthread_t t[64];
    per_thread = each;
    if (n > 64)
        n = 64;
    for (int i = 0; i < n; i++)
        pthread_create(&t[i], NULL, reader, NULL);
    for (int i = 0; i < n; i++)
        pthread_join(t[i], NULL);
    if (thread_failed)
        return 1;
    printf("threads ok\n");
    return 0;
}

static int host(int rounds)
{
    const i64 slack = 10 * 1000000LL;
    char path[] = "/tmp/vdsotime-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        printf("FAIL mkstemp: errno %d\n", errno);
        return 1;
    }
    unlink(path);
    for (int r = 0; r < rounds; r++) {
        i64 before = now(CLOCK_REALTIME);
        if (write(fd, "x", 1) != 1) {
            printf("FAIL write: errno %d\n", errno);
            return 1;
        }
        struct stat st;
        fstat(fd, &st);
        i64 after = now(CLOCK_REALTIME);
        i64 m = ns_of(st.st_mtim);
        /* mtime is the host kernel's coarse clock: up to a tick behind its fine one. */
        if (m < before - slack || m > after + slack) {
            printf("FAIL host: mtime %lld outside [%lld, %lld] +- 10 ms\n", m, before, after);
            return 1;
        }
        struct timeval tv;
        gettimeofday(&tv, NULL);
        time_t secs = time(NULL);
        i64 tv_ns = (i64)tv.tv_sec * 1000000000LL + tv.tv_usec * 1000LL;
        i64 later = now(CLOCK_REALTIME);
        if (tv_ns < after - 1000 || tv_ns > later || secs < after / 1000000000LL ||
            secs > later / 1000000000LL) {
            printf("FAIL host: gettimeofday %lld / time %ld not between %lld and %lld\n", tv_ns,
                   (long)secs, after, later);
            return 1;
        }
        struct timespec pause = {0, 300 * 1000000L};
        nanosleep(&pause, NULL);
    }
    printf("host ok\n");
    return 0;
}

static int raw(long n)
{
    clockid_t clocks[] = {CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_BOOTTIME};
    for (long i = 0; i < n; i++) {
        clockid_t c = clocks[i % 3];
        i64 a = now(c), b = raw_now(c), d = now(c);
        if (!(a <= b && b <= d)) {
            printf("FAIL raw: clock %d: vDSO %lld, syscall %lld, vDSO %lld\n", (int)c, a, b, d);
            return 1;
        }
    }
    printf("raw ok\n");
    return 0;
}

static int misc(void)
{
    int fails = 0;
    unsigned long ehdr = getauxval(AT_SYSINFO_EHDR);
    char *maps = NULL;
    size_t cap = 0, len = 0;
    FILE *f = fopen("/proc/self/maps", "r");
    if (f) {
        char buf[4096];
        size_t got;
        while ((got = fread(buf, 1, sizeof buf, f)) > 0) {
            if (len + got + 1 > cap) {
                cap = (len + got + 1) * 2;
                maps = realloc(maps, cap);
            }
            memcpy(maps + len, buf, got);
            len += got;
        }
        fclose(f);
    }
    char want[64];
    snprintf(want, sizeof want, "%08lx-", ehdr);
    int has_vdso = maps && (maps[len] = 0, strstr(maps, want)) && strstr(maps, "[vdso]") &&
                   strstr(maps, "[vvar]");
    printf("vdso in auxv and maps: %s\n", ehdr && has_vdso ? "yes" : "no");
    fails += !(ehdr && has_vdso);
    free(maps);

    struct timespec t;
    printf("cputime: %d\n", clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t));
    printf("thread cputime: %d\n", clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t));
    printf("tai: %d\n", clock_gettime(CLOCK_TAI, &t));
    errno = 0;
    int r = clock_gettime((clockid_t)12345, &t);
    printf("bad clock: %d errno %d\n", r, errno);
    struct timespec res = {99, 99};
    r = clock_getres(CLOCK_MONOTONIC, &res);
    printf("getres monotonic: %d %s\n", r,
           res.tv_sec == 0 && res.tv_nsec > 0 && res.tv_nsec <= 10000000 ? "fine" : "odd");
    printf("getres null: %d\n", clock_getres(CLOCK_REALTIME, NULL));
    printf("getcpu: %s\n", sched_getcpu() >= 0 ? "ok" : "failed");
    printf("misc %s\n", fails ? "FAIL" : "ok");
    return fails != 0;
}

static int mixed(long n)
{
    i64 last[3] = {0, 0, 0}, last_time = 0;
    const clockid_t ids[3] = {CLOCK_MONOTONIC, CLOCK_REALTIME, CLOCK_BOOTTIME};
    for (long i = 0; i < n; i++) {
        int k = i % 5;
        i64 t;
        int c;
        if (k < 3) {
            c = k;
            t = now(ids[k]);
        } else if (k == 3) {
            struct timeval tv;
            gettimeofday(&tv, NULL);
            c = 1;
            t = (i64)tv.tv_sec * 1000000000LL + tv.tv_usec * 1000LL;
            /* gettimeofday truncates to microseconds: compare at that grain. */
            if (t < last[c] / 1000 * 1000) {
                printf("FAIL mixed: gettimeofday %lld after %lld\n", t, last[c]);
                return 1;
            }
            continue;
        } else {
            /* Natively time() reads the kernel's coarse clock, which may lag REALTIME by
             * a tick: only against itself. */
            t = time(NULL);
            if (t < last_time) {
                printf("FAIL mixed: time %lld after %lld\n", t, last_time);
                return 1;
            }
            last_time = t;
            continue;
        }
        if (t < last[c]) {
            printf("FAIL mixed: clock %d: %lld after %lld\n", (int)ids[c], t, last[c]);
            return 1;
        }
        last[c] = t;
    }
    printf("mixed ok\n");
    return 0;
}

static int print(long n)
{
    for (long i = 0; i < n; i++) {
        struct timeval tv;
        i64 r = now(CLOCK_REALTIME), m = now(CLOCK_MONOTONIC);
        gettimeofday(&tv, NULL);
        printf("%ld %lld %lld %ld.%06ld\n", i, r, m, (long)tv.tv_sec, (long)tv.tv_usec);
    }
    printf("print ok\n");
    return 0;
}

static void *tprinter(void *arg)
{
    char line[64];
    int len = snprintf(line, sizeof line, "thread %ld: %lld\n", (long)arg, now(CLOCK_REALTIME));
    if (write(1, line, len) != len)
        exit(1);
    return NULL;
}

static int tprint(int t)
{
    for (long i = 0; i < t; i++) {
        pthread_t th;
        if (pthread_create(&th, NULL, tprinter, (void *)i) != 0 || pthread_join(th, NULL) != 0) {
            printf("FAIL tprint: thread %ld\n", i);
            return 1;
        }
    }
    printf("tprint ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && !strcmp(argv[1], "mixed"))
        return mixed(atol(argv[2]));
    if (argc >= 3 && !strcmp(argv[1], "print"))
        return print(atol(argv[2]));
    if (argc >= 3 && !strcmp(argv[1], "tprint"))
        return tprint(atoi(argv[2]));
    if (argc >= 3 && !strcmp(argv[1], "loop"))
        return loop(atol(argv[2]));
    if (argc >= 4 && !strcmp(argv[1], "threads"))
        return threads(atoi(argv[2]), atol(argv[3]));
    if (argc >= 3 && !strcmp(argv[1], "host"))
        return host(atoi(argv[2]));
    if (argc >= 3 && !strcmp(argv[1], "raw"))
        return raw(atol(argv[2]));
    if (argc >= 2 && !strcmp(argv[1], "misc"))
        return misc();
    fprintf(stderr, "usage: vdsotime loop N | threads T N | host K | raw N | misc | mixed N | "
                    "print N | tprint T\n");
    return 2;
}
