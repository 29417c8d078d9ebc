/* Exercises the host-syscall families ditto's vCPU and doorbell threads make on a
 * program's behalf (files, /proc/self/fd reopen, pipes, sockets, epoll, timerfd,
 * eventfd, memfd, terminal ioctls, threads, itimer, signals), so a test can run it
 * under the seccomp filters and compare with a native run. Prints one line per
 * step and "done" at the end. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <netinet/in.h>
#include <termios.h>
#include <unistd.h>

static volatile sig_atomic_t alarms;
static void on_alarm(int s) { (void)s; alarms++; }

static void *worker(void *arg) {
    int *fds = arg;
    char c = 'w';
    if (write(fds[1], &c, 1) != 1) return (void *)1;
    return NULL;
}

#define CHECK(cond, what) do { if (!(cond)) { printf("FAIL %s errno=%d\n", what, errno); return 1; } printf("ok %s\n", what); } while (0)

int main(void) {
    char path[] = "/tmp/ditto-seccomp-probe-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0, "mkstemp");
    CHECK(write(fd, "hello", 5) == 5, "write");
    char buf[64] = {0};
    CHECK(pread(fd, buf, 5, 0) == 5 && memcmp(buf, "hello", 5) == 0, "pread");
    struct iovec iov = {buf, 5};
    CHECK(pwritev(fd, &iov, 1, 5) == 5, "pwritev");
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_size == 10, "fstat");
    CHECK(ftruncate(fd, 3) == 0, "ftruncate");
    CHECK(fsync(fd) == 0, "fsync");
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    int re = open(link, O_RDONLY);
    CHECK(re >= 0 && read(re, buf, sizeof buf) == 3, "reopen /proc/self/fd");
    close(re);
    int d = dup(fd);
    CHECK(d >= 0 && fcntl(d, F_GETFD) >= 0, "dup+fcntl");
    close(d);
    close(fd);
    CHECK(unlink(path) == 0, "unlink");
    CHECK(mkdir("/tmp/ditto-seccomp-probe-dir", 0700) == 0 || errno == EEXIST, "mkdir");
    CHECK(rmdir("/tmp/ditto-seccomp-probe-dir") == 0, "rmdir");

    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0, "pipe2");
    pthread_t t;
    CHECK(pthread_create(&t, NULL, worker, p) == 0, "pthread_create");
    struct pollfd pf = {p[0], POLLIN, 0};
    CHECK(poll(&pf, 1, 5000) == 1 && read(p[0], buf, 1) == 1, "poll+read");
    void *ret;
    CHECK(pthread_join(t, &ret) == 0 && ret == NULL, "pthread_join");

    int ep = epoll_create1(EPOLL_CLOEXEC);
    int ev = eventfd(0, EFD_CLOEXEC);
    struct epoll_event e = {.events = EPOLLIN, .data.fd = ev};
    CHECK(ep >= 0 && ev >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e) == 0, "epoll+eventfd");
    uint64_t one = 1;
    CHECK(write(ev, &one, 8) == 8 && epoll_wait(ep, &e, 1, 5000) == 1, "epoll_wait");
    int tf = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    struct itimerspec its = {.it_value = {0, 1000000}};
    CHECK(tf >= 0 && timerfd_settime(tf, 0, &its, NULL) == 0 && read(tf, &one, 8) == 8, "timerfd");
    int mf = memfd_create("probe", MFD_CLOEXEC);
    CHECK(mf >= 0 && ftruncate(mf, 4096) == 0, "memfd");
    char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mf, 0);
    CHECK(m != MAP_FAILED && (m[0] = 1) == 1 && munmap(m, 4096) == 0, "mmap memfd");

    int sv[2];
    CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
    CHECK(send(sv[0], "x", 1, 0) == 1 && recv(sv[1], buf, 1, 0) == 1, "send+recv");
    int n = 0;
    CHECK(ioctl(sv[1], FIONREAD, &n) == 0 && n == 0, "ioctl FIONREAD");
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    CHECK(ls >= 0 && bind(ls, (struct sockaddr *)&a, sizeof a) == 0 && listen(ls, 1) == 0 &&
              getsockname(ls, (struct sockaddr *)&a, &al) == 0, "tcp listen");
    int cs = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    CHECK(cs >= 0 && connect(cs, (struct sockaddr *)&a, sizeof a) == 0, "tcp connect");
    int as = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
    int one_i = 1;
    CHECK(as >= 0 && setsockopt(as, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one_i, sizeof one_i) == 0, "accept4+setsockopt");
    struct termios tio;
    CHECK(tcgetattr(sv[0], &tio) == -1 && errno == ENOTTY, "tcgetattr on a socket");

    signal(SIGALRM, on_alarm);
    struct itimerval itv = {.it_value = {0, 2000}};
    CHECK(setitimer(ITIMER_REAL, &itv, NULL) == 0, "setitimer");
    for (int i = 0; i < 5000 && !alarms; i++) usleep(1000);
    CHECK(alarms == 1, "SIGALRM");
    printf("done\n");
    return 0;
}
