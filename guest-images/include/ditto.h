/*
 * ditto.h - the guest ABI for deterministic execution under ditto.
 *
 * This header is the single definition of the det hypercalls (DESIGN.md §5). The VMM's
 * syscall table and libditto both follow it; change the numbers here and nowhere else.
 *
 * The hypercalls are ordinary `syscall` instructions with numbers in a private range far
 * above any Linux syscall, so a program built against this header runs unchanged on a
 * normal kernel: there every call returns -ENOSYS and does nothing. Callers that must tell
 * the two cases apart use ditto_present().
 *
 * Semantics under ditto (Kendo-style weak determinism):
 *
 *  - Every thread has a logical time. Threads get deterministic ids in creation order
 *    (assigned under the token), never host or guest TIDs.
 *  - The *token holder* is the runnable thread with the minimal logical time; ties go to the
 *    smallest deterministic thread id. A thread blocked in a syscall is out of the
 *    competition until the VMM decides (and, across replicas, logs) where it re-enters.
 *  - ditto_det_start(): returns once the caller holds the token. From then until its
 *    ditto_det_end() no other thread is inside a det section, so code between the two is
 *    both ordered deterministically and mutually exclusive with every other det section.
 *    A det section must not block (no blocking syscalls, no waiting on other threads):
 *    nobody else can take the token until it ends.
 *  - ditto_det_end(): ends the section and adds 1 to the caller's logical time, which hands
 *    the token on.
 *  - ditto_det_tick(n): adds n to the caller's logical time without a section; programs
 *    use it to say "I did roughly n units of work" so long computations do not hold
 *    others back.
 *  - ditto_det_tick(0): elides the caller's next ditto_det_start() (synchronization
 *    skipping), for locks whose order cannot affect output, such as allocator locks.
 *
 * All calls return 0 on success and a negative errno on failure, like raw syscalls.
 */
#ifndef DITTO_H
#define DITTO_H

#if !defined(__x86_64__)
#error "ditto guests are x86-64 only"
#endif

/* Far above the Linux syscall table (and without the x32 bit), so natively it is -ENOSYS. */
#define DITTO_SYS_BASE 0x1D170
#define DITTO_SYS_DET_START (DITTO_SYS_BASE + 0)
#define DITTO_SYS_DET_END (DITTO_SYS_BASE + 1)
#define DITTO_SYS_DET_TICK (DITTO_SYS_BASE + 2)

/* Linux's ENOSYS on x86-64; spelled out so the header needs no libc. */
#define DITTO_ENOSYS 38

/* Raw syscall: glibc's syscall() would set errno, and the det calls sit on hot paths. */
static inline long ditto_syscall1(long nr, long a0)
{
    long ret;
    __asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a0) : "rcx", "r11", "memory");
    return ret;
}

static inline long ditto_det_start(void) { return ditto_syscall1(DITTO_SYS_DET_START, 0); }
static inline long ditto_det_end(void) { return ditto_syscall1(DITTO_SYS_DET_END, 0); }
static inline long ditto_det_tick(unsigned long n)
{
    return ditto_syscall1(DITTO_SYS_DET_TICK, (long)n);
}

/*
 * 1 when running under ditto, 0 natively. It costs one det section (so +1 logical time):
 * call it at a deterministic point, e.g. once at start-up, and cache the answer.
 */
static inline int ditto_present(void)
{
    if (ditto_det_start() == -DITTO_ENOSYS)
        return 0;
    ditto_det_end();
    return 1;
}

#endif /* DITTO_H */
