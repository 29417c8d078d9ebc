/*
 * recvfrom with a 4-byte address buffer 16 bytes below the top of guest memory (argv[1]:
 * the size given to ditto's --memory). The call blocks; meanwhile another thread grows
 * the addrlen to 64 and then sends the datagram. Linux reads addrlen only after the
 * receive, so if the VMM hands the host the program's own length pointer, the host
 * writes the whole 16-byte sockaddr_in past the 4 bytes the VMM checked (64 would not
 * even fit below the top). The 12 bytes above the buffer are a canary. The VMM must use
 * the length it checked: 4 bytes written, addrlen answered 16 (truncated, as Linux says).
 * Guest-only: natively the top of memory is something else.
 * Output: "recvfrom=1 len=16", then "canary intact" or "canary overwritten", "done".
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile socklen_t len = 4;
static struct sockaddr_in to;

static void *grow_then_send(void *arg)
{
    (void)arg;
    /* Long enough for the receiver to be blocked in the host kernel. */
    usleep(300000);
    len = 64;
    int c = socket(AF_INET, SOCK_DGRAM, 0);
    sendto(c, "x", 1, 0, (struct sockaddr *)&to, sizeof to);
    close(c);
    return NULL;
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
    memset(&to, 0, sizeof to);
    to.sin_family = AF_INET;
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t tl = sizeof to;
    if (s < 0 || bind(s, (struct sockaddr *)&to, sizeof to) != 0 ||
        getsockname(s, (struct sockaddr *)&to, &tl) != 0)
        return 3;
    pthread_t t;
    pthread_create(&t, NULL, grow_then_send, NULL);
    char byte;
    long r = syscall(SYS_recvfrom, s, &byte, 1, 0, buf, &len);
    pthread_join(t, NULL);
    printf("recvfrom=%ld len=%u\n", r, (unsigned)len);
    int hit = 0;
    for (int i = 0; i < 12; i++)
        hit |= canary[i] != 0xa5;
    printf("canary %s\n", hit ? "overwritten" : "intact");
    printf("done\n");
    return 0;
}
