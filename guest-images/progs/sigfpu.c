/*
 * Signal handlers and the FPU/SSE state (issue 17, defect 8). The signal is SIGUSR1
 * (SA_NODEFER), sent to the thread itself with a raw tgkill: one syscall per signal.
 *
 * sigfpu nested: main sets xmm8 = A and signals itself; the handler sets xmm8 = B and signals
 *   itself again; the nested handler leaves by siglongjmp into the outer one, which returns
 *   normally. Linux restores main's state from the outer frame. Output:
 *   "frame_xmm=<0|1>" (the outer handler found A in uc_mcontext.fpregs),
 *   "xmm_kept=<0|1>" (main still has A in xmm8 after the handler returned), "survived".
 * sigfpu leak N: N/10 signals whose handler leaves by siglongjmp, "warm", waits for a
 *   byte on stdin, N more, "done", waits for another byte, exits 0. A test reads the
 *   VMM's memory use at "warm" and "done": it must not grow with N.
 * sigfpu sync N: N signals to itself, each checked to have run its handler by the time
 *   tgkill returned, as Linux guarantees for an unblocked signal a thread sends itself:
 *   "sync N late L handled H", exit 2 when L (calls that returned before their handler
 *   ran) is not 0.
 */
#define _GNU_SOURCE
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define A 0x1122334455667788ULL
#define B 0x99aabbccddeeff00ULL

static sigjmp_buf env_inner, env_leak;
static volatile int inner, leak_mode, frame_ok;
static volatile long handled;
static long pid, tid;

/* tgkill(pid, tid, SIGUSR1) with xmm8 = x; the handler runs on the syscall's return. */
static void kick_with_xmm8(uint64_t x)
{
    long ret;
    __asm__ volatile("movq %1, %%xmm8\n\tsyscall"
                     : "=a"(ret)
                     : "r"(x), "0"((long)SYS_tgkill), "D"(pid), "S"(tid), "d"((long)SIGUSR1)
                     : "rcx", "r11", "memory", "xmm8");
}

static void on_usr1(int sig, siginfo_t *si, void *ucv)
{
    (void)sig;
    (void)si;
    ucontext_t *uc = ucv;
    handled++;
    if (leak_mode || inner)
        siglongjmp(leak_mode ? env_leak : env_inner, 1);
    fpregset_t fp = uc->uc_mcontext.fpregs;
    if (fp) {
        uint64_t lo;
        memcpy(&lo, &fp->_xmm[8], sizeof lo);
        frame_ok = lo == A;
    }
    inner = 1;
    if (sigsetjmp(env_inner, 0) == 0)
        kick_with_xmm8(B);
    inner = 0;
}

static void leak(long n)
{
    for (long i = 0; i < n; i++) {
        if (sigsetjmp(env_leak, 0) == 0)
            syscall(SYS_tgkill, pid, tid, SIGUSR1);
    }
}

int main(int argc, char **argv)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        return 1;
    pid = getpid();
    tid = syscall(SYS_gettid);
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc >= 3 && strcmp(argv[1], "sync") == 0) {
        long n = atol(argv[2]);
        volatile long late = 0;
        leak_mode = 1;
        for (long i = 0; i < n; i++) {
            if (sigsetjmp(env_leak, 0) == 0) {
                syscall(SYS_tgkill, pid, tid, SIGUSR1);
                /* Reached only if the handler did not run on tgkill's return. Counted
                 * without a syscall: the next one may deliver the signal late. */
                late++;
            }
        }
        printf("sync %ld late %ld handled %ld\n", n, (long)late, (long)handled);
        return late ? 2 : 0;
    }
    if (argc >= 3 && strcmp(argv[1], "leak") == 0) {
        long n = atol(argv[2]);
        char c;
        leak_mode = 1;
        leak(n / 10);
        printf("warm\n");
        if (read(0, &c, 1) != 1)
            return 1;
        leak(n);
        printf("done\n");
        if (read(0, &c, 1) != 1)
            return 1;
        return 0;
    }
    uint64_t out;
    long ret;
    __asm__ volatile("movq %2, %%xmm8\n\tsyscall\n\tmovq %%xmm8, %1"
                     : "=a"(ret), "=r"(out)
                     : "r"(A), "0"((long)SYS_tgkill), "D"(pid), "S"(tid), "d"((long)SIGUSR1)
                     : "rcx", "r11", "memory", "xmm8");
    printf("frame_xmm=%d\n", frame_ok);
    printf("xmm_kept=%d\n", out == A);
    printf("survived\n");
    return 0;
}
