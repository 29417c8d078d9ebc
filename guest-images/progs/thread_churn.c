/*
 * thread_churn [N=200]: creates and joins N threads one after another, so the VMM's vCPU
 * creation/reuse and CLEARTID path run many times. Output: "churn done N" (or FAIL lines).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static void *work(void *arg)
{
    unsigned long x = (unsigned long)arg, s = 0;
    for (unsigned long i = 0; i < 1000; i++)
        s += (x ^ i) * 2654435761u;
    return (void *)s;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200;
    for (int i = 0; i < n; i++) {
        pthread_t t;
        void *ret;
        if (pthread_create(&t, NULL, work, (void *)(unsigned long)i) != 0 ||
            pthread_join(t, &ret) != 0) {
            printf("FAIL thread %d\n", i);
            return 1;
        }
        if (ret != work((void *)(unsigned long)i)) {
            printf("FAIL result %d\n", i);
            return 1;
        }
    }
    printf("churn done %d\n", n);
    return 0;
}
