// POSIX timers through the raw syscalls (timer_create and friends; the kernel's timer_t is
// an int): periodic SIGEV_SIGNAL, SIGEV_THREAD_ID, TIMER_ABSTIME, the default sigevent,
// SIGEV_NONE with timer_gettime, overruns, and the errors Linux gives. It prints only
// facts that do not depend on the schedule, so its output natively and under ditto (run
// or pair) is the same.
//
// `ptimer exhaust` instead creates timers until one fails and prints how many it got and
// the errno (ditto's cap; natively RLIMIT_SIGPENDING decides).
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#ifndef SIGEV_THREAD_ID
#define SIGEV_THREAD_ID 4
#endif

struct ksigevent {
    union sigval value;
    int signo;
    int notify;
    int tid;
    int pad[11];
};

static long tcreate(clockid_t c, struct ksigevent *ev, int *id) {
    return syscall(SYS_timer_create, c, ev, id);
}
static long tset(int id, int flags, const struct itimerspec *n, struct itimerspec *o) {
    return syscall(SYS_timer_settime, id, flags, n, o);
}
static long tget(int id, struct itimerspec *c) { return syscall(SYS_timer_gettime, id, c); }
static long tover(int id) { return syscall(SYS_timer_getoverrun, id); }
static long tdel(int id) { return syscall(SYS_timer_delete, id); }

/// Prints what a call that must fail returned: "name: -1 EINVAL".
static void fails(const char *what, long r) {
    int e = errno;
    printf("%s: %ld %s\n", what, r, r == -1 ? strerrorname_np(e) : "(no error)");
}

static struct ksigevent sig_event(int signo) {
    struct ksigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.notify = SIGEV_SIGNAL;
    ev.signo = signo;
    return ev;
}

static struct itimerspec spec(long v_ns, long i_ns) {
    struct itimerspec s;
    s.it_value.tv_sec = v_ns / 1000000000;
    s.it_value.tv_nsec = v_ns % 1000000000;
    s.it_interval.tv_sec = i_ns / 1000000000;
    s.it_interval.tv_nsec = i_ns % 1000000000;
    return s;
}

static long ns(struct timespec t) { return t.tv_sec * 1000000000L + t.tv_nsec; }

static volatile sig_atomic_t counts[65];
static volatile int handled_by;
static volatile long overrun_seen = -1;
static int overrun_timer;

static void count(int sig) {
    counts[sig]++;
    if (sig == SIGUSR2)
        handled_by = (int)syscall(SYS_gettid);
    if (sig == SIGRTMIN + 1)
        overrun_seen = tover(overrun_timer);
}

static void on(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = count;
    sigaction(sig, &sa, NULL);
}

/// Waits with only `sig` unblocked until its handler ran `n` times in all.
static void wait_for(int sig, int n) {
    sigset_t m;
    sigfillset(&m);
    sigdelset(&m, sig);
    while (counts[sig] < n)
        sigsuspend(&m);
}

static void errors(void) {
    int id;
    struct ksigevent ev = sig_event(SIGUSR1);
    fails("bad clock", tcreate(99, &ev, &id));
    fails("clock with no timers (MONOTONIC_RAW)", tcreate(CLOCK_MONOTONIC_RAW, &ev, &id));
    fails("bad sigevent pointer", tcreate(CLOCK_MONOTONIC, (void *)8, &id));
    fails("bad id pointer", tcreate(CLOCK_MONOTONIC, &ev, (void *)8));
    ev.signo = 0;
    fails("signal 0", tcreate(CLOCK_MONOTONIC, &ev, &id));
    ev.signo = 65;
    fails("signal 65", tcreate(CLOCK_MONOTONIC, &ev, &id));
    ev.signo = SIGUSR1;
    ev.notify = 7;
    fails("sigev_notify 7", tcreate(CLOCK_MONOTONIC, &ev, &id));
    ev.notify = SIGEV_THREAD_ID;
    ev.tid = 999999;
    fails("SIGEV_THREAD_ID to no thread", tcreate(CLOCK_MONOTONIC, &ev, &id));

    struct ksigevent none = sig_event(0);
    none.notify = SIGEV_NONE;
    if (tcreate(CLOCK_MONOTONIC, &none, &id) != 0) {
        perror("timer_create");
        return;
    }
    printf("first timer id: %d\n", id);
    struct itimerspec s = spec(1000000, 0), cur;
    fails("settime with no value", tset(id, 0, NULL, NULL));
    s.it_value.tv_nsec = 1000000000;
    fails("settime tv_nsec 1e9", tset(id, 0, &s, NULL));
    s.it_value.tv_nsec = 0;
    s.it_value.tv_sec = -1;
    fails("settime negative", tset(id, 0, &s, NULL));
    fails("settime bad value pointer", tset(id, 0, (void *)8, NULL));
    fails("gettime bad pointer", tget(id, (void *)8));
    fails("settime unknown id", tset(id + 1000, 0, &s, NULL));
    printf("delete: %ld\n", tdel(id));
    fails("delete again", tdel(id));
    fails("gettime after delete", tget(id, &cur));
    fails("getoverrun after delete", tover(id));
    int next;
    tcreate(CLOCK_MONOTONIC, &none, &next);
    printf("next id after delete is %s\n", next == id + 1 ? "the following one" : "another");
    tdel(next);
    printf("CPU-time clock timer: %ld\n", tcreate(CLOCK_PROCESS_CPUTIME_ID, &none, &id));
    tdel(id);
}

static void periodic(void) {
    on(SIGUSR1);
    struct ksigevent ev = sig_event(SIGUSR1);
    int id;
    tcreate(CLOCK_MONOTONIC, &ev, &id);
    struct itimerspec s = spec(2000000, 2000000);
    tset(id, 0, &s, NULL);
    wait_for(SIGUSR1, 5);
    printf("periodic: %d expiries, delete %ld\n", (int)counts[SIGUSR1], tdel(id));
}

static volatile int target_tid;
// A barrier, not a spin on a flag: in a det pair a spin's length is timing, and each
// sched_yield is a det point, so the replicas' logical clocks would part.
static pthread_barrier_t target_ready;

static void *target_thread(void *arg) {
    (void)arg;
    target_tid = (int)syscall(SYS_gettid);
    pthread_barrier_wait(&target_ready);
    wait_for(SIGUSR2, 1);
    return NULL;
}

static void thread_id(void) {
    on(SIGUSR2);
    pthread_t t;
    pthread_barrier_init(&target_ready, NULL, 2);
    pthread_create(&t, NULL, target_thread, NULL);
    pthread_barrier_wait(&target_ready);
    struct ksigevent ev = sig_event(SIGUSR2);
    ev.notify = SIGEV_THREAD_ID;
    ev.tid = target_tid;
    int id;
    printf("SIGEV_THREAD_ID create: %ld\n", tcreate(CLOCK_MONOTONIC, &ev, &id));
    struct itimerspec s = spec(5000000, 0);
    tset(id, 0, &s, NULL);
    pthread_join(t, NULL);
    printf("SIGEV_THREAD_ID handled by the target thread: %s\n",
           handled_by == target_tid ? "yes" : "no");
    tdel(id);
}

static void abstime(void) {
    on(SIGALRM);
    int id;
    // No sigevent: SIGALRM to the process.
    tcreate(CLOCK_MONOTONIC, NULL, &id);
    struct timespec now, after;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long at = ns(now) + 20000000;
    struct itimerspec s = spec(at, 0);
    tset(id, TIMER_ABSTIME, &s, NULL);
    wait_for(SIGALRM, 1);
    clock_gettime(CLOCK_MONOTONIC, &after);
    printf("TIMER_ABSTIME: SIGALRM by default, not before the deadline: %s\n",
           ns(after) >= at ? "yes" : "no");
    // An absolute time already past expires at once.
    s = spec(ns(now) - 1000000, 0);
    tset(id, TIMER_ABSTIME, &s, NULL);
    wait_for(SIGALRM, 2);
    printf("TIMER_ABSTIME in the past fires: yes\n");
    tdel(id);
}

static void gettime(void) {
    struct ksigevent none = sig_event(0);
    none.notify = SIGEV_NONE;
    int id;
    tcreate(CLOCK_BOOTTIME, &none, &id);
    struct itimerspec s = spec(10000000000L, 3000000000L), a, b, old;
    tset(id, 0, &s, NULL);
    tget(id, &a);
    struct timespec pause = {0, 10000000};
    nanosleep(&pause, NULL);
    tget(id, &b);
    long la = ns(a.it_value), lb = ns(b.it_value);
    printf("gettime: remaining decreases: %s, interval %lds\n",
           la <= 10000000000L && lb < la && lb > 9000000000L ? "yes" : "no",
           (long)b.it_interval.tv_sec);
    struct itimerspec zero = spec(0, 0);
    tset(id, 0, &zero, &old);
    printf("settime old value: %s, old interval %lds\n",
           ns(old.it_value) <= lb && ns(old.it_value) > 9000000000L ? "yes" : "no",
           (long)old.it_interval.tv_sec);
    tdel(id);
    // (Linux shows a disarmed SIGEV_NONE timer's stale expiry; a signalling one reads 0.)
    struct ksigevent ev = sig_event(SIGUSR1);
    tcreate(CLOCK_REALTIME, &ev, &id);
    tset(id, 0, &s, NULL);
    tset(id, 0, &zero, NULL);
    tget(id, &a);
    printf("disarmed: %ld %ld\n", ns(a.it_value), ns(a.it_interval));
    tdel(id);
}

static void overrun(void) {
    int sig = SIGRTMIN + 1;
    on(sig);
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, sig);
    sigprocmask(SIG_BLOCK, &m, NULL);
    struct ksigevent ev = sig_event(sig);
    tcreate(CLOCK_MONOTONIC, &ev, &overrun_timer);
    struct itimerspec s = spec(1000000, 1000000);
    tset(overrun_timer, 0, &s, NULL);
    // Blocked for ~40 periods: one signal pending, the other expiries are overruns.
    struct timespec pause = {0, 40000000};
    nanosleep(&pause, NULL);
    printf("getoverrun before delivery: %ld\n", tover(overrun_timer));
    wait_for(sig, 1);
    printf("getoverrun in the handler counted the blocked expiries: %s\n",
           overrun_seen >= 10 ? "yes" : "no");
    tdel(overrun_timer);
}

static void sigwaitinfo_fields(void) {
    int sig = SIGRTMIN + 2, id;
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, sig);
    sigprocmask(SIG_BLOCK, &m, NULL);
    struct ksigevent ev = sig_event(sig);
    ev.value.sival_int = 4242;
    tcreate(CLOCK_MONOTONIC, &ev, &id);
    struct itimerspec s = spec(1000000, 0);
    tset(id, 0, &s, NULL);
    siginfo_t si;
    int got = sigwaitinfo(&m, &si);
    printf("sigwaitinfo: %s, si_code SI_TIMER %s, si_value %d, si_timerid is the id %s, "
           "si_overrun %d\n",
           got == sig ? "the timer's signal" : "another", si.si_code == SI_TIMER ? "yes" : "no",
           si.si_value.sival_int, si.si_timerid == id ? "yes" : "no", si.si_overrun);
    tdel(id);
}

static sem_t thread_fired;

static void on_expiry(union sigval v) {
    if (v.sival_int == 77)
        sem_post(&thread_fired);
}

/// glibc's SIGEV_THREAD: its helper thread waits for the signal with sigwaitinfo and runs
/// the function only for si_code SI_TIMER.
static void sigev_thread(void) {
    sem_init(&thread_fired, 0, 0);
    struct sigevent ev;
    memset(&ev, 0, sizeof ev);
    ev.sigev_notify = SIGEV_THREAD;
    ev.sigev_notify_function = on_expiry;
    ev.sigev_value.sival_int = 77;
    timer_t t;
    printf("SIGEV_THREAD create: %d\n", timer_create(CLOCK_MONOTONIC, &ev, &t));
    struct itimerspec s = spec(2000000, 0);
    timer_settime(t, 0, &s, NULL);
    sem_wait(&thread_fired);
    printf("SIGEV_THREAD function ran with its sigev_value: yes\n");
    timer_delete(t);
}

static void exhaust(void) {
    struct ksigevent none = sig_event(0);
    none.notify = SIGEV_NONE;
    int id, n = 0;
    while (n < 1000000 && tcreate(CLOCK_MONOTONIC, &none, &id) == 0)
        n++;
    printf("created %d, then %s\n", n, strerrorname_np(errno));
    long deleted = tdel(id - 1);
    long again = tcreate(CLOCK_MONOTONIC, &none, &id);
    printf("delete one: %ld, create again: %ld\n", deleted, again);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    // Every test signal is blocked but where a test waits for it.
    sigset_t all;
    sigemptyset(&all);
    sigaddset(&all, SIGUSR1);
    sigaddset(&all, SIGUSR2);
    sigaddset(&all, SIGALRM);
    sigprocmask(SIG_BLOCK, &all, NULL);
    if (argc > 1 && strcmp(argv[1], "exhaust") == 0) {
        exhaust();
        return 0;
    }
    errors();
    periodic();
    thread_id();
    abstime();
    gettime();
    overrun();
    sigwaitinfo_fields();
    sigev_thread();
    printf("done\n");
    return 0;
}
