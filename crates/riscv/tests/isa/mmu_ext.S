/* Sv39 with the extensions: Svpbmt (PBMT 1 and 2 accepted with menvcfg.PBMTE, 3 reserved, and
 * reserved in non-leaf PTEs), Svnapot (64 KiB pages: N with ppn[3:0] = 1000 at the 4 KiB level,
 * anything else reserved), Svadu (menvcfg.ADUE on: hardware sets A/D; off: page faults), and
 * 16-bit ASIDs that keep each address space's translations apart.
 *
 *   ROOT  0x81000000: [0] devices RW, [1] -> T1, [2] identity RWX (program, tables, data)
 *   ROOT2 0x81001000: the same, but [1] -> T1B
 *   T1    0x81003000: [0] -> T0, [1] -> T0 with PBMT set (reserved), [2] megapage with N
 *   T1B   0x81005000: [0] -> T0B
 *   T0    0x81004000 (VA 0x40000000 + 4 KiB * i):
 *     [0] DATA1 R, PBMT 1 (NC)   [1] DATA1 R, PBMT 2 (IO)   [2] DATA1 R, PBMT 3 (reserved)
 *     [3] DATA1 R, N, ppn[3:0] = 0100 (reserved)            [4] DATA2 RW, A = D = 0
 *     [5] DATA2 RW, A = 1, D = 0 [6] DATA2 R, A = 0         [8] DATA1 R
 *     [16..31] NAPOT: VA 0x40010000 + x -> PA NAPOT + x (64 KiB)
 *   T0B   0x81007000: [8] DATA5 R
 */
#include "common.h"

#define ROOT   0x81000000
#define ROOT2  0x81001000
#define T1     0x81003000
#define T0     0x81004000
#define T1B    0x81005000
#define T0B    0x81007000
#define DATA1  0x81102000
#define DATA2  0x81103000
#define DATA4  0x81105000
#define DATA5  0x81106000
#define NAPOT  0x81110000
#include "pte.h"
#define PBMT(n) ((n) << 61)
#define PTE_N  (1 << 63)
#define PBMTE  (1 << 62)
#define ADUE   (1 << 61)

TEST_BEGIN
    li t0, ROOT
    li t1, T0B + 0x1000
1:  sd zero, 0(t0)
    addi t0, t0, 8
    bltu t0, t1, 1b
    PTE ROOT, 0, 0, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D
    PTE ROOT, 1, T1, PTE_V
    PTE ROOT, 2, 0x80000000, PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D
    PTE ROOT2, 0, 0, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D
    PTE ROOT2, 1, T1B, PTE_V
    PTE ROOT2, 2, 0x80000000, PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D
    PTE T1, 0, T0, PTE_V
    PTE T1, 1, T0, PTE_V | PBMT(1)
    PTE T1, 2, 0x81200000, PTE_V | PTE_R | PTE_A | PTE_N
    PTE T1B, 0, T0B, PTE_V
    PTE T0, 0, DATA1, PTE_V | PTE_R | PTE_A | PBMT(1)
    PTE T0, 1, DATA1, PTE_V | PTE_R | PTE_A | PBMT(2)
    PTE T0, 2, DATA1, PTE_V | PTE_R | PTE_A | PBMT(3)
    PTE T0, 3, DATA1 + 0x2000, PTE_V | PTE_R | PTE_A | PTE_N
    PTE T0, 4, DATA2, PTE_V | PTE_R | PTE_W
    PTE T0, 5, DATA2, PTE_V | PTE_R | PTE_W | PTE_A
    PTE T0, 6, DATA2, PTE_V | PTE_R
    PTE T0, 8, DATA1, PTE_V | PTE_R | PTE_A
    PTE T0B, 8, DATA5, PTE_V | PTE_R | PTE_A
    /* the 16 PTEs of the 64 KiB NAPOT page: ppn = NAPOT's with ppn[3:0] = 1000 */
    li t0, (((NAPOT >> 12) | 0x8) << 10) | PTE_V | PTE_R | PTE_W | PTE_A | PTE_D | PTE_N
    li t1, T0 + 16 * 8
    li t2, 16
1:  sd t0, 0(t1)
    addi t1, t1, 8
    addi t2, t2, -1
    bnez t2, 1b
    POKE DATA1, 0x1111
    POKE DATA2, 0x2222
    POKE DATA4, 0x4444
    POKE DATA5, 0x6666
    POKE NAPOT + 0x5008, 0x5555
    POKE NAPOT + 0xfff8, 0xffff

    li t0, (1 << 12) | (1 << 13) | (1 << 15)
    csrw medeleg, t0
    la t0, s_trap_record
    csrw stvec, t0
    la t0, m_service
    csrw mtvec, t0
    li t0, PBMTE | ADUE
    csrw menvcfg, t0
    li t0, (8 << 60) | (1 << 44) | (ROOT >> 12)    /* Sv39, ASID 1 */
    csrw satp, t0
    ENTER_S s_main

s_main:
    /* ---- Svpbmt ---- */
    li s0, VA(0)
    ld a0, 0(s0)
    CHECK 1, a0, 0x1111
    li s0, VA(1)
    ld a0, 0(s0)
    CHECK 2, a0, 0x1111
    li s0, VA(2)
    FAULT
    ld a0, 0(s0)
    FAULTED 3, 13, VA(2)
    li s0, 0x40200000               /* through a non-leaf PTE with PBMT */
    FAULT
    ld a0, 0(s0)
    FAULTED 5, 13, 0x40200000

    /* ---- Svnapot ---- */
    li s0, 0x40015008
    ld a0, 0(s0)
    CHECK 7, a0, 0x5555
    li s0, NAPOT + 0x5008           /* the same byte through the identity map */
    ld a1, 0(s0)
    CHECK 8, a1, 0x5555
    li s0, 0x4001fff8
    ld a0, 0(s0)
    CHECK 9, a0, 0xffff
    li t0, 0x7777
    sd t0, 0(s0)
    li t1, NAPOT + 0xfff8           /* identity-mapped: the store went to the NAPOT page */
    ld a0, 0(t1)
    CHECK 10, a0, 0x7777
    li s0, VA(3)                    /* N with ppn[3:0] = 0100 */
    FAULT
    ld a0, 0(s0)
    FAULTED 11, 13, VA(3)
    li s0, 0x40400000               /* N on a megapage */
    FAULT
    ld a0, 0(s0)
    FAULTED 13, 13, 0x40400000

    /* ---- Svadu: ADUE on, hardware sets A and D ---- */
    li s0, VA(4)
    ld a0, 0(s0)
    CHECK 15, a0, 0x2222
    li s1, T0
    ld a0, 4 * 8(s1)
    andi a0, a0, PTE_A | PTE_D
    CHECK 16, a0, PTE_A
    sd a0, 8(s0)
    ld a0, 4 * 8(s1)
    andi a0, a0, PTE_A | PTE_D
    CHECK 17, a0, PTE_A | PTE_D

    /* ---- Svade: ADUE off, A = 0 or (for stores) D = 0 fault ---- */
    li a7, 1
    ecall                           /* M: menvcfg = PBMTE (ADUE off), sfence */
    li s0, VA(6)
    FAULT
    ld a0, 0(s0)
    FAULTED 18, 13, VA(6)
    li s0, VA(5)
    ld a0, 0(s0)                    /* A = 1: loads are fine */
    CHECK 20, a0, 0x2222
    FAULT
    sd a0, 16(s0)
    FAULTED 21, 15, VA(5) + 16
    ld a0, 5 * 8(s1)                /* and nothing was set behind software's back */
    andi a0, a0, PTE_A | PTE_D
    CHECK 23, a0, PTE_A

    /* ---- ASIDs: all 16 bits; each address space sees its own mapping ---- */
    csrr s7, satp
    li t0, 0xffff << 44
    or t0, s7, t0
    csrw satp, t0
    csrr a0, satp
    srli a0, a0, 44
    li t1, 0xffff
    and a0, a0, t1
    CHECK 24, a0, 0xffff
    csrw satp, s7                   /* back to ASID 1 */
    sfence.vma
    li s0, VA(8)
    ld a0, 0(s0)                    /* ASID 1: T0[8] -> DATA1 */
    CHECK 25, a0, 0x1111
    li t0, (8 << 60) | (2 << 44) | (ROOT2 >> 12)
    csrw satp, t0                   /* ASID 2, another root, never used: no fence needed */
    ld a0, 0(s0)                    /* T0B[8] -> DATA5 */
    CHECK 26, a0, 0x6666
    csrw satp, s7
    ld a0, 0(s0)                    /* ASID 1 again */
    CHECK 27, a0, 0x1111
    /* retarget ASID 1's VA(8) to DATA4; flushing ASID 2 may leave ASID 1's old entry (the
     * spec allows either), flushing ASID 1 must not */
    PTE T0, 8, DATA4, PTE_V | PTE_R | PTE_A
    li t0, 2
    sfence.vma zero, t0
    li t0, 1
    sfence.vma zero, t0
    ld a0, 0(s0)
    CHECK 28, a0, 0x4444
    /* and the address-and-ASID form */
    PTE T0, 8, DATA2, PTE_V | PTE_R | PTE_A
    li t0, 1
    sfence.vma s0, t0
    ld a0, 0(s0)
    CHECK 29, a0, 0x2222
    /* ASID 2's mapping is untouched by all of this */
    li t0, (8 << 60) | (2 << 44) | (ROOT2 >> 12)
    csrw satp, t0
    ld a0, 0(s0)
    CHECK 30, a0, 0x6666
    csrw satp, s7
    PASS

    ALIGN4
m_service:
    csrr t6, mcause
    li t5, 9
    bne t6, t5, 2f
    li t6, PBMTE
    csrw menvcfg, t6
    sfence.vma
    csrr t6, mepc
    addi t6, t6, 4
    csrw mepc, t6
    mret
2:  j unexpected_trap
TEST_END
