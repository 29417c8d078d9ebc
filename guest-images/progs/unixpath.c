/*
 * Binds AF_UNIX sockets at names that climb above the root: "/../esc1.sock" (absolute)
 * and "../../esc2.sock" (relative to the cwd, "/"). Inside a root both must land in the
 * root's top directory, as every other path does; then a client connects to the first
 * by the plain name "/esc1.sock" and sends a byte through it.
 * Output: "bind1=0", "bind2=0", "name1=/../esc1.sock len=16", "connect=0", "recv=x",
 * "done" (errno values on failure).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int bind_at(const char *path, int *fd)
{
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    *fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    return bind(*fd, (struct sockaddr *)&a, sizeof a) == 0 ? 0 : errno;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (chdir("/") != 0)
        return 1;
    int s1, s2;
    printf("bind1=%d\n", bind_at("/../esc1.sock", &s1));
    printf("bind2=%d\n", bind_at("../../esc2.sock", &s2));
    /* getsockname answers the name as bound, whatever the VMM handed the host. */
    struct sockaddr_un n;
    socklen_t nl = sizeof n;
    memset(&n, 0, sizeof n);
    getsockname(s1, (struct sockaddr *)&n, &nl);
    printf("name1=%s len=%u\n", n.sun_path, (unsigned)nl);
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    strcpy(a.sun_path, "/esc1.sock");
    int c = socket(AF_UNIX, SOCK_DGRAM, 0);
    int r = connect(c, (struct sockaddr *)&a, sizeof a) == 0 ? 0 : errno;
    printf("connect=%d\n", r);
    char got = '?';
    if (r == 0 && send(c, "x", 1, 0) == 1)
        recv(s1, &got, 1, 0);
    printf("recv=%c\n", got);
    printf("done\n");
    return 0;
}
