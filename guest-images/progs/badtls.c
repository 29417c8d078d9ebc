/*
 * Asks for FS bases Linux refuses: arch_prctl(ARCH_SET_FS) and clone(CLONE_SETTLS) with a
 * non-canonical base and with TASK_SIZE_MAX (the first address past the last user page).
 * Natively each fails with EPERM and leaves FS as it was; under ditto the VMM must say the
 * same instead of reporting success while KVM kept the old base (issue 17, defect 11).
 * Output: one "<call>=<ret> errno=<n>" line per call, "fs_kept=<0|1>" (ARCH_GET_FS still
 * gives the base from before), "tls_ok=<0|1>" (a thread-local still reads right), then
 * "survived".
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

static __thread int tls_value = 42;

static void report(const char *name, long r)
{
    printf("%s=%ld errno=%d\n", name, r, r < 0 ? errno : 0);
}

/* clone with CLONE_SETTLS; should a child appear, it exits at once on its own stack. */
static long clone_settls(unsigned long tls, void *stack)
{
    unsigned long flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD |
                          CLONE_SYSVSEM | CLONE_SETTLS;
    long ret;
    register long r10 __asm__("r10") = 0;
    register long r8 __asm__("r8") = (long)tls;
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "mov $60, %%eax\n\t"
                     "xor %%edi, %%edi\n\t"
                     "syscall\n\t"
                     "1:\n\t"
                     : "=a"(ret)
                     : "0"((long)SYS_clone), "D"(flags), "S"(stack), "d"(0L), "r"(r10),
                       "r"(r8)
                     : "rcx", "r11", "memory");
    if (ret < 0) {
        errno = (int)-ret;
        return -1;
    }
    return ret;
}

int main(void)
{
    setvbuf(stdout, NULL, _IOLBF, 0);
    unsigned long before = 0, after = 0;
    if (syscall(SYS_arch_prctl, ARCH_GET_FS, &before) != 0)
        return 1;
    report("set_fs_noncanonical", syscall(SYS_arch_prctl, ARCH_SET_FS, 0x8000000000000000UL));
    report("set_fs_task_size_max", syscall(SYS_arch_prctl, ARCH_SET_FS, 0x7ffffffff000UL));
    syscall(SYS_arch_prctl, ARCH_GET_FS, &after);
    printf("fs_kept=%d\n", before == after);
    char *stack = malloc(65536);
    if (!stack)
        return 1;
    report("clone_noncanonical", clone_settls(0x8000000000000000UL, stack + 65536));
    report("clone_task_size_max", clone_settls(0x7ffffffff000UL, stack + 65536));
    printf("tls_ok=%d\n", tls_value == 42);
    printf("survived\n");
    return 0;
}
