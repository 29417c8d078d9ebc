/*
 * sendmsg with control messages whose cmsg_len is absurd: one that wraps the walk
 * back to the start of the buffer, and one larger than the buffer. Linux answers
 * EINVAL to both (CMSG_OK); the VMM must too, and must not loop. A well-formed
 * SCM_RIGHTS message then still passes a pipe's write end through a socketpair.
 * Output: "wrap: ret=-1 errno=22", "long: ret=-1 errno=22", "rights: ok", "done".
 * Identical natively.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

struct hdr {
    uint64_t len;
    int32_t level, type;
};

static void try_send(int s, const char *name, struct hdr *h, size_t n)
{
    char byte = 'x';
    struct iovec iov = {&byte, 1};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = h;
    m.msg_controllen = n * sizeof *h;
    long r = syscall(SYS_sendmsg, s, &m, 0);
    printf("%s: ret=%ld errno=%d\n", name, r, r < 0 ? errno : 0);
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    int sv[2], p[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0 || pipe(p) != 0)
        return 1;
    struct hdr wrap[2] = {{16, 0, 0}, {(uint64_t)-16, 0, 0}};
    try_send(sv[0], "wrap", wrap, 2);
    struct hdr lng[2] = {{16, 0, 0}, {1u << 20, 0, 0}};
    try_send(sv[0], "long", lng, 2);

    union {
        struct cmsghdr c;
        char b[CMSG_SPACE(sizeof(int))];
    } u;
    memset(&u, 0, sizeof u);
    char byte = 'r';
    struct iovec iov = {&byte, 1};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = u.b;
    m.msg_controllen = sizeof u.b;
    struct cmsghdr *c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &p[1], sizeof(int));
    if (sendmsg(sv[0], &m, 0) != 1)
        return 2;
    memset(&u, 0, sizeof u);
    m.msg_controllen = sizeof u.b;
    if (recvmsg(sv[1], &m, 0) != 1)
        return 3;
    c = CMSG_FIRSTHDR(&m);
    int got = -1;
    if (c && c->cmsg_type == SCM_RIGHTS)
        memcpy(&got, CMSG_DATA(c), sizeof(int));
    char out = 0;
    int ok = got >= 0 && write(got, "z", 1) == 1 && read(p[0], &out, 1) == 1 && out == 'z';
    printf("rights: %s\n", ok ? "ok" : "broken");
    printf("done\n");
    return 0;
}
