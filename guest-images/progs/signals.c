/* Signal delivery in ditto: handlers (with siginfo and ucontext), sigreturn back into
 * the interrupted code, alarm/pause, setitimer, sigwait in a thread, and a handler that
 * interrupts a thread busy in a compute loop (no syscalls: the VMM must kick the vCPU).
 * Prints one line per check and "PASS" at the end; exits 1 on the first failure. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

static volatile sig_atomic_t got_usr1, got_alrm, ticks, stop_spin;
static volatile int seen_signo;
static volatile long long seen_rsp_ok;

static void fail(const char *what) {
    printf("FAIL %s\n", what);
    fflush(stdout);
    exit(1);
}

static void on_usr1(int sig, siginfo_t *info, void *uc) {
    ucontext_t *u = uc;
    got_usr1++;
    seen_signo = info->si_signo;
    /* The saved context must hold a plausible user stack pointer. */
    seen_rsp_ok = u->uc_mcontext.gregs[REG_RSP] != 0;
    (void)sig;
}

static void on_alrm(int sig) {
    (void)sig;
    got_alrm++;
}

static void on_tick(int sig) {
    (void)sig;
    ticks++;
}

static void on_stop(int sig) {
    (void)sig;
    stop_spin = 1;
}

static void *spinner(void *arg) {
    (void)arg;
    unsigned long long n = 0;
    while (!stop_spin)
        n++; /* no syscalls: only a kick out of the guest can deliver the signal */
    return (void *)(unsigned long)(n > 0);
}

static void *waiter(void *arg) {
    sigset_t *set = arg;
    int sig = 0;
    if (sigwait(set, &sig) != 0)
        return (void *)0;
    return (void *)(long)sig;
}

int main(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGUSR1, &sa, NULL);

    /* 1. raise: the handler runs, then execution continues after raise(). */
    double before = 1.5;
    raise(SIGUSR1);
    if (got_usr1 != 1 || seen_signo != SIGUSR1 || !seen_rsp_ok || before != 1.5)
        fail("raise");
    printf("raise handler ran sig=%d\n", seen_signo);

    /* 2. alarm + pause: pause returns -1/EINTR after the handler. */
    signal(SIGALRM, on_alrm);
    alarm(1);
    int r = pause();
    if (r != -1 || got_alrm != 1)
        fail("alarm");
    printf("alarm interrupted pause\n");

    /* 3. setitimer: three 20 ms ticks. */
    signal(SIGALRM, on_tick);
    struct itimerval it = {{0, 20000}, {0, 20000}};
    setitimer(ITIMER_REAL, &it, NULL);
    while (ticks < 3)
        pause();
    memset(&it, 0, sizeof it);
    setitimer(ITIMER_REAL, &it, NULL);
    printf("itimer ticks>=3\n");

    /* 4. sigwait in a thread, signal sent with pthread_kill right after pthread_create:
     * the thread exists from clone's return, whether or not it has run yet, so the
     * signal is pending for it (ditto once lost it to ESRCH until the thread ran). */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    pthread_t w;
    pthread_create(&w, NULL, waiter, &set);
    if (pthread_kill(w, SIGUSR2) != 0)
        fail("pthread_kill");
    void *got;
    pthread_join(w, &got);
    if ((long)got != SIGUSR2)
        fail("sigwait");
    printf("sigwait got %ld\n", (long)got);

    /* 5. a handler interrupts a thread in a compute loop. */
    signal(SIGINT, on_stop);
    pthread_t s;
    pthread_create(&s, NULL, spinner, NULL);
    usleep(20000);
    pthread_kill(s, SIGINT);
    void *spun;
    pthread_join(s, &spun);
    if (!stop_spin || !spun)
        fail("kick");
    printf("handler stopped a compute loop\n");

    printf("PASS\n");
    return 0;
}
