/* Physical memory protection: 16 entries, G = 0. TOR, NA4 and NAPOT matching; the lowest
 * matching entry decides and must cover the whole access; S/U accesses no entry matches fail;
 * M is bound only by locked entries; a locked entry (and the address below a locked TOR) can
 * no longer be written. Faults: 1 fetch, 5 load, 7 store access, tval = the address. */
#include "common.h"

#define R 1
#define W 2
#define X 4
#define TOR   (1 << 3)
#define NA4   (2 << 3)
#define NAPOT (3 << 3)
#define L 0x80
#define PAGE  (SCRATCH + 0x10000)

TEST_BEGIN
    /* ---- WARL: 16 entries' addresses stick (54 bits), entries past 15 read as zero ---- */
    li t0, -1
    csrw pmpaddr15, t0
    csrr a0, pmpaddr15
    li t1, (1 << 54) - 1
    CHECKR 1, a0, t1
    csrw pmpaddr16, t0
    csrr a0, pmpaddr16
    CHECK 2, a0, 0
    csrw pmpaddr15, zero
    li t0, W                        /* W without R is reserved: the byte keeps its value */
    csrw pmpcfg2, t0
    csrr a0, pmpcfg2
    CHECK 3, a0, 0

    /* Entries:
     *  0: NA4 at PAGE, read-only
     *  1: TOR [PAGE, PAGE + 0x1000) read-write (PAGE's first word is entry 0's)
     *  2: NAPOT PAGE + 0x1000, 4 KiB: execute only
     *  3: TOR [PAGE + 0x2000, PAGE + 0x3000) nothing
     *  4: NAPOT everything: RWX (the program, the stack, the devices) */
    li t0, PAGE >> 2
    csrw pmpaddr0, t0
    li t0, (PAGE + 0x1000) >> 2
    csrw pmpaddr1, t0
    li t0, ((PAGE + 0x1000) >> 2) | 0x1ff
    csrw pmpaddr2, t0
    li t0, (PAGE + 0x3000) >> 2
    csrw pmpaddr3, t0
    li t0, -1
    csrw pmpaddr4, t0
    li t0, (NA4 | R) | ((TOR | R | W) << 8) | ((NAPOT | X) << 16) | ((TOR) << 24) | ((NAPOT | R | W | X) << 32)
    csrw pmpcfg0, t0
    csrr a0, pmpcfg0
    CHECKR 4, a0, t0
    /* entry 3's TOR starts at pmpaddr2's raw value << 2 (inside entry 2, which decides
     * first), so it alone decides [PAGE + 0x2000, PAGE + 0x3000) */
    /* code for the execute-only page: li a0, 0x55; ret */
    li t0, PAGE + 0x1000
    li t1, 0x0000806705500513
    sd t1, 0(t0)
    li t0, PAGE + 4
    li t1, 0x1234
    sw t1, 0(t0)
    fence.i
    /* M is not bound by unlocked entries */
    li t0, PAGE + 0x2000
    sd zero, 0(t0)
    li t0, PAGE
    li t1, 0xabcd
    sw t1, 0(t0)

    la t0, m_handler
    csrw mtvec, t0
    ENTER_S s_mode

s_mode:
    li s0, PAGE
    li s2, -1
    lwu a0, 0(s0)                   /* entry 0: readable */
    CHECK 5, a0, 0xabcd
    CHECK 6, s2, -1
    EXPECT_TRAP 1f
    sw a0, 0(s0)                    /* entry 0: not writable, though entry 1 would allow */
1:  CHECK 7, s2, 7
    CHECK 8, s4, PAGE
    EXPECT_TRAP 1f
    ld a0, 0(s0)                    /* 8 bytes straddle entries 0 and 1: fails */
1:  CHECK 9, s2, 5
    li s2, -1
    lwu a0, 4(s0)                   /* entry 1 */
    CHECK 10, a0, 0x1234
    sw a0, 8(s0)
    CHECK 11, s2, -1
    EXPECT_TRAP 1f
    li t0, PAGE + 0xffc
    ld a0, 0(t0)                    /* straddles entries 1 and 2 */
1:  CHECK 12, s2, 5
    li t0, PAGE + 0x1000            /* entry 2: execute only */
    li a0, 0
    li s2, -1
    jalr ra, 0(t0)
    CHECK 13, a0, 0x55
    CHECK 14, s2, -1
    li t0, PAGE + 0x1000
    EXPECT_TRAP 1f
    ld a0, 0(t0)
1:  CHECK 15, s2, 5
    li t0, PAGE + 0x2000            /* entry 3: nothing */
    EXPECT_TRAP 1f
    jalr ra, 0(t0)
1:  CHECK 16, s2, 1
    CHECK 17, s4, PAGE + 0x2000
    li t0, PAGE + 0x2ff8
    EXPECT_TRAP 1f
    sd zero, 0(t0)
1:  CHECK 18, s2, 7
    CHECK 19, s4, PAGE + 0x2ff8
    li s2, -1
    li t0, PAGE + 0x3000            /* entry 4 again */
    sd zero, 0(t0)
    CHECK 20, s2, -1
    ecall                           /* to M: the handler continues at m_part */

m_part:
    /* ---- lock: entry 0 = locked NA4 at PAGE + 0x3000, no permissions: M loses access ---- */
    csrw pmpcfg0, zero
    li t0, (PAGE + 0x3000) >> 2
    csrw pmpaddr0, t0
    li t0, (NA4 | L) | ((NAPOT | R | W | X) << 32)
    csrw pmpcfg0, t0
    la t0, m_trap_to_m
    csrw mtvec, t0
    li s0, PAGE + 0x3000
    EXPECT_TRAP 1f
    lw a0, 0(s0)
1:  CHECK 21, s2, 5
    CHECK 22, s4, PAGE + 0x3000
    li s2, -1
    lw a0, 4(s0)                    /* the next word: only unlocked entry 4 matches */
    CHECK 23, s2, -1
    csrw pmpaddr0, zero             /* locked: ignored */
    csrr a0, pmpaddr0
    li t0, (PAGE + 0x3000) >> 2
    CHECKR 24, a0, t0
    li t0, NAPOT | R | W | X
    csrw pmpcfg0, t0                /* entry 0's byte is locked; entry 4 turns off */
    csrr a1, pmpcfg0
    CHECK 25, a1, NA4 | L
    li s2, -1
    lw a0, 4(s0)                    /* no entry matches: M is allowed */
    CHECK 26, s2, -1
    PASS

    ALIGN4
m_handler:
    csrr s2, mcause
    li t6, 9
    beq s2, t6, m_part
    csrr s3, mepc
    csrr s4, mtval
    csrw mepc, s9
    mret
TEST_END
