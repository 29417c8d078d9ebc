/*
 * privdrop: a daemon's start-up as root: bind 127.0.0.1:PORT, drop to nobody (65534) with
 * setgroups/setgid/setuid, check the result, then serve one request from a worker thread.
 * Usage: privdrop PORT. One line per check, "ok NAME" or "FAIL NAME: detail", then
 * "served: REQUEST" once the client's line is answered (connections that send nothing are
 * closed and the next one awaited, up to 8); the exit status is the number of
 * failures. Started as root (natively, or under ditto whose host user is root), the output
 * is the same everywhere.
 *
 * Checks: getresuid/getresgid are 65534 x3; getgroups is {65534}; /proc/self/status has
 * "Uid:\t65534\t65534\t65534\t65534" and the same Gid line; setuid(0) and setgroups are
 * EPERM afterwards (no way back); capget's effective and permitted sets are empty.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#define NOBODY 65534

static int failures;

static void check(int ok, const char *name, const char *detail)
{
    if (ok) {
        printf("ok %s\n", name);
    } else {
        printf("FAIL %s: %s\n", name, detail);
        failures++;
    }
}

static int status_has(const char *line)
{
    FILE *f = fopen("/proc/self/status", "r");
    char buf[256];
    int found = 0;
    if (!f)
        return 0;
    while (fgets(buf, sizeof buf, f))
        if (strcmp(buf, line) == 0)
            found = 1;
    fclose(f);
    return found;
}

static void *serve(void *arg)
{
    int ls = *(int *)arg, c = -1, tries;
    char req[128], reply[200];
    ssize_t n = 0;
    /* A client that only probes the port (connects, sends nothing) is not the request. */
    for (tries = 0; tries < 8 && n <= 0; tries++) {
        c = accept(ls, NULL, NULL);
        if (c < 0) {
            perror("accept");
            return (void *)1;
        }
        n = read(c, req, sizeof req - 1);
        if (n <= 0)
            close(c);
    }
    if (n <= 0)
        return (void *)1;
    req[n] = 0;
    req[strcspn(req, "\r\n")] = 0;
    snprintf(reply, sizeof reply, "hello %s from uid %d\n", req, (int)geteuid());
    if (write(c, reply, strlen(reply)) < 0)
        perror("write");
    close(c);
    printf("served: %s\n", req);
    return NULL;
}

int main(int argc, char **argv)
{
    struct sockaddr_in a = {.sin_family = AF_INET};
    gid_t groups[4] = {0}, nobody = NOBODY;
    uid_t r, e, s;
    gid_t gr, ge, gs;
    int ls, one = 1, n;
    char detail[128];
    pthread_t t;
    void *ret;
    struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct caps[2];

    if (argc != 2) {
        fprintf(stderr, "usage: privdrop PORT\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    check(geteuid() == 0, "starts-as-root", "euid is not 0");
    ls = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    a.sin_port = htons(atoi(argv[1]));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (ls < 0 || bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4) < 0) {
        perror("bind");
        return 2;
    }
    if (setgroups(1, &nobody) < 0) {
        fprintf(stderr, "failed to drop supplementary groups: %s\n", strerror(errno));
        return 2;
    }
    if (setgid(NOBODY) < 0 || setuid(NOBODY) < 0) {
        fprintf(stderr, "failed to drop to nobody: %s\n", strerror(errno));
        return 2;
    }
    getresuid(&r, &e, &s);
    snprintf(detail, sizeof detail, "%u %u %u", r, e, s);
    check(r == NOBODY && e == NOBODY && s == NOBODY, "getresuid", detail);
    getresgid(&gr, &ge, &gs);
    snprintf(detail, sizeof detail, "%u %u %u", gr, ge, gs);
    check(gr == NOBODY && ge == NOBODY && gs == NOBODY, "getresgid", detail);
    n = getgroups(4, groups);
    snprintf(detail, sizeof detail, "n=%d first=%u", n, groups[0]);
    check(n == 1 && groups[0] == NOBODY, "getgroups", detail);
    check(status_has("Uid:\t65534\t65534\t65534\t65534\n"), "status-uid", "no such line");
    check(status_has("Gid:\t65534\t65534\t65534\t65534\n"), "status-gid", "no such line");
    check(setuid(0) < 0 && errno == EPERM, "no-way-back", "setuid(0) was not EPERM");
    check(setgroups(0, NULL) < 0 && errno == EPERM, "no-setgroups", "setgroups not EPERM");
    memset(caps, 0xff, sizeof caps);
    n = (int)syscall(SYS_capget, &hdr, caps);
    snprintf(detail, sizeof detail, "rc=%d eff=%x prm=%x", n, caps[0].effective,
             caps[0].permitted);
    check(n == 0 && caps[0].effective == 0 && caps[0].permitted == 0 && caps[1].effective == 0,
          "capabilities-gone", detail);
    printf("listening\n");
    if (pthread_create(&t, NULL, serve, &ls) != 0 || pthread_join(t, &ret) != 0 || ret)
        failures++;
    return failures;
}
