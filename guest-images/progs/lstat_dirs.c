/*
 * lstat_dirs: directories named without following a final symlink (lstat, fstatat and
 * statx with AT_SYMLINK_NOFOLLOW, faccessat with AT_SYMLINK_NOFOLLOW, readlink) must be
 * seen as the directories they are, for every way of naming one: "/", ".", "..", the
 * working directory's absolute path and each argument. (ditto resolves some of these
 * itself and once handed the host its /proc/self/fd magic link with NOFOLLOW: the guest
 * saw symlinks to host paths, and node's realpath looped forever.) A real symlink in the
 * working directory must still be one. One line per check, "ok NAME" or "FAIL NAME:
 * detail"; the exit status is the number of failures. Same output natively and under ditto.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures;

static void check(int ok, const char *what, const char *name, const char *detail)
{
    if (ok) {
        printf("ok %s %s\n", what, name);
    } else {
        printf("FAIL %s %s: %s\n", what, name, detail);
        failures++;
    }
}

static void check_dir(const char *label, const char *p)
{
    struct stat st;
    struct statx stx;
    char buf[PATH_MAX];
    char detail[64];

    int r = lstat(p, &st);
    snprintf(detail, sizeof detail, "r=%d errno=%d mode=%o", r, errno, (unsigned)st.st_mode);
    check(r == 0 && S_ISDIR(st.st_mode), "lstat", label, detail);

    r = fstatat(AT_FDCWD, p, &st, AT_SYMLINK_NOFOLLOW);
    snprintf(detail, sizeof detail, "r=%d errno=%d mode=%o", r, errno, (unsigned)st.st_mode);
    check(r == 0 && S_ISDIR(st.st_mode), "fstatat-nofollow", label, detail);

    memset(&stx, 0, sizeof stx);
    r = statx(AT_FDCWD, p, AT_SYMLINK_NOFOLLOW, STATX_TYPE, &stx);
    snprintf(detail, sizeof detail, "r=%d errno=%d mode=%o", r, errno, (unsigned)stx.stx_mode);
    check(r == 0 && S_ISDIR(stx.stx_mode), "statx-nofollow", label, detail);

    r = faccessat(AT_FDCWD, p, F_OK, AT_SYMLINK_NOFOLLOW);
    snprintf(detail, sizeof detail, "r=%d errno=%d", r, errno);
    check(r == 0, "faccessat-nofollow", label, detail);

    errno = 0;
    ssize_t n = readlink(p, buf, sizeof buf - 1);
    if (n >= 0)
        buf[n] = 0;
    snprintf(detail, sizeof detail, "n=%zd errno=%d %.30s", n, errno, n >= 0 ? buf : "");
    check(n == -1 && errno == EINVAL, "readlink-einval", label, detail);
}

int main(int argc, char **argv)
{
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) {
        perror("getcwd");
        return 100;
    }
    check_dir("/", "/");
    check_dir(".", ".");
    check_dir("..", "..");
    check_dir("cwd", cwd);
    for (int i = 1; i < argc; i++)
        check_dir(argv[i], argv[i]);

    /* A real symlink is still reported as one, and reads back. */
    const char *link = "lstat_dirs.lnk";
    unlink(link);
    if (symlink("some/target", link) != 0) {
        perror("symlink");
        return 100;
    }
    struct stat st;
    int r = lstat(link, &st);
    check(r == 0 && S_ISLNK(st.st_mode), "lstat-symlink", link, "not a symlink");
    char buf[64];
    ssize_t n = readlink(link, buf, sizeof buf - 1);
    check(n == 11 && memcmp(buf, "some/target", 11) == 0, "readlink-symlink", link,
          "wrong target");
    unlink(link);
    return failures;
}
