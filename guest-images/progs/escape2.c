/*
 * escape2 HOSTDIR: tries to leave the root ditto confines it to (`ditto run --root DIR`),
 * where HOSTDIR is the host path of DIR's parent, which holds DIR and "outside/" (a file
 * "secret" and a listening Unix socket "sock"). Ways tried: /proc/self/root, /proc/self/cwd
 * and /proc/self/fd/N links, O_PATH descriptors and openat(fd, ".."), a symlink that another
 * thread swaps while paths through it are resolved, Unix socket paths pointing outside, and
 * creating files above the root. One line per attempt:
 *   "NAME: ok HEX"     opened and read (the first up-to-16 bytes)
 *   "NAME: errno=N"    failed
 *   "NAME: made"       a create call succeeded (the harness checks where it landed)
 * Then "swap: N opens, M outside" and "done". Inside the root, /etc/inside holds
 * "inside-root\n", so that attempts that land inside show it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static void report_fd(const char *name, int fd)
{
    if (fd < 0) {
        printf("%s: errno=%d\n", name, errno);
        return;
    }
    unsigned char buf[16];
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0) {
        printf("%s: ok read errno=%d\n", name, errno);
    } else {
        printf("%s: ok ", name);
        for (ssize_t j = 0; j < n; j++)
            printf("%02x", buf[j]);
        printf("\n");
    }
    close(fd);
}

static void try_open(const char *name, const char *path)
{
    report_fd(name, open(path, O_RDONLY));
}

static void try_create(const char *name, const char *path)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
    if (fd < 0) {
        printf("%s: errno=%d\n", name, errno);
        return;
    }
    (void)!write(fd, "made\n", 5);
    close(fd);
    printf("%s: made\n", name);
}

static volatile int stop_swapping;

/* Swaps /swap between a symlink to a directory inside the root and one that climbs out,
 * each time by an atomic rename over it. */
static void *swapper(void *arg)
{
    const char *out = arg;
    for (int i = 0; i < 20000 && !stop_swapping; i++) {
        unlink("/swap.tmp");
        if (symlink(i % 2 ? out : "/etc", "/swap.tmp") == 0)
            rename("/swap.tmp", "/swap");
    }
    return NULL;
}

static void try_connect(const char *name, const char *path)
{
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
        (void)!write(s, "escaped\n", 8);
        printf("%s: connected\n", name);
    } else {
        printf("%s: errno=%d\n", name, errno);
    }
    close(s);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    const char *host = argv[1];
    char p[4096];

    /* /proc/self/root: the root's own top directory, not the host's. */
    snprintf(p, sizeof p, "/proc/self/root%s/outside/secret", host);
    try_open("root-host", p);
    try_open("root-dotdot", "/proc/self/root/../outside/secret");
    try_open("root-inside", "/proc/self/root/etc/inside");
    char link[4096] = { 0 };
    ssize_t n = readlink("/proc/self/root", link, sizeof link - 1);
    printf("root-link: %s\n", n < 0 ? "error" : link);
    if (n >= 0) {
        snprintf(p, sizeof p, "%s/../outside/secret", link);
        try_open("root-link-dotdot", p);
    }

    /* /proc/self/cwd, from a subdirectory. */
    if (chdir("/etc") != 0)
        printf("chdir: errno=%d\n", errno);
    try_open("cwd-dotdot", "/proc/self/cwd/../../outside/secret");
    try_open("cwd-inside", "/proc/self/cwd/inside");
    n = readlink("/proc/self/cwd", link, sizeof link - 1);
    link[n < 0 ? 0 : n] = 0;
    printf("cwd-link: %s\n", n < 0 ? "error" : link);

    /* /proc/self/fd/N of a directory descriptor, and O_PATH descriptors with "..". */
    int top = open("/", O_PATH | O_DIRECTORY);
    int etc = open("/etc", O_RDONLY | O_DIRECTORY);
    snprintf(p, sizeof p, "/proc/self/fd/%d/../outside/secret", top);
    try_open("fd-dotdot", p);
    snprintf(p, sizeof p, "/proc/self/fd/%d/../../outside/secret", etc);
    try_open("fd-etc-dotdot", p);
    snprintf(p, sizeof p, "/proc/self/fd/%d/inside", etc);
    try_open("fd-inside", p);
    int up = openat(top, "..", O_PATH | O_DIRECTORY);
    report_fd("opath-up-secret", up < 0 ? -1 : openat(up, "outside/secret", O_RDONLY));
    int up2 = openat(etc, "../..", O_PATH | O_DIRECTORY);
    report_fd("opath-up2-secret", up2 < 0 ? -1 : openat(up2, "outside/secret", O_RDONLY));
    report_fd("opath-up2-inside", up2 < 0 ? -1 : openat(up2, "etc/inside", O_RDONLY));
    report_fd("openat-dotdot", openat(etc, "../../outside/secret", O_RDONLY));
    snprintf(p, sizeof p, "%s/outside/secret", host);
    report_fd("openat-abs", openat(etc, p, O_RDONLY));
    int pfd = open("/etc/inside", O_PATH);
    snprintf(p, sizeof p, "/proc/self/fd/%d", pfd);
    try_open("opath-reopen", p);

    /* Creating above the root. */
    try_create("create-dotdot", "/../outside/created1");
    try_create("create-proc-root", "/proc/self/root/../outside/created2");
    snprintf(p, sizeof p, "/proc/self/fd/%d/../outside/created3", top);
    try_create("create-fd", p);
    printf("mkdir-dotdot: %s\n", mkdir("/../outside/made-dir", 0755) == 0 ? "made" : "failed");
    if (up2 >= 0) {
        int c = openat(up2, "outside/created4", O_WRONLY | O_CREAT | O_EXCL, 0644);
        printf("create-opath: %s\n", c < 0 ? "failed" : "made");
        if (c >= 0)
            close(c);
    }

    /* Unix sockets naming the outside listener. */
    snprintf(p, sizeof p, "%s/outside/sock", host);
    try_connect("unix-host", p);
    try_connect("unix-dotdot", "/../outside/sock");
    try_connect("unix-proc-root", "/proc/self/root/../outside/sock");
    if (symlink("../outside/sock", "/sock-link") == 0 || errno == EEXIST)
        try_connect("unix-symlink", "/sock-link");
    snprintf(p, sizeof p, "%s/outside", host);
    if (symlink(p, "/out-link") == 0 || errno == EEXIST)
        try_connect("unix-abs-symlink", "/out-link/sock");

    /* A symlink swapped by another thread while paths through it are resolved. */
    char out[4096];
    snprintf(out, sizeof out, "../../../..%s/outside", host);
    pthread_t t;
    pthread_create(&t, NULL, swapper, out);
    int opens = 0, outside = 0;
    for (int i = 0; i < 20000; i++) {
        int fd = open("/swap/secret", O_RDONLY);
        if (fd >= 0) {
            opens++;
            char b[8] = { 0 };
            if (read(fd, b, 7) > 0 && memcmp(b, "OUTSIDE", 7) == 0)
                outside++;
            close(fd);
        }
    }
    stop_swapping = 1;
    pthread_join(t, NULL);
    printf("swap: %d opens, %d outside\n", opens, outside);
    printf("done\n");
    return 0;
}
