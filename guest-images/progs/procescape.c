/*
 * procescape DITTO_BINARY DIR: tries to read the VMM's own memory through /proc, as a
 * program under `ditto run --root /` could before the guest had its own /proc. One line
 * per attempt:
 *   "maps: ditto at ADDR" / "maps: no ditto"   a /proc/self/maps line naming the binary
 *   "mem: read ELF" / "mem: errno=N" / "mem: other"   4 bytes of /proc/self/mem at ADDR
 *   "symlink: errno=N" / "symlink: opened" / "symlink: read ELF"   DIR/m -> /proc/self/mem
 *   "PATH: errno=N" / "PATH: opened"   for /proc/1/environ, /proc/sysrq-trigger (O_WRONLY)
 *   "mtab: errno=N" / "mtab: opened"   /etc/mtab (a symlink into /proc/self on most hosts)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned long find_binary(const char *bin)
{
    FILE *f = fopen("/proc/self/maps", "r");
    char line[4096];
    unsigned long found = 0;
    while (f && fgets(line, sizeof line, f)) {
        unsigned long s, e, off;
        int pos = 0;
        line[strcspn(line, "\n")] = 0;
        if (sscanf(line, "%lx-%lx %*s %lx %*s %*s %n", &s, &e, &off, &pos) < 3 || !pos)
            continue;
        if (off == 0 && strcmp(line + pos, bin) == 0) {
            found = s;
            break;
        }
    }
    if (f)
        fclose(f);
    return found;
}

static void try_read(const char *what, const char *path, unsigned long addr)
{
    int fd = open(path, O_RDWR);
    if (fd < 0) {
        printf("%s: errno=%d\n", what, errno);
        return;
    }
    char buf[4] = {0};
    if (!addr) {
        printf("%s: opened\n", what);
    } else if (pread(fd, buf, 4, (off_t)addr) == 4 && memcmp(buf, "\177ELF", 4) == 0) {
        printf("%s: read ELF\n", what);
    } else {
        printf("%s: errno=%d\n", what, errno);
    }
    close(fd);
}

static void try_open(const char *path, int flags)
{
    int fd = open(path, flags);
    if (fd < 0)
        printf("%s: errno=%d\n", path, errno);
    else
        printf("%s: opened\n", path);
    if (fd >= 0)
        close(fd);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: procescape DITTO_BINARY DIR\n");
        return 2;
    }
    unsigned long at = find_binary(argv[1]);
    if (at)
        printf("maps: ditto at %lx\n", at);
    else
        printf("maps: no ditto\n");
    try_read("mem", "/proc/self/mem", at);
    char link[4096];
    snprintf(link, sizeof link, "%s/m", argv[2]);
    unlink(link);
    if (symlink("/proc/self/mem", link) != 0) {
        printf("symlink: cannot create errno=%d\n", errno);
    } else {
        try_read("symlink", link, at);
        unlink(link);
    }
    try_open("/proc/1/environ", O_RDONLY);
    try_open("/proc/sysrq-trigger", O_WRONLY);
    int fd = open("/etc/mtab", O_RDONLY);
    printf(fd < 0 ? "mtab: errno=%d\n" : "mtab: opened\n", errno);
    if (fd >= 0)
        close(fd);
    return 0;
}
