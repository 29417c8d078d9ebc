/*
 * escape PATH...: tries to open and read each path; the harness passes paths that try to
 * leave the image root (.., absolute, symlinks it planted). One line per path:
 *   "PATH: ok <hex of the first up-to-16 bytes>"   opened and read
 *   "PATH: ok read errno=N"                        opened, read failed (e.g. a directory)
 *   "PATH: errno=N"                                open failed
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        int fd = open(argv[i], O_RDONLY);
        if (fd < 0) {
            printf("%s: errno=%d\n", argv[i], errno);
            continue;
        }
        unsigned char buf[16];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) {
            printf("%s: ok read errno=%d\n", argv[i], errno);
        } else {
            printf("%s: ok ", argv[i]);
            for (ssize_t j = 0; j < n; j++)
                printf("%02x", buf[j]);
            printf("\n");
        }
        close(fd);
    }
    return 0;
}
