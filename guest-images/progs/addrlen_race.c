/*
 * recvfrom with a 4-byte address buffer 16 bytes below the top of the program's part of
 * guest memory (argv[1]: that top, or "stack": the main stack's end in /proc/self/maps,
 * which under ditto is that top, with the VMM's doorbell pages above). The call blocks; meanwhile another thread grows
 * the addrlen to 64 and then sends the datagram. Linux reads addrlen only after the
 * receive, so if the VMM hands the host the program's own length pointer, the host
 * writes the whole 16-byte sockaddr_in past the 4 bytes the VMM checked (64 would not
 * even fit below the top). The 12 bytes above the buffer are a canary. The VMM must use
 * the length it checked: 4 bytes written, addrlen answered 16 (truncated, as Linux says).
 * Guest-only: natively the top of memory is something else.
 * Then the same with accept. Output: "recvfrom=1 len=16", "canary intact" (or
 * "canary overwritten"), "accept=fd len=16", "canary intact", "done".
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

static struct sockaddr_in listen_at;

static void *grow_then_connect(void *arg)
{
    (void)arg;
    usleep(300000);
    len = 64;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    connect(c, (struct sockaddr *)&listen_at, sizeof listen_at);
    close(c);
    return NULL;
}

/* Whether the canary changed; re-arms it. */
static int check(unsigned char *canary)
{
    int hit = 0;
    for (int i = 0; i < 12; i++)
        hit |= canary[i] != 0xa5;
    memset(canary, 0xa5, 12);
    return hit;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    setvbuf(stdout, NULL, _IOLBF, 0);
    unsigned long top = strtoul(argv[1], NULL, 0);
    if (!strcmp(argv[1], "stack")) {
        char line[512];
        unsigned long lo;
        FILE *maps = fopen("/proc/self/maps", "r");
        while (maps && fgets(line, sizeof line, maps))
            if (strstr(line, "[stack]"))
                sscanf(line, "%lx-%lx", &lo, &top);
        if (maps)
            fclose(maps);
    }
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
    printf("canary %s\n", check(canary) ? "overwritten" : "intact");

    /* The same with accept, which also reads addrlen only once a peer has come. */
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    memset(&listen_at, 0, sizeof listen_at);
    listen_at.sin_family = AF_INET;
    listen_at.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    tl = sizeof listen_at;
    if (ls < 0 || bind(ls, (struct sockaddr *)&listen_at, sizeof listen_at) != 0 ||
        listen(ls, 1) != 0 || getsockname(ls, (struct sockaddr *)&listen_at, &tl) != 0)
        return 4;
    len = 4;
    pthread_create(&t, NULL, grow_then_connect, NULL);
    r = syscall(SYS_accept, ls, buf, &len);
    pthread_join(t, NULL);
    printf("accept=%s len=%u\n", r >= 0 ? "fd" : "error", (unsigned)len);
    printf("canary %s\n", check(canary) ? "overwritten" : "intact");
    printf("done\n");
    return 0;
}
