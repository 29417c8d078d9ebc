/*
 * libditto - deterministic pthread synchronisation for programs running under ditto
 * (the thesis's "modified pthread library"; DESIGN.md §5; the hypercall ABI is ditto.h).
 *
 * Two ways in:
 *  - libditto.so, LD_PRELOAD'ed by the VMM into dynamic programs: the wrappers carry the
 *    real names and reach glibc through dlsym(RTLD_NEXT).
 *  - Static: compiled with -DDITTO_STATIC_WRAP and linked with -Wl,--wrap=NAME for each NAME
 *    in DITTO_FUNCS (build.rs reads the list from this file), because LD_PRELOAD cannot
 *    reach a static program.
 *
 * Modes, fixed once at start-up:
 *  - native: the hypercalls answer -ENOSYS; every wrapper passes straight through to glibc.
 *  - ditto: a det section is ditto_det_start() ... ditto_det_end(); the end goes through the
 *    thread's det-page slot (ditto.h), without an exit when no other thread waits.
 *  - emulate (DITTO_LIBDITTO_EMULATE=1, native only): a process-wide mutex stands in for the
 *    token. Nothing is deterministic then, but every det-mode path runs natively, so the
 *    protocol below can be tested for deadlocks and lost wake-ups without a VMM.
 *
 * Protocol. The one rule: a det section never blocks. While a thread holds the token no one
 * else can enter a section, so no one could release what it waits for. Whatever must wait
 * does so outside the token and comes back through a new section. Hence:
 *  - Every decision (who gets a mutex, which waiter a signal picks, who is the barrier's
 *    serial thread, who takes a semaphore unit) is made inside a section, so it follows the
 *    token order. Waiting outside the token decides only *when* a thread re-enters, which
 *    the VMM makes a logged event (DESIGN.md §5, "Blocking").
 *  - mutex/rwlock lock: loop { section { trylock } }. Each failed try costs the spinner one
 *    unit of logical time, so the holder soon holds the token and can unlock.
 *    unlock: section { unlock }.
 *  - cond: libditto owns the pthread_cond_t storage (struct dcond; all zeroes is an empty
 *    cond, as PTHREAD_COND_INITIALIZER is). wait: section { append self to the cond's FIFO;
 *    unlock the mutex } -- one section, so no signal can fall between the two; then
 *    futex-wait outside the token until marked woken; then re-lock with the lock loop.
 *    signal: section { pop the oldest waiter, mark it woken, bump seq }; broadcast pops all.
 *    Waiters sleep on the cond's seq word and re-check their own flag, because a woken
 *    waiter may return and free its on-stack node as soon as the section ends: the
 *    signaller must not touch the node after that. A timed-out waiter unlinks itself in a
 *    section unless already woken, so no signal is spent on a waiter that has gone.
 *  - barrier: libditto owns the storage. Arrivals are counted in sections, so the serial
 *    thread is the last arrival in token order; the others futex-wait on the generation.
 *  - semaphore: glibc's x86-64 layout is kept (u32 value, u32 waiter count) so sem_init,
 *    sem_getvalue and sem_open stay glibc's. wait: section { take a unit, or count self as a
 *    waiter }, then futex-wait on the value outside the token, and retry.
 *  - create: inside a section, so the new thread's deterministic id follows token order; the
 *    new thread first sets up its malloc arena in a section too (start_thread).
 *    join: section { tryjoin }; if the thread is still running, block in the real join
 *    outside the token and re-enter through an empty section.
 * Deadlock freedom: sections only run non-blocking code, and every futex wait is preceded
 * by a state change made under the token that the waker re-checks under the token (waiter
 * count, woken flag, generation), with the futex value check closing the remaining window.
 * Limits: a lock holder blocked in a syscall leaves spinners burning logical time (correct,
 * just busy); pthread objects must be used only through these wrappers (glibc-internal locks
 * are not affected); no pshared conds or barriers; no cancellation points.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <execinfo.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "ditto.h"

/* BEGIN DITTO_FUNCS (build.rs turns this list into -Wl,--wrap flags) */
#define DITTO_FUNCS(X)                                                                       \
    X(pthread_mutex_lock) X(pthread_mutex_trylock) X(pthread_mutex_timedlock)                \
    X(pthread_mutex_unlock) X(pthread_cond_init) X(pthread_cond_destroy)                     \
    X(pthread_cond_wait) X(pthread_cond_timedwait) X(pthread_cond_clockwait)                 \
    X(pthread_cond_signal) X(pthread_cond_broadcast) X(pthread_rwlock_rdlock)                \
    X(pthread_rwlock_wrlock) X(pthread_rwlock_tryrdlock) X(pthread_rwlock_trywrlock)         \
    X(pthread_rwlock_unlock) X(pthread_barrier_init) X(pthread_barrier_destroy)              \
    X(pthread_barrier_wait) X(sem_wait) X(sem_trywait) X(sem_timedwait) X(sem_post)          \
    X(pthread_create) X(pthread_join)
/* END DITTO_FUNCS */

#ifdef DITTO_STATIC_WRAP
#define DECLARE_REAL(f) extern __typeof__(f) __real_##f;
#define REAL(f) __real_##f
#define WRAPPER(f) __wrap_##f
#else
#include <dlfcn.h>
#define DECLARE_REAL(f) static __typeof__(f) *real_##f;
#define REAL(f) real_##f
#define WRAPPER(f) f
#endif
DITTO_FUNCS(DECLARE_REAL)

enum { MODE_NATIVE, MODE_DITTO, MODE_EMULATE };
static int mode = -1;
static pthread_mutex_t emulated_token = PTHREAD_MUTEX_INITIALIZER;

#ifndef DITTO_STATIC_WRAP
static void hints_init(void);
static void gomp_init(void);
#endif

static void init(void)
{
#ifndef DITTO_STATIC_WRAP
    /* Plain dlsym can hand back the pre-2.3.2 condvar ABI, which would corrupt conds. Only
     * the functions that had that old ABI are asked for by version: a failed lookup formats
     * an error message with malloc, and a malloc that locks through these wrappers (jemalloc
     * does, while the program starts) would re-enter init without end. */
#define LOOKUP(f)                                                                            \
    if (strncmp(#f, "pthread_cond_", 13) || !strcmp(#f, "pthread_cond_clockwait") ||          \
        !(real_##f = dlvsym(RTLD_NEXT, #f, "GLIBC_2.3.2")))                                   \
        real_##f = dlsym(RTLD_NEXT, #f);
    DITTO_FUNCS(LOOKUP)
#endif
    int m = ditto_present() ? MODE_DITTO : MODE_NATIVE;
    const char *e = getenv("DITTO_LIBDITTO_EMULATE");
    if (m == MODE_NATIVE && e && *e == '1')
        m = MODE_EMULATE;
    __atomic_store_n(&mode, m, __ATOMIC_RELEASE);
}

/* A constructor fixes the mode while there is one thread (so ditto_present's section is at
 * a deterministic point); det() initialises lazily for other libraries' constructors. */
__attribute__((constructor)) static void ctor(void)
{
    if (__atomic_load_n(&mode, __ATOMIC_ACQUIRE) < 0)
        init();
#ifndef DITTO_STATIC_WRAP
    /* glibc loads libgcc_s the first time any thread unwinds (pthread_exit, cancellation),
     * and which thread gets there first is a race outside every det section: its openat and
     * mmaps would be det points on one thread in one run and on another in the next, which
     * a follow-mode log cannot replay. backtrace() takes the same lazy path, so load it
     * now, while there is one thread. */
    if (mode == MODE_DITTO) {
        void *frame[1];
        backtrace(frame, 1);
        hints_init();
        gomp_init();
    }
#endif
}

static inline int det(void)
{
    if (__builtin_expect(__atomic_load_n(&mode, __ATOMIC_ACQUIRE) < 0, 0))
        init();
    return mode != MODE_NATIVE;
}

/* This thread's det-page slot (ditto.h), fetched before its first section: 0 means none
 * (natively, in a follow-mode pair, or beyond the page), and then every end is a
 * hypercall. */
static __thread __attribute__((tls_model("initial-exec"))) unsigned long *slot;
static __thread __attribute__((tls_model("initial-exec"))) int slot_asked;
/* Set once any thread's slot request answers -EOPNOTSUPP: the token policy has no logical
 * time (a follow-mode pair), so work hints have nothing to advance. */
static int no_logical_time;

static inline void ask_slot(void)
{
    if (__builtin_expect(!slot_asked, 0)) {
        slot_asked = 1;
        long r = ditto_syscall1(DITTO_SYS_DET_SLOT, 0);
        if (r == -EOPNOTSUPP)
            __atomic_store_n(&no_logical_time, 1, __ATOMIC_RELAXED);
        slot = r < 0 ? 0 : (unsigned long *)r;
    }
}

static inline void sec_start(void)
{
    if (mode == MODE_EMULATE) {
        REAL(pthread_mutex_lock)(&emulated_token);
        return;
    }
    ask_slot();
    ditto_det_start();
}

/* Without an exit when nobody waits for the token: the VMM folds the end in before its next
 * decision. */
static inline void sec_end(void)
{
    if (mode == MODE_EMULATE) REAL(pthread_mutex_unlock)(&emulated_token);
    else ditto_det_end_at(slot);
}

/* Between failed tries. Under ditto det_start itself waits for our turn; the emulated token
 * is a plain mutex, so give the lock holder the CPU. */
static inline void relax(void) { if (mode == MODE_EMULATE) sched_yield(); }

/* Wraps a call that cannot block in one section. */
#define SECTION_CALL(f, ...)                                                                 \
    do {                                                                                     \
        if (!det()) return REAL(f)(__VA_ARGS__);                                             \
        sec_start();                                                                         \
        __typeof__(REAL(f)(__VA_ARGS__)) r_ = REAL(f)(__VA_ARGS__);                          \
        sec_end();                                                                           \
        return r_;                                                                           \
    } while (0)

/* Waits while *w == val, until the absolute time abs on clk; returns 0 or an errno. */
static int futex_wait(uint32_t *w, uint32_t val, int private, clockid_t clk, const struct timespec *abs)
{
    int op = FUTEX_WAIT_BITSET | (private ? FUTEX_PRIVATE_FLAG : 0) |
             (clk == CLOCK_REALTIME ? FUTEX_CLOCK_REALTIME : 0);
    return syscall(SYS_futex, w, op, val, abs, NULL, FUTEX_BITSET_MATCH_ANY) < 0 ? errno : 0;
}

static void futex_wake(uint32_t *w, int n, int private)
{
    syscall(SYS_futex, w, FUTEX_WAKE | (private ? FUTEX_PRIVATE_FLAG : 0), n, NULL, NULL, 0);
}

static int bad_abstime(const struct timespec *a) { return a && (a->tv_nsec < 0 || a->tv_nsec >= 1000000000L); }

static int past(clockid_t clk, const struct timespec *a)
{
    struct timespec now;
    clock_gettime(clk, &now);
    return now.tv_sec > a->tv_sec || (now.tv_sec == a->tv_sec && now.tv_nsec >= a->tv_nsec);
}

static int my_tid(void) { return (int)syscall(SYS_gettid); }

/* ---- mutexes ---- */

static int lock_until(pthread_mutex_t *m, const struct timespec *abs)
{
    if (bad_abstime(abs))
        return EINVAL;
    for (;;) {
        sec_start();
        int r = REAL(pthread_mutex_trylock)(m);
        sec_end();
        if (r != EBUSY)
            return r;
        /* The real lock answers EDEADLK here; the trylock loop would spin forever. */
        if ((m->__data.__kind & 0x7f) == PTHREAD_MUTEX_ERRORCHECK && m->__data.__owner == my_tid())
            return EDEADLK;
        if (abs && past(CLOCK_REALTIME, abs))
            return ETIMEDOUT;
        relax();
    }
}

int WRAPPER(pthread_mutex_lock)(pthread_mutex_t *m)
{
    return det() ? lock_until(m, NULL) : REAL(pthread_mutex_lock)(m);
}

int WRAPPER(pthread_mutex_timedlock)(pthread_mutex_t *m, const struct timespec *abs)
{
    return det() ? lock_until(m, abs) : REAL(pthread_mutex_timedlock)(m, abs);
}

int WRAPPER(pthread_mutex_trylock)(pthread_mutex_t *m) { SECTION_CALL(pthread_mutex_trylock, m); }
int WRAPPER(pthread_mutex_unlock)(pthread_mutex_t *m) { SECTION_CALL(pthread_mutex_unlock, m); }

/* ---- condition variables ---- */

struct waiter {
    struct waiter *next;
    uint32_t woken;
};
struct dcond {
    struct waiter *head, *tail; /* FIFO of waiters, changed only under the token */
    uint32_t seq;               /* futex word, bumped by every signal that wakes someone */
    int clock;                  /* CLOCK_REALTIME is 0, so a zeroed cond is a default one */
};
_Static_assert(sizeof(struct dcond) <= sizeof(pthread_cond_t), "dcond must fit");
#define DC(c) ((struct dcond *)(void *)(c))

int WRAPPER(pthread_cond_init)(pthread_cond_t *c, const pthread_condattr_t *a)
{
    if (!det())
        return REAL(pthread_cond_init)(c, a);
    clockid_t clk = CLOCK_REALTIME;
    if (a)
        pthread_condattr_getclock(a, &clk);
    memset(c, 0, sizeof *c);
    DC(c)->clock = clk;
    return 0;
}

int WRAPPER(pthread_cond_destroy)(pthread_cond_t *c)
{
    if (!det())
        return REAL(pthread_cond_destroy)(c);
    return __atomic_load_n(&DC(c)->head, __ATOMIC_ACQUIRE) ? EBUSY : 0;
}

static int cond_wait(pthread_cond_t *c, pthread_mutex_t *m, clockid_t clk, const struct timespec *abs)
{
    struct dcond *d = DC(c);
    struct waiter w = {NULL, 0};
    if (bad_abstime(abs))
        return EINVAL;
    sec_start();
    int r = REAL(pthread_mutex_unlock)(m);
    if (r == 0) {
        *(d->tail ? &d->tail->next : &d->head) = &w;
        d->tail = &w;
    }
    sec_end();
    if (r)
        return r;

    int rc = 0;
    for (;;) {
        /* seq is read between two flag checks: a signal that marks us after the first check
         * also bumps seq after that, so the futex wait cannot sleep through it. */
        if (__atomic_load_n(&w.woken, __ATOMIC_SEQ_CST))
            break;
        uint32_t s = __atomic_load_n(&d->seq, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&w.woken, __ATOMIC_SEQ_CST))
            break;
        if (futex_wait(&d->seq, s, 1, clk, abs) != ETIMEDOUT)
            continue;
        sec_start();
        if (!w.woken) {
            struct waiter **p = &d->head, *prev = NULL;
            while (*p != &w)
                prev = *p, p = &(*p)->next;
            *p = w.next;
            if (d->tail == &w)
                d->tail = prev;
            rc = ETIMEDOUT;
        } /* else a signal picked us before the timeout: take it, as POSIX allows */
        sec_end();
        break;
    }
    r = lock_until(m, NULL);
    return r ? r : rc;
}

int WRAPPER(pthread_cond_wait)(pthread_cond_t *c, pthread_mutex_t *m)
{
    return det() ? cond_wait(c, m, CLOCK_REALTIME, NULL) : REAL(pthread_cond_wait)(c, m);
}

int WRAPPER(pthread_cond_timedwait)(pthread_cond_t *c, pthread_mutex_t *m, const struct timespec *abs)
{
    return det() ? cond_wait(c, m, DC(c)->clock, abs) : REAL(pthread_cond_timedwait)(c, m, abs);
}

int WRAPPER(pthread_cond_clockwait)(pthread_cond_t *c, pthread_mutex_t *m, clockid_t clk,
                                    const struct timespec *abs)
{
    if (!det())
        return REAL(pthread_cond_clockwait)(c, m, clk, abs);
    if (clk != CLOCK_REALTIME && clk != CLOCK_MONOTONIC)
        return EINVAL;
    return cond_wait(c, m, clk, abs);
}

static int cond_wake(pthread_cond_t *c, int all)
{
    struct dcond *d = DC(c);
    int any = 0;
    sec_start();
    while (d->head && (all || !any)) {
        struct waiter *w = d->head;
        if (!(d->head = w->next))
            d->tail = NULL;
        __atomic_store_n(&w->woken, 1, __ATOMIC_SEQ_CST); /* w may be gone after the section */
        any = 1;
    }
    if (any)
        __atomic_fetch_add(&d->seq, 1, __ATOMIC_SEQ_CST);
    sec_end();
    if (any) /* all waiters wake and re-check their flags; only the marked ones leave */
        futex_wake(&d->seq, INT_MAX, 1);
    return 0;
}

int WRAPPER(pthread_cond_signal)(pthread_cond_t *c) { return det() ? cond_wake(c, 0) : REAL(pthread_cond_signal)(c); }
int WRAPPER(pthread_cond_broadcast)(pthread_cond_t *c) { return det() ? cond_wake(c, 1) : REAL(pthread_cond_broadcast)(c); }

/* ---- rwlocks ---- */

static int rw_loop(pthread_rwlock_t *l, int write)
{
    for (;;) {
        sec_start();
        int r = write ? REAL(pthread_rwlock_trywrlock)(l) : REAL(pthread_rwlock_tryrdlock)(l);
        sec_end();
        if (r != EBUSY)
            return r;
        if (l->__data.__cur_writer == my_tid())
            return EDEADLK; /* as the real lock answers when we hold it for writing */
        relax();
    }
}

int WRAPPER(pthread_rwlock_rdlock)(pthread_rwlock_t *l) { return det() ? rw_loop(l, 0) : REAL(pthread_rwlock_rdlock)(l); }
int WRAPPER(pthread_rwlock_wrlock)(pthread_rwlock_t *l) { return det() ? rw_loop(l, 1) : REAL(pthread_rwlock_wrlock)(l); }
int WRAPPER(pthread_rwlock_tryrdlock)(pthread_rwlock_t *l) { SECTION_CALL(pthread_rwlock_tryrdlock, l); }
int WRAPPER(pthread_rwlock_trywrlock)(pthread_rwlock_t *l) { SECTION_CALL(pthread_rwlock_trywrlock, l); }
int WRAPPER(pthread_rwlock_unlock)(pthread_rwlock_t *l) { SECTION_CALL(pthread_rwlock_unlock, l); }

/* ---- barriers ---- */

struct dbarrier {
    uint32_t count, arrived, gen; /* gen is the futex word */
};
_Static_assert(sizeof(struct dbarrier) <= sizeof(pthread_barrier_t), "dbarrier must fit");
#define DB(b) ((struct dbarrier *)(void *)(b))

int WRAPPER(pthread_barrier_init)(pthread_barrier_t *b, const pthread_barrierattr_t *a, unsigned count)
{
    if (!det())
        return REAL(pthread_barrier_init)(b, a, count);
    if (count == 0)
        return EINVAL;
    memset(b, 0, sizeof *b);
    DB(b)->count = count;
    return 0;
}

int WRAPPER(pthread_barrier_destroy)(pthread_barrier_t *b) { return det() ? 0 : REAL(pthread_barrier_destroy)(b); }

int WRAPPER(pthread_barrier_wait)(pthread_barrier_t *b)
{
    if (!det())
        return REAL(pthread_barrier_wait)(b);
    struct dbarrier *d = DB(b);
    sec_start();
    uint32_t g = d->gen;
    int last = ++d->arrived == d->count;
    if (last) {
        d->arrived = 0;
        __atomic_store_n(&d->gen, g + 1, __ATOMIC_SEQ_CST);
    }
    sec_end();
    if (last) {
        futex_wake(&d->gen, INT_MAX, 1);
        return PTHREAD_BARRIER_SERIAL_THREAD;
    }
    while (__atomic_load_n(&d->gen, __ATOMIC_SEQ_CST) == g)
        futex_wait(&d->gen, g, 1, CLOCK_REALTIME, NULL);
    return 0;
}

/* ---- semaphores (glibc x86-64: u64 data = value | nwaiters << 32, then int private) ---- */

_Static_assert(sizeof(sem_t) >= 16, "glibc's x86-64 sem_t");
#define SEM_VAL(s) ((uint32_t *)(void *)(s))
#define SEM_NWAITERS(s) (SEM_VAL(s) + 1)

static int sem_take(sem_t *s)
{
    uint32_t v = __atomic_load_n(SEM_VAL(s), __ATOMIC_SEQ_CST);
    while (v > 0)
        if (__atomic_compare_exchange_n(SEM_VAL(s), &v, v - 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
            return 1;
    return 0;
}

static int sem_wait_until(sem_t *s, const struct timespec *abs)
{
    if (bad_abstime(abs)) {
        errno = EINVAL;
        return -1;
    }
    for (int waiting = 0;;) {
        sec_start();
        if (waiting)
            __atomic_fetch_sub(SEM_NWAITERS(s), 1, __ATOMIC_SEQ_CST);
        int got = sem_take(s);
        if ((waiting = !got)) /* counted before the futex's value check: sem_post will wake us */
            __atomic_fetch_add(SEM_NWAITERS(s), 1, __ATOMIC_SEQ_CST);
        sec_end();
        if (got)
            return 0;
        /* A shared futex is right for private and process-shared semaphores alike. */
        if (futex_wait(SEM_VAL(s), 0, 0, CLOCK_REALTIME, abs) == ETIMEDOUT) {
            sec_start();
            __atomic_fetch_sub(SEM_NWAITERS(s), 1, __ATOMIC_SEQ_CST);
            got = sem_take(s);
            sec_end();
            if (got)
                return 0;
            errno = ETIMEDOUT;
            return -1;
        }
    }
}

int WRAPPER(sem_wait)(sem_t *s) { return det() ? sem_wait_until(s, NULL) : REAL(sem_wait)(s); }
int WRAPPER(sem_timedwait)(sem_t *s, const struct timespec *abs) { return det() ? sem_wait_until(s, abs) : REAL(sem_timedwait)(s, abs); }

int WRAPPER(sem_trywait)(sem_t *s)
{
    if (!det())
        return REAL(sem_trywait)(s);
    sec_start();
    int got = sem_take(s);
    sec_end();
    if (!got)
        errno = EAGAIN;
    return got ? 0 : -1;
}

int WRAPPER(sem_post)(sem_t *s)
{
    if (!det())
        return REAL(sem_post)(s);
    int ok;
    sec_start();
    uint32_t v = __atomic_load_n(SEM_VAL(s), __ATOMIC_SEQ_CST);
    while ((ok = v < SEM_VALUE_MAX) &&
           !__atomic_compare_exchange_n(SEM_VAL(s), &v, v + 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
        ;
    uint32_t nw = __atomic_load_n(SEM_NWAITERS(s), __ATOMIC_SEQ_CST);
    sec_end();
    if (!ok) {
        errno = EOVERFLOW;
        return -1;
    }
    if (nw)
        futex_wake(SEM_VAL(s), 1, 0);
    return 0;
}

/* ---- threads ---- */

/* A new thread's first malloc makes glibc pick or create its arena: new_heap's mmap calls
 * depend on a hint another thread's new_heap left in a plain global, and reused_arena on
 * which arena locks are free at that instant. Left to timing, one replica's thread makes an
 * extra munmap, the heaps land elsewhere, and every address after that differs. So a thread
 * starts with one malloc/free inside a section, where arena set-up follows the token. */
struct start {
    void *(*fn)(void *);
    void *arg;
};

static void *start_thread(void *p)
{
    struct start s = *(struct start *)p;
    sec_start();
    free(p);
    free(malloc(1));
    sec_end();
    void *r = s.fn(s.arg);
    /* A det point right after the routine returns: what it wrote last (civetweb's master
     * sets its "stopped" flag as its very last act, which mg_stop polls every 10 ms) is then
     * followed at once by a turn, not by glibc's thread teardown, so a poller's next turn
     * falls on one side of the write in both replicas but in a window of microseconds. */
    sec_start();
    sec_end();
    return r;
}

int WRAPPER(pthread_create)(pthread_t *t, const pthread_attr_t *a, void *(*fn)(void *), void *arg)
{
    if (!det())
        return REAL(pthread_create)(t, a, fn, arg);
    struct start *s = malloc(sizeof *s);
    if (!s)
        return EAGAIN;
    s->fn = fn;
    s->arg = arg;
    sec_start();
    int r = REAL(pthread_create)(t, a, start_thread, s);
    sec_end();
    if (r)
        free(s);
    return r;
}

int WRAPPER(pthread_join)(pthread_t t, void **ret)
{
    if (!det())
        return REAL(pthread_join)(t, ret);
    sec_start();
    int r = pthread_tryjoin_np(t, ret);
    sec_end();
    if (r != EBUSY)
        return r;
    /* Still running: block outside the token, then re-enter through a section, so that
     * what the joiner does next is ordered after the joined thread's end like everything
     * else (a follow-mode log would otherwise have no turn between the real join's return
     * and the joiner's next plain write, such as civetweb's "stopped" flag). */
    r = REAL(pthread_join)(t, ret);
    sec_start();
    sec_end();
    return r;
}

/* ---- work hints ----
 *
 * Logical time moves only at det points, so a thread that computes for long between two of
 * them keeps a low time, and every other thread that reaches a det point meanwhile waits for
 * it: the computation is serialised (pbzip2 compressing a block; +80-110% under --det).
 * Kendo advances a thread's time with its retired-instruction count, which kvm_pvm cannot
 * give deterministically. A work hint is the next best thing for a compute kernel whose cost
 * is a deterministic function of its arguments: just before the kernel runs, the thread
 * ticks its logical time by an estimate of the work (HINT_BYTES_PER_TICK input bytes per
 * tick), so threads behind it go ahead while it computes. The tick is posted through the
 * det page, without an exit, when nobody waits for the token.
 *
 * The estimate need not be accurate, only deterministic: a hint too small serialises as
 * before, one too large makes the ticked thread wait at its next det point until the others
 * have caught up (or blocked). Only libbz2's entry points are hinted: BZ2_ names cannot
 * clash with a program's own symbols, and the call's input size is the work. Set
 * DITTO_WORK_HINTS=0 to turn hints off; they do nothing natively, in emulate mode and in
 * follow-mode pairs (no logical time there). The static variant has none (nothing to
 * interpose in a static program's libbz2). */
#ifndef DITTO_STATIC_WRAP
#include <link.h>

enum { HINT_BYTES_PER_TICK = 4096 };

/* The prefix of libbz2's bz_stream that a hint reads (bzlib.h). */
struct bz_stream_head {
    char *next_in;
    unsigned int avail_in;
};

typedef int bz_buff_compress_fn(char *, unsigned int *, char *, unsigned int, int, int, int);
typedef int bz_buff_decompress_fn(char *, unsigned int *, char *, unsigned int, int, int);
typedef int bz_compress_fn(struct bz_stream_head *, int);
typedef int bz_decompress_fn(struct bz_stream_head *);

static int hints_on;
static bz_buff_compress_fn *real_bz_buff_compress;
static bz_buff_decompress_fn *real_bz_buff_decompress;
static bz_compress_fn *real_bz_compress;
static bz_decompress_fn *real_bz_decompress;

static int find_libbz2(struct dl_phdr_info *info, size_t size, void *found)
{
    (void)size;
    if (info->dlpi_name && strstr(info->dlpi_name, "/libbz2.so"))
        *(int *)found = 1;
    return *(int *)found;
}

#define BZ_LOOKUP(var, name) __atomic_store_n(&var, dlsym(RTLD_NEXT, name), __ATOMIC_RELEASE)

/* At start-up, while there is one thread. A failed dlsym mallocs its error message, so
 * symbols are looked up only when libbz2 is loaded; a program that dlopens it later looks
 * them up at its first call (wrapper_real). */
static void hints_init(void)
{
    const char *e = getenv("DITTO_WORK_HINTS");
    hints_on = !(e && *e == '0');
    int found = 0;
    dl_iterate_phdr(find_libbz2, &found);
    if (!found)
        return;
    BZ_LOOKUP(real_bz_buff_compress, "BZ2_bzBuffToBuffCompress");
    BZ_LOOKUP(real_bz_buff_decompress, "BZ2_bzBuffToBuffDecompress");
    BZ_LOOKUP(real_bz_compress, "BZ2_bzCompress");
    BZ_LOOKUP(real_bz_decompress, "BZ2_bzDecompress");
}

/* The next definition of `name`, found once. */
static void *wrapper_real(void **var, const char *name)
{
    void *f = __atomic_load_n(var, __ATOMIC_ACQUIRE);
    if (!f) {
        f = dlsym(RTLD_NEXT, name);
        __atomic_store_n(var, f, __ATOMIC_RELEASE);
    }
    return f;
}

/* Inside a hinted kernel: libbz2 calls its own exported entry points through its PLT
 * (BZ2_bzBuffToBuffCompress calls BZ2_bzCompress), which must not count the work twice. */
static __thread __attribute__((tls_model("initial-exec"))) int in_kernel;

/* Ticks the caller's logical time for `bytes` of input to a compute kernel. */
static void work_hint(unsigned long bytes)
{
    unsigned long n = bytes / HINT_BYTES_PER_TICK;
    if (n == 0 || in_kernel || mode != MODE_DITTO || !hints_on ||
        __atomic_load_n(&no_logical_time, __ATOMIC_RELAXED))
        return;
    ask_slot();
    if (!__atomic_load_n(&no_logical_time, __ATOMIC_RELAXED))
        ditto_det_tick_at(slot, n);
}

/* libbz2's BZ_CONFIG_ERROR: what a call answers when there is no libbz2 to forward to. */
enum { BZ_NO_LIBRARY = -9 };

/* Forwards `call` to libbz2 through `real` (looked up as `name` if need be), after ticking
 * for `bytes` of input, with inner entry points marked as inside the kernel. */
#define HINTED(real, name, bytes, call)                                                      \
    do {                                                                                     \
        if (!wrapper_real((void **)&(real), (name)))                                         \
            return BZ_NO_LIBRARY;                                                            \
        work_hint(bytes);                                                                    \
        in_kernel++;                                                                         \
        int r_ = (call);                                                                     \
        in_kernel--;                                                                         \
        return r_;                                                                           \
    } while (0)

int BZ2_bzBuffToBuffCompress(char *dest, unsigned int *dest_len, char *source,
                             unsigned int source_len, int block_size_100k, int verbosity,
                             int work_factor)
{
    HINTED(real_bz_buff_compress, "BZ2_bzBuffToBuffCompress", source_len,
           real_bz_buff_compress(dest, dest_len, source, source_len, block_size_100k,
                                 verbosity, work_factor));
}

int BZ2_bzBuffToBuffDecompress(char *dest, unsigned int *dest_len, char *source,
                               unsigned int source_len, int small, int verbosity)
{
    HINTED(real_bz_buff_decompress, "BZ2_bzBuffToBuffDecompress", source_len,
           real_bz_buff_decompress(dest, dest_len, source, source_len, small, verbosity));
}

int BZ2_bzCompress(struct bz_stream_head *strm, int action)
{
    HINTED(real_bz_compress, "BZ2_bzCompress", strm ? strm->avail_in : 0,
           real_bz_compress(strm, action));
}

int BZ2_bzDecompress(struct bz_stream_head *strm)
{
    HINTED(real_bz_decompress, "BZ2_bzDecompress", strm ? strm->avail_in : 0,
           real_bz_decompress(strm));
}
#endif

/* ---- OpenMP: libgomp's decisions, ordered in a follow-mode pair ----
 *
 * libgomp decides with atomics, not through pthreads: which thread gets the next chunk of
 * a dynamic or guided loop (a fetch-and-add on the work share), which thread runs a
 * `single` or the next `section`, and who holds a `critical` (its own futex lock). No det
 * point sees those decisions, yet they decide how many det points each thread reaches: a
 * thread that claims fewer rows of a loop takes fewer turns in it. A follow-mode secondary
 * grants turns in the primary's order, thread by thread; when its threads split a loop
 * otherwise, one reaches the loop's barrier while its next logged turn is still due, and
 * the threads that would join it there wait for turns after that one (GraphicsMagick's
 * `gm convert` stalled so in 3 of 3 pairs: docs/pair.md, "follow").
 *
 * So in a follow-mode pair (no logical time: the slot request answers -EOPNOTSUPP) each
 * claim runs inside a det section: the primary logs the order of claims as turns and the
 * secondary's threads claim in that order, so each gets the primary's chunks. The calls
 * wrapped cannot block once every thread enters the construct through a section: the
 * first to arrive sets up the work share inside its section, so the others never wait
 * for it, and on x86-64 the claims themselves are lock-free. Ordered loops, copyprivate
 * singles and tasks are not wrapped (they block inside libgomp). A `critical` (and
 * GOMP_atomic_start's lock) becomes a libditto lock on the same storage, taken and
 * released in sections, so the order of its holders is logged too. Det mode keeps
 * libgomp's own behaviour; the static build has no wrappers (a static OpenMP program
 * links libgomp itself). */
#ifndef DITTO_STATIC_WRAP
#include <stdbool.h>

/* libgomp's soname: found in the program's own link map when it is loaded. */
#define LIBGOMP "libgomp.so.1"

static int gomp_loaded;

static int find_libgomp(struct dl_phdr_info *info, size_t size, void *found)
{
    (void)size;
    if (info->dlpi_name && strstr(info->dlpi_name, "/" LIBGOMP))
        *(int *)found = 1;
    return *(int *)found;
}

/* The real entry point `name`: RTLD_NEXT, or libgomp itself when it was loaded where
 * RTLD_NEXT does not look (a dlopen'ed library's local dependency). */
static void *gomp_real(void **var, const char *name)
{
    void *f = __atomic_load_n(var, __ATOMIC_ACQUIRE);
    if (f)
        return f;
    f = dlsym(RTLD_NEXT, name);
    if (!f) {
        void *h = dlopen(LIBGOMP, RTLD_LAZY | RTLD_NOLOAD);
        if (h)
            f = dlsym(h, name);
    }
    if (!f) {
        static const char msg[] = "libditto: no libgomp entry point to forward an OpenMP call to\n";
        (void)!write(2, msg, sizeof msg - 1);
        abort();
    }
    __atomic_store_n(var, f, __ATOMIC_RELEASE);
    return f;
}

/* Whether this call's decision must be ordered: in a follow-mode pair only. */
static int gomp_ordered(void)
{
    if (!det() || mode != MODE_DITTO)
        return 0;
    ask_slot();
    return __atomic_load_n(&no_logical_time, __ATOMIC_RELAXED);
}

/* X(return type, name, parameters, arguments) for each decision that runs in a section. */
#define GOMP_DECISIONS(X)                                                                    \
    X(bool, GOMP_loop_dynamic_start, (long s, long e, long i, long c, long *is, long *ie), (s, e, i, c, is, ie)) \
    X(bool, GOMP_loop_guided_start, (long s, long e, long i, long c, long *is, long *ie), (s, e, i, c, is, ie)) \
    X(bool, GOMP_loop_nonmonotonic_dynamic_start, (long s, long e, long i, long c, long *is, long *ie), (s, e, i, c, is, ie)) \
    X(bool, GOMP_loop_nonmonotonic_guided_start, (long s, long e, long i, long c, long *is, long *ie), (s, e, i, c, is, ie)) \
    X(bool, GOMP_loop_runtime_start, (long s, long e, long i, long *is, long *ie), (s, e, i, is, ie)) \
    X(bool, GOMP_loop_nonmonotonic_runtime_start, (long s, long e, long i, long *is, long *ie), (s, e, i, is, ie)) \
    X(bool, GOMP_loop_maybe_nonmonotonic_runtime_start, (long s, long e, long i, long *is, long *ie), (s, e, i, is, ie)) \
    X(bool, GOMP_loop_start, (long s, long e, long i, long k, long c, long *is, long *ie, uintptr_t *r, void **m), (s, e, i, k, c, is, ie, r, m)) \
    X(bool, GOMP_loop_dynamic_next, (long *is, long *ie), (is, ie))                          \
    X(bool, GOMP_loop_guided_next, (long *is, long *ie), (is, ie))                           \
    X(bool, GOMP_loop_runtime_next, (long *is, long *ie), (is, ie))                          \
    X(bool, GOMP_loop_nonmonotonic_dynamic_next, (long *is, long *ie), (is, ie))             \
    X(bool, GOMP_loop_nonmonotonic_guided_next, (long *is, long *ie), (is, ie))              \
    X(bool, GOMP_loop_nonmonotonic_runtime_next, (long *is, long *ie), (is, ie))             \
    X(bool, GOMP_loop_maybe_nonmonotonic_runtime_next, (long *is, long *ie), (is, ie))       \
    X(bool, GOMP_loop_ull_dynamic_start, (bool u, ull s, ull e, ull i, ull c, ull *is, ull *ie), (u, s, e, i, c, is, ie)) \
    X(bool, GOMP_loop_ull_guided_start, (bool u, ull s, ull e, ull i, ull c, ull *is, ull *ie), (u, s, e, i, c, is, ie)) \
    X(bool, GOMP_loop_ull_nonmonotonic_dynamic_start, (bool u, ull s, ull e, ull i, ull c, ull *is, ull *ie), (u, s, e, i, c, is, ie)) \
    X(bool, GOMP_loop_ull_nonmonotonic_guided_start, (bool u, ull s, ull e, ull i, ull c, ull *is, ull *ie), (u, s, e, i, c, is, ie)) \
    X(bool, GOMP_loop_ull_runtime_start, (bool u, ull s, ull e, ull i, ull *is, ull *ie), (u, s, e, i, is, ie)) \
    X(bool, GOMP_loop_ull_nonmonotonic_runtime_start, (bool u, ull s, ull e, ull i, ull *is, ull *ie), (u, s, e, i, is, ie)) \
    X(bool, GOMP_loop_ull_maybe_nonmonotonic_runtime_start, (bool u, ull s, ull e, ull i, ull *is, ull *ie), (u, s, e, i, is, ie)) \
    X(bool, GOMP_loop_ull_start, (bool u, ull s, ull e, ull i, long k, ull c, ull *is, ull *ie, uintptr_t *r, void **m), (u, s, e, i, k, c, is, ie, r, m)) \
    X(bool, GOMP_loop_ull_dynamic_next, (ull *is, ull *ie), (is, ie))                        \
    X(bool, GOMP_loop_ull_guided_next, (ull *is, ull *ie), (is, ie))                         \
    X(bool, GOMP_loop_ull_runtime_next, (ull *is, ull *ie), (is, ie))                        \
    X(bool, GOMP_loop_ull_nonmonotonic_dynamic_next, (ull *is, ull *ie), (is, ie))           \
    X(bool, GOMP_loop_ull_nonmonotonic_guided_next, (ull *is, ull *ie), (is, ie))            \
    X(bool, GOMP_loop_ull_nonmonotonic_runtime_next, (ull *is, ull *ie), (is, ie))           \
    X(bool, GOMP_loop_ull_maybe_nonmonotonic_runtime_next, (ull *is, ull *ie), (is, ie))     \
    X(unsigned, GOMP_sections_start, (unsigned n), (n))                                      \
    X(unsigned, GOMP_sections2_start, (unsigned n, uintptr_t *r, void **m), (n, r, m))       \
    X(unsigned, GOMP_sections_next, (void), ())                                              \
    X(bool, GOMP_single_start, (void), ())

typedef unsigned long long ull;

#define GOMP_REAL_VAR(ret, name, params, args) static void *real_##name;
GOMP_DECISIONS(GOMP_REAL_VAR)

#define GOMP_WRAPPER(ret, name, params, args)                                                \
    ret name params                                                                          \
    {                                                                                        \
        ret(*f_) params = (ret(*) params)gomp_real(&real_##name, #name);                     \
        if (!gomp_ordered())                                                                 \
            return f_ args;                                                                  \
        sec_start();                                                                         \
        ret r_ = f_ args;                                                                    \
        sec_end();                                                                           \
        return r_;                                                                           \
    }
GOMP_DECISIONS(GOMP_WRAPPER)

static void *real_GOMP_critical_start, *real_GOMP_critical_end, *real_GOMP_critical_name_start,
    *real_GOMP_critical_name_end, *real_GOMP_atomic_start, *real_GOMP_atomic_end;

/* At start-up, while there is one thread: a lookup later could take glibc's loader lock
 * around a det point (dlsym may allocate) from whichever thread calls first. */
static void gomp_init(void)
{
    dl_iterate_phdr(find_libgomp, &gomp_loaded);
    if (!gomp_loaded)
        return;
    /* An entry point this libgomp lacks stays unset: nothing can call it. */
#define GOMP_LOOKUP(ret, name, params, args) real_##name = dlsym(RTLD_NEXT, #name);
    GOMP_DECISIONS(GOMP_LOOKUP)
    real_GOMP_critical_start = dlsym(RTLD_NEXT, "GOMP_critical_start");
    real_GOMP_critical_end = dlsym(RTLD_NEXT, "GOMP_critical_end");
    real_GOMP_critical_name_start = dlsym(RTLD_NEXT, "GOMP_critical_name_start");
    real_GOMP_critical_name_end = dlsym(RTLD_NEXT, "GOMP_critical_name_end");
    real_GOMP_atomic_start = dlsym(RTLD_NEXT, "GOMP_atomic_start");
    real_GOMP_atomic_end = dlsym(RTLD_NEXT, "GOMP_atomic_end");
}

/* A critical's lock word in a follow pair: 0 free, 1 held, 2 held with sleepers. Changed
 * only inside sections, so every try's outcome follows the logged order; sleepers wait
 * outside the token and retry when the holder lets go. */
static void crit_lock(unsigned *w)
{
    for (;;) {
        sec_start();
        int got = *w == 0;
        __atomic_store_n(w, got ? 1u : 2u, __ATOMIC_RELAXED);
        sec_end();
        if (got)
            return;
        futex_wait(w, 2, 1, CLOCK_MONOTONIC, NULL);
    }
}

static void crit_unlock(unsigned *w)
{
    sec_start();
    unsigned was = *w;
    __atomic_store_n(w, 0u, __ATOMIC_RELAXED);
    sec_end();
    if (was == 2)
        futex_wake(w, INT_MAX, 1);
}

/* The unnamed critical and GOMP_atomic_start's lock, in follow pairs (libgomp's own are
 * private to it). */
static unsigned crit_unnamed, crit_atomic;

/* Named criticals: libgomp keeps the lock in the pointer-sized variable the compiler emits
 * for the name (its futex lock fits there on Linux); in a follow pair every use of it
 * comes through here, so the word is libditto's. */
void GOMP_critical_name_start(void **pptr)
{
    if (!gomp_ordered()) {
        ((void (*)(void **))gomp_real(&real_GOMP_critical_name_start, "GOMP_critical_name_start"))(pptr);
        return;
    }
    crit_lock((unsigned *)pptr);
}

void GOMP_critical_name_end(void **pptr)
{
    if (!gomp_ordered()) {
        ((void (*)(void **))gomp_real(&real_GOMP_critical_name_end, "GOMP_critical_name_end"))(pptr);
        return;
    }
    crit_unlock((unsigned *)pptr);
}

#define GOMP_LOCK_PAIR(start, end, word)                                                     \
    void start(void)                                                                         \
    {                                                                                        \
        if (!gomp_ordered()) {                                                               \
            ((void (*)(void))gomp_real(&real_##start, #start))();                            \
            return;                                                                          \
        }                                                                                    \
        crit_lock(&word);                                                                    \
    }                                                                                        \
    void end(void)                                                                           \
    {                                                                                        \
        if (!gomp_ordered()) {                                                               \
            ((void (*)(void))gomp_real(&real_##end, #end))();                                \
            return;                                                                          \
        }                                                                                    \
        crit_unlock(&word);                                                                  \
    }
GOMP_LOCK_PAIR(GOMP_critical_start, GOMP_critical_end, crit_unnamed)
GOMP_LOCK_PAIR(GOMP_atomic_start, GOMP_atomic_end, crit_atomic)
#endif
