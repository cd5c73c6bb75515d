/* Physical memory protection: vireo implements no PMP entries. The pmpcfg/pmpaddr CSRs exist
 * (no trap) and read as zero whatever is written, the spec's choice for zero entries, so
 * firmware counts none; with no entries, S- and U-mode accesses are not restricted. */
#include "common.h"

TEST_BEGIN
    li t0, (0x81000000 >> 2)
    csrw pmpaddr0, t0
    csrr a0, pmpaddr0
    CHECK 1, a0, 0                  /* no entry: the write does not stick */
    li t0, (0x19 << 8) | 0x0f
    csrw pmpcfg0, t0
    csrr a0, pmpcfg0
    CHECK 2, a0, 0
    csrr a0, pmpaddr63
    CHECK 3, a0, 0
    la t0, m_trap_record
    csrw mtvec, t0
    li t0, MSTATUS_MPP
    csrc mstatus, t0
    li t0, 1 << 11
    csrs mstatus, t0
    la t0, s_mode
    csrw mepc, t0
    mret
s_mode:
    li s0, SCRATCH
    li s2, -1
    li t1, 0x1234
    sd t1, 0(s0)                    /* S-mode stores and loads anywhere in RAM */
    ld a0, 0(s0)
    CHECK 4, a0, 0x1234
    CHECK 5, s2, -1                 /* and nothing trapped */
    PASS
TEST_END
