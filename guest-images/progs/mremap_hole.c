/*
 * mremap_hole: mremap of ranges that are not wholly mapped, which Linux refuses with
 * EFAULT, and a good move for comparison. One line each, the same natively:
 *   "hole: errno=14"        3 pages with the middle one unmapped, grown with MREMAP_MAYMOVE
 *   "unmapped: errno=14"    a range that was unmapped entirely
 *   "after: fresh"          a later mmap does not land on a page still holding old data
 *   "move: ok"              a 2-page mapping grown to 64 pages (moved) keeps its bytes
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void report(const char *what, void *r)
{
    if (r == MAP_FAILED)
        printf("%s: errno=%d\n", what, errno);
    else
        printf("%s: moved to a new range\n", what);
}

int main(void)
{
    long pg = sysconf(_SC_PAGESIZE);
    int anon = MAP_PRIVATE | MAP_ANONYMOUS;

    char *a = mmap(NULL, 3 * pg, PROT_READ | PROT_WRITE, anon, -1, 0);
    memset(a, 'a', 3 * pg);
    munmap(a + pg, pg);
    errno = 0;
    report("hole", mremap(a, 3 * pg, 16 * pg, MREMAP_MAYMOVE));

    char *b = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, anon, -1, 0);
    memset(b, 'b', 4 * pg);
    munmap(b, 4 * pg);
    errno = 0;
    void *r = mremap(b, 4 * pg, 32 * pg, MREMAP_MAYMOVE);
    report("unmapped", r);

    /* Fresh anonymous memory must read as zeros, wherever it lands. */
    int dirty = 0;
    for (int i = 0; i < 8; i++) {
        unsigned char *c = mmap(NULL, 32 * pg, PROT_READ | PROT_WRITE, anon, -1, 0);
        for (long j = 0; j < 32 * pg; j++)
            dirty |= c[j];
    }
    printf("after: %s\n", dirty ? "old data" : "fresh");

    char *m = mmap(NULL, 2 * pg, PROT_READ | PROT_WRITE, anon, -1, 0);
    memset(m, 'm', 2 * pg);
    /* Something right after it, so growing must move. */
    mmap(m + 2 * pg, pg, PROT_READ, anon | MAP_FIXED_NOREPLACE, -1, 0);
    char *n = mremap(m, 2 * pg, 64 * pg, MREMAP_MAYMOVE);
    int ok = n != MAP_FAILED && n != m && n[0] == 'm' && n[2 * pg - 1] == 'm' && n[2 * pg] == 0;
    printf("move: %s\n", ok ? "ok" : "bad");
    return 0;
}
