/*
 * outside_fds: opens one of each kind of descriptor that reaches outside a pair's program and
 * leaves them all open at exit: a TCP listener on 127.0.0.1 (port chosen by the kernel), a
 * client connected to it and the accepted connection, an AF_UNIX socketpair, a timerfd, an
 * epoll watching the accepted connection (EPOLLIN, data 42), and "held.txt" opened for
 * writing in the current directory. The client sends "ping" and the server reads it back,
 * by read(2) on the accepted connection.
 * Output: "got ping ready 1" (1: the epoll reported the connection readable before the
 * read), then exit 0; an ERROR line and exit 1 when a call fails.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

static int fail(const char *what)
{
    printf("ERROR %s\n", what);
    return 1;
}

int main(void)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) != 0 || listen(l, 4) != 0 ||
        getsockname(l, (struct sockaddr *)&a, &len) != 0)
        return fail("listen");
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, (struct sockaddr *)&a, sizeof a) != 0)
        return fail("connect");
    int s = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (s < 0)
        return fail("accept");
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0)
        return fail("socketpair");
    int t = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    if (t < 0)
        return fail("timerfd");
    int f = open("held.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (f < 0)
        return fail("open");
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 42};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, s, &ev) != 0)
        return fail("epoll");
    if (write(c, "ping", 4) != 4)
        return fail("write");
    struct epoll_event got;
    int ready = epoll_wait(ep, &got, 1, 5000);
    char buf[8] = {0};
    if (read(s, buf, 4) != 4)
        return fail("read");
    printf("got %s ready %d\n", buf, ready == 1 && got.data.u64 == 42);
    return 0;
}
