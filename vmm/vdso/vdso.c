/*
 * ditto's vDSO: clock_gettime, gettimeofday, time, clock_getres and getcpu for a program
 * under ditto, from the TSC and the parameter page the VMM keeps (guest-images/include/
 * ditto.h defines the page). Linked at 0 by vdso.lds into one PT_LOAD with no relocations;
 * the VMM maps it at DITTO_VDSO_ADDR and names it in AT_SYSINFO_EHDR.
 *
 * Every case it does not serve runs the real `syscall` and returns its result: glibc 2.34+
 * has no fallback of its own for clock_gettime.
 */
#include "ditto.h"

typedef unsigned long u64;
typedef long s64;

struct timespec_k { s64 tv_sec; s64 tv_nsec; };
struct timeval_k { s64 tv_sec; s64 tv_usec; };

/* The parameter page: a hidden symbol the linker script places one page before the image,
 * so the code reaches it PC-relative (no GOT, no relocation). */
extern const volatile u64 ditto_vvar[512] __attribute__((visibility("hidden")));

#define W(off) (ditto_vvar[(off) / 8])

/* How often a reader retries a changing page before it takes the syscall: a writer
 * descheduled inside its window must not make readers spin. */
#define MAX_TRIES 64

#define NR_gettimeofday 96
#define NR_time 201
#define NR_clock_gettime 228
#define NR_clock_getres 229
#define NR_getcpu 309

static inline long sys2(long nr, long a, long b)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b) : "rcx", "r11", "memory");
    return ret;
}

static inline long sys3(long nr, long a, long b, long c)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
    return ret;
}

static inline u64 rdtsc_ordered(void)
{
    unsigned lo, hi;
    /* The lfence after keeps the second SEQ load from passing the TSC read. */
    __asm__ volatile("lfence; rdtsc; lfence" : "=a"(lo), "=d"(hi) :: "memory");
    return ((u64)hi << 32) | lo;
}

/* The clock the page serves for `clk`: 0 none, 1 monotonic, 2 realtime, 3 boottime. */
static inline int kind_of(long clk)
{
    switch (clk) {
    case 0: /* CLOCK_REALTIME */
    case 5: /* CLOCK_REALTIME_COARSE */
        return 2;
    case 1: /* CLOCK_MONOTONIC */
    case 4: /* CLOCK_MONOTONIC_RAW: the VMM has no separate raw clock */
    case 6: /* CLOCK_MONOTONIC_COARSE */
        return 1;
    case 7: /* CLOCK_BOOTTIME */
        return 3;
    default:
        return 0;
    }
}

/* The time of clock kind `kind` in ns from the TSC, or -1 when the page says to take the
 * syscall (or stays busy). */
static s64 tsc_ns(int kind)
{
    for (int i = 0; i < MAX_TRIES; i++) {
        u64 seq = W(DITTO_VVAR_SEQ);
        __asm__ volatile("" ::: "memory");
        if (seq & 1) {
            __asm__ volatile("pause");
            continue;
        }
        if (W(DITTO_VVAR_MAGIC) != DITTO_VVAR_MAGIC_VALUE || W(DITTO_VVAR_MODE) != DITTO_TIME_LIVE)
            return -1;
        u64 base = W(DITTO_VVAR_TSC_BASE);
        u64 mult = W(DITTO_VVAR_MULT);
        u64 mono = W(DITTO_VVAR_MONO_BASE);
        u64 off = kind == 2 ? W(DITTO_VVAR_REAL_OFF) : kind == 3 ? W(DITTO_VVAR_BOOT_OFF) : 0;
        u64 tsc = rdtsc_ordered();
        __asm__ volatile("" ::: "memory");
        if (W(DITTO_VVAR_SEQ) != seq)
            continue;
        u64 delta = tsc > base ? tsc - base : 0;
        u64 ns = mono + (u64)(((unsigned __int128)delta * mult) >> DITTO_VVAR_SHIFT) + off;
        return (s64)(ns & 0x7fffffffffffffffUL);
    }
    return -1;
}

/* The calling thread's time ring (ditto.h), through its GS base. */
static inline volatile u64 *ring(void)
{
    u64 self;
    __asm__ volatile("mov %%gs:0, %0" : "=r"(self));
    return (volatile u64 *)self;
}

#define RING_MAX_NS ((1UL << DITTO_TRING_KIND_SHIFT) - 1)

/* RECORD: appends `ns` of clock kind `kind` to the thread's ring (the primary's VMM ships
 * it at the thread's next syscall) and returns the value as stored. */
static s64 record(int kind, s64 ns)
{
    volatile u64 *r = ring();
    u64 v = (u64)ns > RING_MAX_NS ? RING_MAX_NS : (u64)ns;
    u64 g = r[DITTO_TRING_GUEST / 8];
    if (g - __atomic_load_n(&r[DITTO_TRING_VMM / 8], __ATOMIC_ACQUIRE) >= DITTO_TRING_CAP)
        sys2(DITTO_SYS_TIME_FULL, 0, 0);
    r[DITTO_TRING_SLOTS / 8 + g % DITTO_TRING_CAP] = ((u64)kind << DITTO_TRING_KIND_SHIFT) | v;
    __atomic_store_n(&r[DITTO_TRING_GUEST / 8], g + 1, __ATOMIC_RELEASE);
    return (s64)v;
}

/* REPLAY: the primary's next value of this thread, which must be of clock kind `kind`; -1
 * when the secondary took over and the syscall gives the time from now on. */
static s64 replay(int kind)
{
    volatile u64 *r = ring();
    for (int i = 0; i < MAX_TRIES; i++) {
        u64 g = r[DITTO_TRING_GUEST / 8];
        if (g < __atomic_load_n(&r[DITTO_TRING_VMM / 8], __ATOMIC_ACQUIRE)) {
            u64 v = r[DITTO_TRING_SLOTS / 8 + g % DITTO_TRING_CAP];
            if ((int)(v >> DITTO_TRING_KIND_SHIFT) != kind)
                sys2(DITTO_SYS_TIME_MISMATCH, kind, (long)v);
            __atomic_store_n(&r[DITTO_TRING_GUEST / 8], g + 1, __ATOMIC_RELEASE);
            return (s64)(v & RING_MAX_NS);
        }
        if (sys2(DITTO_SYS_TIME_DRY, kind, 0) != 0)
            return -1;
    }
    return -1;
}

/* The time of clock kind `kind` in ns, or -1 when the page says to take the syscall. */
static s64 now_ns(int kind)
{
    if (W(DITTO_VVAR_MAGIC) == DITTO_VVAR_MAGIC_VALUE) {
        u64 ring_mode = W(DITTO_VVAR_RING);
        if (ring_mode == DITTO_RING_REPLAY)
            return replay(kind);
        if (ring_mode == DITTO_RING_RECORD) {
            /* The primary takes no syscall for time: the secondary would not make it. */
            s64 ns = tsc_ns(kind);
            if (ns < 0)
                ns = sys2(DITTO_SYS_TIME_NOW, kind, 0);
            return ns < 0 ? ns : record(kind, ns);
        }
    }
    return tsc_ns(kind);
}

int __vdso_clock_gettime(long clk, struct timespec_k *ts)
{
    int kind = kind_of(clk);
    s64 ns = kind ? now_ns(kind) : -1;
    if (ns < 0)
        return (int)sys2(NR_clock_gettime, clk, (long)ts);
    ts->tv_sec = ns / 1000000000;
    ts->tv_nsec = ns % 1000000000;
    return 0;
}

int __vdso_gettimeofday(struct timeval_k *tv, void *tz)
{
    /* The time zone is the kernel's (settimeofday's): the syscall has it. */
    s64 ns = tz ? -1 : now_ns(2);
    if (ns < 0)
        return (int)sys2(NR_gettimeofday, (long)tv, (long)tz);
    if (tv) {
        tv->tv_sec = ns / 1000000000;
        tv->tv_usec = (ns % 1000000000) / 1000;
    }
    return 0;
}

long __vdso_time(long *t)
{
    s64 ns = now_ns(2);
    if (ns < 0)
        return sys2(NR_time, (long)t, 0);
    long s = ns / 1000000000;
    if (t)
        *t = s;
    return s;
}

int __vdso_clock_getres(long clk, struct timespec_k *res)
{
    /* The served clocks count in nanoseconds, but only while the page is live. In a pair
     * with time rings, the syscall (recorded as before): a read here would be a value. */
    if (!kind_of(clk) || W(DITTO_VVAR_RING) != DITTO_RING_NONE || tsc_ns(1) < 0)
        return (int)sys2(NR_clock_getres, clk, (long)res);
    if (res) {
        res->tv_sec = 0;
        res->tv_nsec = 1;
    }
    return 0;
}

/* The CPU number a thread runs on is the VMM's to say (rdtscp and rdpid would give the
 * host's): always the syscall. */
long __vdso_getcpu(unsigned *cpu, unsigned *node, void *unused)
{
    return sys3(NR_getcpu, (long)cpu, (long)node, (long)unused);
}

int clock_gettime(long, struct timespec_k *) __attribute__((weak, alias("__vdso_clock_gettime")));
int gettimeofday(struct timeval_k *, void *) __attribute__((weak, alias("__vdso_gettimeofday")));
long time(long *) __attribute__((weak, alias("__vdso_time")));
int clock_getres(long, struct timespec_k *) __attribute__((weak, alias("__vdso_clock_getres")));
long getcpu(unsigned *, unsigned *, void *) __attribute__((weak, alias("__vdso_getcpu")));
