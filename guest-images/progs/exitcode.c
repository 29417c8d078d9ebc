/*
 * exitcode N      exits with status N.
 * exitcode thread exits 7 through exit_group from a second thread while the main thread is
 *                 blocked in pthread_join, so the VMM must tear down a blocked vCPU.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void *exiter(void *arg)
{
    (void)arg;
    /* Give main time to block in join; the exit path must not rely on it, though. */
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
    syscall(SYS_exit_group, 7);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "thread") == 0) {
        pthread_t t;
        if (pthread_create(&t, NULL, exiter, NULL) != 0)
            return 100;
        pthread_join(t, NULL);
        return 101; /* unreachable unless exit_group failed to kill us */
    }
    exit(argc > 1 ? atoi(argv[1]) : 0);
}
