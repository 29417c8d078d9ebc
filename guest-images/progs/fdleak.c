/*
 * Descriptor-creating calls with a full descriptor table. The program fills its table
 * with copies of fd 0 up to one free slot, then: pipe2 and socketpair 500 times each (each must
 * fail with EMFILE and leave the slot free), and a recvmsg carrying three descriptors
 * (Linux installs the one that fits, sets MSG_CTRUNC and closes the rest).
 * With argument "wait" it prints "ready1" before and "ready2" after, each time reading
 * a byte from stdin, so that a test can count the VMM's host descriptors in between.
 * Output: "pipe2: emfile=500 slot_kept=1", "socketpair: emfile=500 slot_kept=1",
 * "recvmsg: ret=1 ctrunc=1 nfds=1", "done". Identical natively.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

static int waiting;

static void checkpoint(const char *name)
{
    if (!waiting)
        return;
    char c;
    printf("%s\n", name);
    if (read(0, &c, 1) != 1)
        _exit(5);
}

/* Whether one descriptor can still be opened (and closes it again). */
static int slot_free(void)
{
    int fd = open("/dev/null", O_RDONLY);
    if (fd < 0)
        return 0;
    close(fd);
    return 1;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    waiting = argc > 1 && strcmp(argv[1], "wait") == 0;
    /* Natively keep the table small; ditto's table has its own fixed size. */
    struct rlimit rl = {256, 256};
    setrlimit(RLIMIT_NOFILE, &rl);

    int sv[2], p[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, sv) != 0 || pipe(p) != 0)
        return 1;
    union {
        struct cmsghdr c;
        char b[CMSG_SPACE(3 * sizeof(int))];
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
    c->cmsg_len = CMSG_LEN(3 * sizeof(int));
    int three[3] = {p[0], p[1], p[0]};
    memcpy(CMSG_DATA(c), three, sizeof three);
    if (sendmsg(sv[0], &m, 0) != 1)
        return 2;

    /* Every number above the lowest free one, by dup2 (which fails past the table's
     * end), so filling is linear in the table size. */
    int last = dup(0);
    if (last < 0)
        return 3;
    for (int i = last + 1; i < 1 << 20; i++) {
        if (dup2(0, i) != i)
            break;
        last = i;
    }
    close(last);
    checkpoint("ready1");

    int emfile = 0;
    for (int i = 0; i < 500; i++) {
        int q[2];
        if (pipe2(q, O_CLOEXEC) == 0) {
            close(q[0]);
            close(q[1]);
        } else if (errno == EMFILE) {
            emfile++;
        }
    }
    printf("pipe2: emfile=%d slot_kept=%d\n", emfile, slot_free());
    emfile = 0;
    for (int i = 0; i < 500; i++) {
        int q[2];
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, q) == 0) {
            close(q[0]);
            close(q[1]);
        } else if (errno == EMFILE) {
            emfile++;
        }
    }
    printf("socketpair: emfile=%d slot_kept=%d\n", emfile, slot_free());

    memset(&u, 0, sizeof u);
    m.msg_control = u.b;
    m.msg_controllen = sizeof u.b;
    m.msg_flags = 0;
    long r = recvmsg(sv[1], &m, 0);
    int nfds = 0;
    c = CMSG_FIRSTHDR(&m);
    if (r >= 0 && c && c->cmsg_type == SCM_RIGHTS)
        nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    printf("recvmsg: ret=%ld ctrunc=%d nfds=%d\n", r, (m.msg_flags & MSG_CTRUNC) != 0, nfds);
    checkpoint("ready2");
    printf("done\n");
    return 0;
}
