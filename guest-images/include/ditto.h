/*
 * ditto.h - the guest ABI for deterministic execution under ditto.
 *
 * This header is the single definition of the det hypercalls (DESIGN.md §5) and of the
 * vDSO's addresses and parameter page (at the end). The VMM's syscall table, its vDSO and
 * libditto all follow it; change the numbers here and nowhere else.
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
 *
 * The fast path (a det page). Each hypercall is a VM exit, several microseconds on hosts
 * without VMX/SVM. A det_end or det_tick(n > 0) that no other thread is waiting for needs
 * no decision from the VMM, so it can be posted in shared memory instead: the VMM applies
 * it before its next decision (every det_start, futex operation, blocking call, thread
 * exit...), so the token's holder is still computed by the VMM from the full truth.
 *
 *  - ditto_det_slot() (the DITTO_SYS_DET_SLOT hypercall) returns the guest address of the
 *    calling thread's slot in the det page, a 64-byte aligned DITTO_DET_SLOT_SIZE-byte
 *    record that only the VMM and that thread should touch. It is an implicit det point
 *    (the first call allocates the page, at a deterministic place in the address space).
 *    Errors: -ENOSYS natively or without --det; -EOPNOTSUPP when the token policy is not
 *    Kendo (the secondary of a follow-mode pair replays the primary's turns, which every
 *    section must report); -ENOSPC for threads beyond the page's slots. Callers without a
 *    slot use the plain hypercalls.
 *  - The slot's first u64 is its word: bits 0-1 a state, bits 2-63 pending ticks.
 *      IDLE (0)        outside a section, nobody sleeps waiting for the token: ticks may be
 *                      posted.
 *      IN_SECTION (1)  the VMM granted this thread's det_start, and nobody sleeps waiting for
 *                      the token (a lone waiter that still spins watches this word).
 *      ENDED (2)       set by the thread: its section is over (the VMM owes it +1 time).
 *      CALL (3)        the VMM must hear of it (someone sleeps waiting for the token,
 *                      several wait, or the section is one the VMM runs): make the real
 *                      hypercall.
 *    The thread may change the word only by compare-and-swap, and only as
 *    ditto_det_end_at() and ditto_det_tick_at() below do (IN_SECTION -> ENDED; add ticks
 *    in IDLE or ENDED). The VMM moves it between IDLE, IN_SECTION and CALL, and folds ENDED
 *    and the ticks into its own state (ENDED first: a thread cannot tick in a section).
 *    Anything else found there is ignored: a slot can only make its own thread's section
 *    end or its time grow, as the real hypercalls could, never give the token to two
 *    threads. The other 56 bytes are reserved.
 *  - A posted tick that overflows the logical time saturates it instead of failing.
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
#define DITTO_SYS_DET_SLOT (DITTO_SYS_BASE + 3)

/* The det page's slots (see above). */
#define DITTO_DET_SLOT_SIZE 64
#define DITTO_SLOT_IDLE 0
#define DITTO_SLOT_IN_SECTION 1
#define DITTO_SLOT_ENDED 2
#define DITTO_SLOT_CALL 3
#define DITTO_SLOT_STATE_MASK 3
#define DITTO_SLOT_TICK_SHIFT 2

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

/* The calling thread's slot, or 0 (then use the plain hypercalls). */
static inline unsigned long *ditto_det_slot(void)
{
    long r = ditto_syscall1(DITTO_SYS_DET_SLOT, 0);
    return r < 0 ? (unsigned long *)0 : (unsigned long *)r;
}

/* ditto_det_end() through the caller's slot (0: the plain hypercall). */
static inline long ditto_det_end_at(unsigned long *slot)
{
    if (slot) {
        unsigned long w = __atomic_load_n(slot, __ATOMIC_RELAXED);
        if ((w & DITTO_SLOT_STATE_MASK) == DITTO_SLOT_IN_SECTION &&
            __atomic_compare_exchange_n(slot, &w, (w & ~(unsigned long)DITTO_SLOT_STATE_MASK) |
                                                      DITTO_SLOT_ENDED,
                                        0, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
            return 0;
    }
    return ditto_det_end();
}

/* ditto_det_tick(n) through the caller's slot (0: the plain hypercall). */
static inline long ditto_det_tick_at(unsigned long *slot, unsigned long n)
{
    const unsigned long max = ~0UL >> DITTO_SLOT_TICK_SHIFT;
    if (slot && n > 0 && n <= max) {
        unsigned long w = __atomic_load_n(slot, __ATOMIC_RELAXED);
        for (;;) {
            unsigned long s = w & DITTO_SLOT_STATE_MASK;
            if ((s != DITTO_SLOT_IDLE && s != DITTO_SLOT_ENDED) ||
                (w >> DITTO_SLOT_TICK_SHIFT) > max - n)
                break;
            if (__atomic_compare_exchange_n(slot, &w, w + (n << DITTO_SLOT_TICK_SHIFT), 0,
                                            __ATOMIC_SEQ_CST, __ATOMIC_RELAXED))
                return 0;
        }
    }
    return ditto_det_tick(n);
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

/*
 * The vDSO and its parameter page (docs/det.md, "Time without exits").
 *
 * ditto gives every program a vDSO (AT_SYSINFO_EHDR) at DITTO_VDSO_ADDR, DITTO_VDSO_SIZE
 * bytes, user read+execute, and just before it the parameter page at DITTO_VVAR_ADDR, user
 * read-only. Both lie in the system area below the program's first byte, at the same
 * addresses in every run and in both replicas of a pair, where no mmap can reach them.
 * /proc/self/maps shows them as [vvar] and [vdso].
 *
 * The parameter page is written by the VMM alone and read by the vDSO (u64 words, offsets
 * in bytes):
 *   MAGIC      DITTO_VVAR_MAGIC_VALUE once the VMM has filled the page.
 *   SEQ        seqlock word: odd while the VMM rewrites the words below. A reader takes SEQ,
 *              the words and `lfence; rdtsc`, then SEQ again, and retries if SEQ was odd or
 *              changed (after a bounded number of tries it takes the syscall).
 *   MODE       SYSCALL (0): every call runs the real syscall (a pair without time rings;
 *              a host whose TSC cannot be trusted; before the VMM has calibrated). LIVE
 *              (1): the vDSO computes the time itself.
 *   TSC_BASE   the TSC at which MONO_BASE held.
 *   MULT       nanoseconds per TSC cycle << DITTO_VVAR_SHIFT.
 *   MONO_BASE  CLOCK_MONOTONIC in ns at TSC_BASE:
 *                monotonic = MONO_BASE + ((tsc - TSC_BASE) * MULT) >> DITTO_VVAR_SHIFT
 *              (128-bit product; tsc < TSC_BASE counts as TSC_BASE).
 *   REAL_OFF   CLOCK_REALTIME - CLOCK_MONOTONIC in ns (two's complement).
 *   BOOT_OFF   CLOCK_BOOTTIME - CLOCK_MONOTONIC in ns.
 *   RING       NONE (0), or a pair's time rings: RECORD (1, the primary) or REPLAY (2, the
 *              secondary), below. Written before the program starts; never changes.
 * The VMM's own clock_gettime/gettimeofday/time compute the same formula, so a value the
 * vDSO returned is never followed by an earlier one from a syscall.
 */
#define DITTO_VVAR_ADDR 0x1FC000
#define DITTO_VDSO_ADDR 0x1FD000
#define DITTO_VDSO_SIZE 0x3000
#define DITTO_VVAR_MAGIC 0
#define DITTO_VVAR_SEQ 8
#define DITTO_VVAR_MODE 16
#define DITTO_VVAR_TSC_BASE 24
#define DITTO_VVAR_MULT 32
#define DITTO_VVAR_MONO_BASE 40
#define DITTO_VVAR_REAL_OFF 48
#define DITTO_VVAR_BOOT_OFF 56
#define DITTO_VVAR_SHIFT 32
#define DITTO_VVAR_MAGIC_VALUE 0x4F5344564F544944
#define DITTO_TIME_SYSCALL 0
#define DITTO_TIME_LIVE 1
#define DITTO_VVAR_RING 64
#define DITTO_RING_NONE 0
#define DITTO_RING_RECORD 1
#define DITTO_RING_REPLAY 2

/*
 * A pair's time ring (docs/pair.md, "Time in a pair"). With RING RECORD (the primary) or
 * REPLAY (the secondary) every thread has a ring of time values in guest memory, user
 * read-write, at the address in its GS base (the VMM sets GS base per vCPU; the program
 * must not change it). u64 words, offsets in bytes from the ring's start:
 *   SELF   the ring's own address (the vDSO reads %gs:SELF to get a plain pointer).
 *   GUEST  values the vDSO has written (RECORD) or taken (REPLAY), ever.
 *   VMM    values the VMM has taken (RECORD) or written (REPLAY), ever.
 *   SLOTS  DITTO_TRING_CAP u64 slots; value number i lives in slot i % DITTO_TRING_CAP.
 * A value is (clock kind << DITTO_TRING_KIND_SHIFT) | ns: kind 1 MONOTONIC, 2 REALTIME,
 * 3 BOOTTIME (the clock's family; gettimeofday and time read REALTIME), ns below
 * 2^DITTO_TRING_KIND_SHIFT (a larger time is stored as the largest that fits).
 * RECORD: the vDSO computes the time (as in LIVE), writes the slot, then publishes GUEST (release); when
 * GUEST - VMM == CAP it first makes DITTO_SYS_TIME_FULL (the VMM takes the values), and
 * when the page cannot give a time (MODE SYSCALL) it makes DITTO_SYS_TIME_NOW(kind), which
 * returns the VMM's ns. The VMM takes the values at every syscall of the thread, before serving it.
 * REPLAY (the TSC is never read): the VMM writes the primary's values then publishes VMM; the vDSO takes the next
 * value when GUEST < VMM, checks its kind (a wrong one: DITTO_SYS_TIME_MISMATCH(kind,
 * value), a divergence), else makes DITTO_SYS_TIME_DRY(kind): 0 when the VMM refilled the
 * ring (take again), DITTO_TIME_DRY_LIVE when the secondary took over and holds no more of
 * the primary's values (take the real syscall from now on), or the thread stops.
 * None of these private calls counts as a syscall of the program: the replicas make
 * different numbers of them.
 */
#define DITTO_SYS_TIME_FULL (DITTO_SYS_BASE + 4)
#define DITTO_SYS_TIME_NOW (DITTO_SYS_BASE + 5)
#define DITTO_SYS_TIME_DRY (DITTO_SYS_BASE + 6)
#define DITTO_SYS_TIME_MISMATCH (DITTO_SYS_BASE + 7)
#define DITTO_TIME_DRY_LIVE 1
#define DITTO_TRING_SELF 0
#define DITTO_TRING_GUEST 8
#define DITTO_TRING_VMM 16
#define DITTO_TRING_SLOTS 64
#define DITTO_TRING_CAP 440
#define DITTO_TRING_SIZE 3584
#define DITTO_TRING_KIND_SHIFT 62

#endif /* DITTO_H */
