/* Counts its own instructions and cycles through perf_event_open (the kernel's PMU driver, here
 * the SBI PMU's counters) around a loop of a known length, and prints both counts. */
#include <linux/perf_event.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static int counter(uint64_t config)
{
    struct perf_event_attr a;
    memset(&a, 0, sizeof a);
    a.type = PERF_TYPE_HARDWARE;
    a.size = sizeof a;
    a.config = config;
    a.disabled = 1;
    return syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
}

int main(void)
{
    int ins = counter(PERF_COUNT_HW_INSTRUCTIONS);
    int cyc = counter(PERF_COUNT_HW_CPU_CYCLES);
    uint64_t n = 0, c = 0;
    if (ins < 0 || cyc < 0) {
        perror("perf_event_open");
        return 2;
    }
    ioctl(ins, PERF_EVENT_IOC_ENABLE, 0);
    ioctl(cyc, PERF_EVENT_IOC_ENABLE, 0);
    /* 1,000,000 iterations of two instructions */
    __asm__ volatile("li t0, 1000000\n1: addi t0, t0, -1\nbnez t0, 1b" ::: "t0");
    ioctl(ins, PERF_EVENT_IOC_DISABLE, 0);
    ioctl(cyc, PERF_EVENT_IOC_DISABLE, 0);
    if (read(ins, &n, sizeof n) != sizeof n || read(cyc, &c, sizeof c) != sizeof c) {
        perror("read");
        return 3;
    }
    printf("instructions %llu cycles %llu\n", (unsigned long long)n, (unsigned long long)c);
    return 0;
}
