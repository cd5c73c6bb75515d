/* menvcfg/senvcfg fields, Svinval's fences, Zkr's seed CSR and the (empty) Sdtrig trigger
 * module: what each privilege may do with them. */
#include "common.h"

#define FIOM  1
#define CBIE  (3 << 4)
#define CBCFE (1 << 6)
#define CBZE  (1 << 7)
#define ADUE  (1 << 61)
#define PBMTE (1 << 62)
#define STCE  (1 << 63)
#define SSEED (1 << 9)
#define USEED (1 << 8)

TEST_BEGIN
    /* ---- envcfg: the implemented fields stick, the rest read as zero ---- */
    li t0, -1
    csrw menvcfg, t0
    csrr a0, menvcfg
    li t1, STCE | PBMTE | ADUE | CBZE | CBCFE | CBIE | FIOM
    CHECKR 1, a0, t1
    csrw menvcfg, zero
    li t0, 0x20                     /* CBIE = 10 is reserved: the field keeps 00 */
    csrw menvcfg, t0
    csrr a0, menvcfg
    CHECK 2, a0, 0
    li t0, -1
    csrw senvcfg, t0
    csrr a0, senvcfg
    CHECK 3, a0, CBZE | CBCFE | CBIE | FIOM

    /* ---- Zkr: seed from M; read-only accesses are illegal ---- */
    la t0, m_trap_record
    csrw mtvec, t0
    li s2, 0
    csrrw a0, 0x015, zero
    CHECK 4, s2, 0
    srli a1, a0, 30
    CHECK 5, a1, 2                  /* OPST = ES16 */
    li t0, 0x3fff0000               /* bits 29..16 are zero */
    and a1, a0, t0
    CHECK 6, a1, 0
    /* 16 random bits: 8 reads are not all equal (false failure chance 2^-112) */
    li s1, 0
    li s0, 8
1:  csrrw a1, 0x015, zero
    xor a1, a1, a0
    or s1, s1, a1
    addi s0, s0, -1
    bnez s0, 1b
    beqz s1, seed_fail
    EXPECT_TRAP 1f
    csrr a0, 0x015                  /* csrrs with rs1 = x0: read-only access */
1:  CHECK 7, s2, 2
    csrw mseccfg, zero

    /* ---- Sdtrig with no triggers: probing finds none and nothing traps ---- */
    li s2, 0
    csrw tselect, zero
    csrr a0, tselect
    CHECK 8, a0, 0
    csrr a0, tdata1                 /* type 0: no trigger here */
    CHECK 9, a0, 0
    csrr a0, tinfo
    CHECK 10, a0, 1                 /* supports only type 0 */
    li t0, 1
    csrw tselect, t0
    csrr a0, tselect                /* index 1 does not stick: fewer than two triggers */
    CHECK 11, a0, 0
    CHECK 12, s2, 0

    /* ---- S: svinval; seed only with SSEED ---- */
    la t0, m_service
    csrw mtvec, t0
    ENTER_S s_mode
s_mode:
    li s2, 0
    .insn r 0x73, 0, 0x0c, x0, x0, x0    /* sfence.w.inval */
    .insn r 0x73, 0, 0x0b, x0, x0, x0    /* sinval.vma zero, zero */
    .insn r 0x73, 0, 0x0b, x0, a0, a1    /* sinval.vma a0, a1 */
    .insn r 0x73, 0, 0x0c, x0, x0, x1    /* sfence.inval.ir */
    .insn i 0x0f, 0, x0, x0, 0x010       /* pause */
    CHECK 13, s2, 0
    EXPECT_TRAP 1f
    csrrw a0, 0x015, zero
1:  CHECK 14, s2, 2
    EXPECT_TRAP 1f
    csrr a0, menvcfg                /* an M CSR */
1:  CHECK 15, s2, 2
    li a7, 1
    ecall                           /* M: SSEED on, TVM on */
    li s2, 0
    csrrw a0, 0x015, zero
    CHECK 16, s2, 0
    srli a1, a0, 30
    CHECK 17, a1, 2
    EXPECT_TRAP 1f
    .insn r 0x73, 0, 0x0b, x0, x0, x0    /* sinval.vma with mstatus.TVM: illegal */
1:  CHECK 18, s2, 2
    li s2, 0
    .insn r 0x73, 0, 0x0c, x0, x0, x0    /* sfence.w.inval ignores TVM */
    CHECK 19, s2, 0

    /* ---- U: Svinval's fences are illegal; seed without USEED too ---- */
    li t0, MSTATUS_SPP
    csrc sstatus, t0
    la t0, u_mode
    csrw sepc, t0
    sret
u_mode:
    EXPECT_TRAP 1f
    .insn r 0x73, 0, 0x0c, x0, x0, x0    /* sfence.w.inval */
1:  CHECK 20, s2, 2
    EXPECT_TRAP 1f
    .insn r 0x73, 0, 0x0c, x0, x0, x1    /* sfence.inval.ir */
1:  CHECK 21, s2, 2
    EXPECT_TRAP 1f
    .insn r 0x73, 0, 0x0b, x0, x0, x0    /* sinval.vma */
1:  CHECK 22, s2, 2
    EXPECT_TRAP 1f
    csrrw a0, 0x015, zero
1:  CHECK 23, s2, 2
    PASS

seed_fail:
    li s11, 90
    mv s10, s1
    li t6, 1
    j test_fail

    ALIGN4
m_service:
    csrr s2, mcause
    li t6, 9
    bne s2, t6, 2f
    li t6, SSEED
    csrw mseccfg, t6
    li t6, 1 << 20                  /* mstatus.TVM */
    csrs mstatus, t6
    csrr t6, mepc
    addi t6, t6, 4
    csrw mepc, t6
    mret
2:  csrr s3, mepc
    csrr s4, mtval
    csrw mepc, s9
    mret
TEST_END
