/*
 * Timer values near the top of time_t. Linux saturates them; they must neither kill
 * a thread of the VMM nor stop other timers. argv[1] picks one case (all when absent):
 *   value:    setitimer(ITIMER_REAL) with it_value.tv_sec = LONG_MAX, then getitimer;
 *   interval: a 100 ms timer with a LONG_MAX interval must still fire once;
 *   wait:     rt_sigtimedwait with tv_sec = LONG_MAX returns the SIGALRM of a 100 ms timer.
 * Output: one line per case ("value: set=0 long=1", "interval: sig=14", "wait: sig=14"),
 * then "done". Identical natively.
 */
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int want(int argc, char **argv, const char *name)
{
    return argc < 2 || strcmp(argv[1], name) == 0;
}

static long timedwait(sigset_t *set, long sec)
{
    struct timespec ts = {sec, 0};
    /* Raw syscall: glibc would pass the timespec through unchanged anyway. */
    return syscall(SYS_rt_sigtimedwait, set, NULL, &ts, 8);
}

static void disarm(void)
{
    struct itimerval z;
    memset(&z, 0, sizeof z);
    setitimer(ITIMER_REAL, &z, NULL);
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGALRM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    if (want(argc, argv, "value")) {
        struct itimerval v = {{0, 0}, {LONG_MAX, 0}}, cur;
        int r = setitimer(ITIMER_REAL, &v, NULL);
        getitimer(ITIMER_REAL, &cur);
        printf("value: set=%d long=%d\n", r, cur.it_value.tv_sec > 1000000000L);
        disarm();
    }
    if (want(argc, argv, "interval")) {
        struct itimerval v = {{LONG_MAX, 0}, {0, 100000}};
        setitimer(ITIMER_REAL, &v, NULL);
        printf("interval: sig=%ld\n", timedwait(&set, 5));
        disarm();
    }
    if (want(argc, argv, "wait")) {
        struct itimerval v = {{0, 0}, {0, 100000}};
        setitimer(ITIMER_REAL, &v, NULL);
        printf("wait: sig=%ld\n", timedwait(&set, LONG_MAX));
        disarm();
    }
    printf("done\n");
    return 0;
}
