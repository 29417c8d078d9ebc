/*
 * Another thread flips getsockname's addrlen between 4 and 64 while the main thread
 * calls it with a 4-byte buffer 16 bytes below the top of guest memory (argv[1]: the
 * size given to ditto's --memory). 4 fits, 64 runs past the top, so the VMM must either
 * refuse the call (EFAULT) or let the host write at most the 4 bytes it checked. The 12
 * bytes above the buffer are a canary that an unbound AF_INET getsockname (16 bytes of
 * answer) overwrites only if the host was handed the length the other thread wrote
 * after the VMM's check. Guest-only: natively the top of memory is something else.
 * Output: "canary intact" or "canary overwritten after <n> calls", then "done".
 */
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static volatile socklen_t len = 4;
static volatile int stop;

static void *flip(void *arg)
{
    (void)arg;
    while (!stop) {
        len = 64;
        len = 4;
    }
    return NULL;
}

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    unsigned long top = strtoul(argv[1], NULL, 0);
    unsigned char *buf = (unsigned char *)(top - 16);
    unsigned char *canary = buf + 4;
    memset(canary, 0xa5, 12);
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    if (s < 0)
        return 3;
    pthread_t t;
    pthread_create(&t, NULL, flip, NULL);
    double end = now() + 3.0;
    long calls = 0, hit = -1;
    while (hit < 0 && calls < 5000000) {
        syscall(SYS_getsockname, s, buf, &len);
        calls++;
        for (int i = 0; i < 12; i++)
            if (canary[i] != 0xa5)
                hit = calls;
        if ((calls & 1023) == 0 && now() > end)
            break;
    }
    stop = 1;
    pthread_join(t, NULL);
    if (hit >= 0)
        printf("canary overwritten after %ld calls\n", hit);
    else
        printf("canary intact\n");
    printf("done\n");
    return 0;
}
