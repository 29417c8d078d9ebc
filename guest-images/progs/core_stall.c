/*
 * core_stall: exits 0 on the host core whose initial APIC id (cpuid leaf 1, EBX bits 31-24)
 * is 0, and on any other core waits forever in a futex that nobody wakes. It prints nothing.
 * cpuid runs natively on kvm_pvm hosts, so it is an input that a pair cannot replay: with
 * the primary on core 0 and the secondary elsewhere, the primary exits and the secondary
 * stalls after the primary's end. The pair tests use it for the supervisor's stall report.
 */
#include <cpuid.h>
#include <linux/futex.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(void)
{
    unsigned int eax, ebx, ecx, edx;
    __cpuid(1, eax, ebx, ecx, edx);
    if ((ebx >> 24) == 0)
        return 0;
    static uint32_t never_woken;
    for (;;)
        syscall(SYS_futex, &never_woken, FUTEX_WAIT_PRIVATE, 0, NULL, NULL, 0);
}
