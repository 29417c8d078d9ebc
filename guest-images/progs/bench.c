/*
 * bench getpid N | clock N | rw N | compute N | memcpy MB | thread N: micro benchmarks for the
 * VMM's costs.
 * Each prints one line on stdout: "<name> <iterations> <total_ns> <ns_per_iter>", with
 * ns_per_iter to two decimals. Time is read once before and once after the loop, so the
 * measurement adds only two clock_gettime calls.
 *   getpid N   N raw getpid syscalls (one VM exit each under ditto)
 *   clock N    N clock_gettime(CLOCK_MONOTONIC) calls through glibc (the vDSO, natively and
 *              under ditto)
 *   rw N       N rounds of a 64-byte write into a pipe and a 64-byte read back out: 2N
 *              raw syscalls with a buffer each (iterations are the 2N calls)
 *   compute N  N iterations of an integer loop (no exits); its result goes to stderr
 *   memcpy MB  copies MB MiB, REPS times, after touching both buffers; iterations are the
 *              MiB copied in all, so ns_per_iter is ns per MiB
 *   thread N   N pthread create+join pairs, one after another
 *   sock N     N rounds, on a UDP socket, of fcntl F_GETFL, fcntl F_SETFL (the same flags)
 *              and a 16-byte sendto to 127.0.0.1 port 9 (discard): 3N raw syscalls
 *              (iterations are the 3N calls); none of them is a det point under --det
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define REPS 4

static long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *nothing(void *arg) { return arg; }

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench getpid|clock|rw|compute|memcpy|thread|sock N\n");
        return 2;
    }
    const char *what = argv[1];
    long n = atol(argv[2]), iters = n;
    long long t0, t1;
    if (strcmp(what, "getpid") == 0) {
        t0 = now_ns();
        for (long i = 0; i < n; i++)
            syscall(SYS_getpid);
        t1 = now_ns();
    } else if (strcmp(what, "clock") == 0) {
        struct timespec ts;
        long long sum = 0;
        t0 = now_ns();
        for (long i = 0; i < n; i++) {
            clock_gettime(CLOCK_MONOTONIC, &ts);
            sum += ts.tv_nsec;
        }
        t1 = now_ns();
        fprintf(stderr, "clock sum=%lld\n", sum);
    } else if (strcmp(what, "rw") == 0) {
        int p[2];
        char buf[64];
        memset(buf, 'x', sizeof buf);
        if (pipe(p) != 0) {
            fprintf(stderr, "rw: pipe failed\n");
            return 1;
        }
        t0 = now_ns();
        for (long i = 0; i < n; i++) {
            if (syscall(SYS_write, p[1], buf, sizeof buf) != sizeof buf ||
                syscall(SYS_read, p[0], buf, sizeof buf) != sizeof buf) {
                fprintf(stderr, "rw: short transfer at %ld\n", i);
                return 1;
            }
        }
        t1 = now_ns();
        iters = 2 * n;
    } else if (strcmp(what, "compute") == 0) {
        unsigned long x = 88172645463325252ul, acc = 0;
        t0 = now_ns();
        for (long i = 0; i < n; i++) { /* xorshift: cheap, and no closed form to fold */
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            acc += x;
        }
        t1 = now_ns();
        fprintf(stderr, "compute result=%lx\n", acc);
    } else if (strcmp(what, "memcpy") == 0) {
        size_t sz = (size_t)n << 20;
        char *a = malloc(sz), *b = malloc(sz);
        if (!a || !b) {
            fprintf(stderr, "memcpy: out of memory\n");
            return 1;
        }
        memset(a, 1, sz); /* first touch outside the timed part */
        memset(b, 2, sz);
        t0 = now_ns();
        for (int r = 0; r < REPS; r++) {
            memcpy(r & 1 ? a : b, r & 1 ? b : a, sz);
            __asm__ volatile("" ::"r"(a), "r"(b) : "memory");
        }
        t1 = now_ns();
        iters = n * REPS;
    } else if (strcmp(what, "thread") == 0) {
        t0 = now_ns();
        for (long i = 0; i < n; i++) {
            pthread_t t;
            if (pthread_create(&t, NULL, nothing, NULL) != 0 || pthread_join(t, NULL) != 0) {
                fprintf(stderr, "thread: create/join failed at %ld\n", i);
                return 1;
            }
        }
        t1 = now_ns();
    } else if (strcmp(what, "sock") == 0) {
        int fd = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9)};
        char buf[16] = "ditto";
        to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd < 0) {
            fprintf(stderr, "sock: socket failed\n");
            return 1;
        }
        t0 = now_ns();
        for (long i = 0; i < n; i++) {
            long fl = syscall(SYS_fcntl, fd, F_GETFL);
            /* A send to a closed port may fail (ECONNREFUSED after an ICMP reply): the
             * call is what is measured, not its result. */
            if (fl < 0 || syscall(SYS_fcntl, fd, F_SETFL, fl) != 0) {
                fprintf(stderr, "sock: fcntl failed at %ld\n", i);
                return 1;
            }
            syscall(SYS_sendto, fd, buf, sizeof buf, 0, (struct sockaddr *)&to, sizeof to);
        }
        t1 = now_ns();
        iters = 3 * n;
    } else {
        fprintf(stderr, "bench: unknown benchmark %s\n", what);
        return 2;
    }
    long long total = t1 - t0;
    printf("%s %ld %lld %.2f\n", what, iters, total, iters ? (double)total / iters : 0.0);
    return 0;
}
