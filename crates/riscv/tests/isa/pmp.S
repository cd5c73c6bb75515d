/* Physical memory protection. The pmpaddr CSRs keep what is written to them, so PMP entries
 * are implemented, and then S- and U-mode accesses that match no entry must fail, and matching
 * entries' permissions apply (M-mode, with no locked entries, is unaffected).
 * Entry 0: TOR [0, 0x81000000) RWX (devices, the program); entry 1: NAPOT 4 KiB at SCRATCH,
 * read-only; SCRATCH + 0x1000 matches nothing. */
#include "common.h"

TEST_BEGIN
    li t0, (0x81000000 >> 2)
    csrw pmpaddr0, t0
    csrr a0, pmpaddr0
    CHECKR 1, a0, t0                /* implemented: the value sticks */
    li t0, (SCRATCH >> 2) | 0x1ff   /* NAPOT: 2^(9+3) = 4 KiB */
    csrw pmpaddr1, t0
    li t0, (0x19 << 8) | 0x0f       /* entry 1: NAPOT R; entry 0: TOR RWX */
    csrw pmpcfg0, t0
    li t0, SCRATCH
    li t1, 0x1234
    sd t1, 0(t0)                    /* M-mode ignores unlocked entries */
    li t0, SCRATCH + 0x1000
    sd t1, 0(t0)
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
    li s1, SCRATCH + 0x1000
    li s2, -1
    ld a0, 0(s0)                    /* entry 1 allows reads */
    CHECK 2, a0, 0x1234
    CHECK 3, s2, -1
    EXPECT_TRAP 1f
    sd zero, 0(s0)                  /* ... not writes */
1:  CHECK 4, s2, 7
    CHECK 5, s4, SCRATCH
    EXPECT_TRAP 1f
    ld a0, 0(s1)                  /* no entry matches */
1:  CHECK 6, s2, 5
    CHECK 7, s4, SCRATCH + 0x1000
    EXPECT_TRAP 1f
    sd zero, 0(s1)
1:  CHECK 8, s2, 7
    li t0, SCRATCH + 0x1000
    EXPECT_TRAP 1f
    jalr ra, 0(t0)                  /* nor fetches */
1:  CHECK 9, s2, 1
    PASS
TEST_END
