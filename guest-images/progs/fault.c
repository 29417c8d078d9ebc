/*
 * fault null|ud2|div0|int3: dies of the chosen CPU fault, so tests can check the VMM's report
 * (SIGSEGV at address 0, SIGILL, SIGFPE, SIGTRAP). Prints nothing on stdout.
 */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    const char *k = argc > 1 ? argv[1] : "";
    if (strcmp(k, "null") == 0) {
        *(volatile int *)0 = 42;
    } else if (strcmp(k, "ud2") == 0) {
        __asm__ volatile("ud2");
    } else if (strcmp(k, "div0") == 0) {
        /* Both volatile: with a known numerator gcc turns 1/x into a compare, no idiv. */
        volatile int one = 1, zero = 0;
        volatile int x = one / zero;
        (void)x;
    } else if (strcmp(k, "int3") == 0) {
        __asm__ volatile("int3");
    } else {
        fprintf(stderr, "usage: fault null|ud2|div0|int3\n");
        return 2;
    }
    fprintf(stderr, "fault %s: survived?!\n", k);
    return 3;
}
