/* Interrupts through the CLINT: mtime advancing, the machine timer (mtimecmp) raising mip.MTIP,
 * WFI waking on a pending enabled interrupt even with mstatus.MIE = 0, the timer interrupt taken
 * with MIE = 1 (mcause, mepc after WFI, MPIE/MPP), msip raising the software interrupt,
 * MSI-before-MTI priority, mie masking, vectored mtvec (interrupt n at base + 4n, exceptions at
 * base), M interrupts taken in U-mode whatever MIE says, and a supervisor software interrupt
 * delegated through mideleg to an S-mode handler.
 *
 * Registers: s6 counts traps, s7 points into a log of mcause values, s1 names the vector that
 * ran (vectored mode), s2/s3/s5 = mcause/mepc/mstatus of the last trap; s8 is the handler's
 * scratch. The handler disarms the source of each interrupt. */
#include "common.h"

#define MIE_MSIE (1 << 3)
#define MIE_MTIE (1 << 7)
#define MIE_SSIE (1 << 1)
#define MIP_SSIP (1 << 1)
#define MIP_MSIP (1 << 3)
#define MIP_MTIP (1 << 7)

/* Wait (up to 2 s of mtime) for the trap count s6 to reach `want`; fail check n otherwise. */
.macro WAIT_S6 n, want
    li t0, CLINT_MTIME
    ld t1, 0(t0)
    li t2, 20000000
    add t1, t1, t2
    li t3, \want
1:  beq s6, t3, 2f
    ld t2, 0(t0)
    bltu t2, t1, 1b
    CHECK \n, s6, \want
2:
.endm

/* mtimecmp = mtime + ticks (10 MHz). */
.macro TIMER_IN ticks
    li t0, CLINT_MTIME
    ld t1, 0(t0)
    li t2, \ticks
    add t1, t1, t2
    li t0, CLINT_MTIMECMP
    sd t1, 0(t0)
.endm

.macro TIMER_OFF
    li t0, CLINT_MTIMECMP
    li t1, -1
    sd t1, 0(t0)
.endm

TEST_BEGIN
    li a7, 0
    li s6, 0
    la s7, log
    la t0, irq_handler
    csrw mtvec, t0
    csrw mie, zero

    /* ---- mtime advances; mtimecmp reads back ---- */
    li s0, CLINT_MTIME
    ld a0, 0(s0)
    li t0, 10000
1:  addi t0, t0, -1
    bnez t0, 1b
    ld a1, 0(s0)
    sltu a2, a0, a1
    CHECK 1, a2, 1
    li s1, CLINT_MTIMECMP
    li t0, 0x123456789
    sd t0, 0(s1)
    ld a0, 0(s1)
    CHECK 2, a0, 0x123456789
    lw a0, 4(s1)                    /* 32-bit halves */
    CHECK 3, a0, 1
    TIMER_OFF
    csrr a0, mip
    andi a0, a0, MIP_MTIP
    CHECK 4, a0, 0
    li t0, MIP_MTIP | MIP_MSIP      /* device-driven bits: not writable through mip */
    csrs mip, t0
    csrr a0, mip
    and a0, a0, t0
    CHECK 56, a0, 0

    /* ---- timer pending with interrupts disabled; WFI wakes for it ---- */
    li t0, MIE_MTIE
    csrw mie, t0                    /* enabled in mie, but mstatus.MIE = 0: no trap */
    TIMER_IN 200000                 /* 20 ms */
    csrr a0, mip
    andi a0, a0, MIP_MTIP
    CHECK 5, a0, 0                  /* not yet */
1:  wfi                             /* returns once MTIP is pending (or spuriously: loop) */
    csrr a0, mip
    andi a0, a0, MIP_MTIP
    beqz a0, 1b
    li t0, CLINT_MTIME              /* woke no earlier than the deadline */
    ld a1, 0(t0)
    li t0, CLINT_MTIMECMP
    ld a2, 0(t0)
    sltu a3, a1, a2
    CHECK 6, a3, 0
    CHECK 7, s6, 0                  /* and no trap was taken */
    TIMER_OFF                       /* writing mtimecmp clears MTIP */
    csrr a0, mip
    andi a0, a0, MIP_MTIP
    CHECK 8, a0, 0

    /* ---- timer interrupt taken while spinning ---- */
    TIMER_IN 1000
    li t0, MSTATUS_MIE
    csrs mstatus, t0
spin_start:
    WAIT_S6 9, 1
spin_end:
    CHECK 10, s2, CAUSE_IRQ | 7
    la t0, spin_start               /* mepc inside the wait loop */
    sltu t1, s3, t0
    CHECK 11, t1, 0
    la t0, spin_end
    sltu t1, s3, t0
    CHECK 12, t1, 1
    andi t0, s5, MSTATUS_MIE        /* in the handler: MIE 0, MPIE 1, MPP M */
    CHECK 13, t0, 0
    andi t0, s5, MSTATUS_MPIE
    CHECK 14, t0, MSTATUS_MPIE
    srli t0, s5, 11
    andi t0, t0, 3
    CHECK 15, t0, 3
    csrr a0, mstatus                /* mret restored MIE */
    andi a0, a0, MSTATUS_MIE
    CHECK 16, a0, MSTATUS_MIE

    /* ---- WFI with MIE = 1: the interrupt is taken with mepc after the WFI ---- */
    TIMER_IN 20000                  /* 2 ms */
wfi_site:
    wfi
wfi_after:
    li t0, 2
    bne s6, t0, wfi_site
    CHECK 17, s2, CAUSE_IRQ | 7
    la t0, wfi_after
    CHECKR 18, s3, t0

    /* ---- software interrupt: msip ---- */
    li t0, MSTATUS_MIE
    csrc mstatus, t0
    li t0, MIE_MSIE
    csrw mie, t0
    li s0, CLINT_MSIP
    li t0, 1
    sw t0, 0(s0)
    lw a0, 0(s0)
    CHECK 19, a0, 1
    csrr a0, mip
    andi a0, a0, MIP_MSIP
    CHECK 20, a0, MIP_MSIP
    sw zero, 0(s0)
    csrr a0, mip
    andi a0, a0, MIP_MSIP
    CHECK 21, a0, 0
    li t0, MSTATUS_MIE
    csrs mstatus, t0
    li t0, 1
msip_store:
    sw t0, 0(s0)                    /* taken right after the store */
    WAIT_S6 22, 3
msip_wait_end:
    CHECK 23, s2, CAUSE_IRQ | 3
    la t0, msip_store
    sltu t1, t0, s3                 /* mepc > the store */
    CHECK 24, t1, 1
    la t0, msip_wait_end
    sltu t1, s3, t0
    CHECK 25, t1, 1
    lw a0, 0(s0)                    /* the handler cleared it */
    CHECK 26, a0, 0

    /* ---- priority: with MSI and MTI both pending, MSI goes first ---- */
    li t0, MSTATUS_MIE
    csrc mstatus, t0
    li t0, MIE_MSIE | MIE_MTIE
    csrw mie, t0
    TIMER_IN 0
    li t0, 1
    sw t0, 0(s0)
    csrr a0, mip
    andi a0, a0, MIP_MSIP | MIP_MTIP
    CHECK 27, a0, MIP_MSIP | MIP_MTIP
    la s7, log
    li t0, MSTATUS_MIE
    csrs mstatus, t0
    WAIT_S6 28, 5
    la t0, log
    ld a0, 0(t0)
    CHECK 29, a0, CAUSE_IRQ | 3
    ld a0, 8(t0)
    CHECK 30, a0, CAUSE_IRQ | 7

    /* ---- mie masks a pending interrupt ---- */
    csrw mie, zero
    TIMER_IN 0
    li t0, 100000                   /* spans slice boundaries */
1:  addi t0, t0, -1
    bnez t0, 1b
    CHECK 31, s6, 5
    csrr a0, mip
    andi a0, a0, MIP_MTIP
    CHECK 32, a0, MIP_MTIP          /* pending all along */
    TIMER_OFF

    /* ---- vectored mtvec ---- */
    la t0, vtable
    ori t0, t0, 1
    csrw mtvec, t0
    csrr a0, mtvec
    CHECKR 33, a0, t0               /* mode 1 sticks */
    li s1, -1
    li t0, MIE_MTIE | MIE_MSIE
    csrw mie, t0
    TIMER_IN 1000
    WAIT_S6 34, 6
    CHECK 35, s1, 7                 /* timer: base + 4 * 7 */
    CHECK 36, s2, CAUSE_IRQ | 7
    li s1, -1
    li t0, 1
    sw t0, 0(s0)
    WAIT_S6 37, 7
    CHECK 38, s1, 3                 /* software: base + 4 * 3 */
    li s1, -1
    la s9, 1f
    ecall                           /* exceptions: base */
1:  CHECK 39, s1, 0
    CHECK 40, s2, 11
    la t0, irq_handler
    csrw mtvec, t0

    /* ---- in U-mode, M interrupts are enabled whatever mstatus.MIE says ---- */
    li t0, MSTATUS_MIE | MSTATUS_MPIE | MSTATUS_MPP
    csrc mstatus, t0                /* MIE = 0 now and after mret; MPP = U */
    li t0, MIE_MTIE
    csrw mie, t0
    TIMER_IN 0                      /* pending */
    li a7, 0x4d                     /* the handler returns to M at s9 */
    la s9, 1f
    la t0, u_spin
    csrw mepc, t0
    mret
u_spin:
    j u_spin
1:  li a7, 0
    CHECK 41, s2, CAUSE_IRQ | 7
    la t0, u_spin
    CHECKR 42, s3, t0
    srli t0, s5, 11
    andi t0, t0, 3
    CHECK 43, t0, 0                 /* from U */
    CHECK 44, s6, 9

    /* ---- a delegated supervisor software interrupt ---- */
    li t0, MIP_SSIP
    csrw mideleg, t0
    la t0, s_irq_handler
    csrw stvec, t0
    li t0, MIE_SSIE
    csrw mie, t0
    li t0, MSTATUS_MIE
    csrs mstatus, t0
    li t0, MIP_SSIP
    csrs mip, t0                    /* pending, delegated: M ignores it */
    li t0, 10000
1:  addi t0, t0, -1
    bnez t0, 1b
    CHECK 45, s6, 9
    csrr a0, sip
    andi a0, a0, MIP_SSIP
    CHECK 46, a0, MIP_SSIP          /* visible in sip */
    li t0, MSTATUS_SIE              /* to S with SIE = 0: still not taken */
    csrc mstatus, t0
    ENTER_S s_code
s_code:
    li t0, 10000
1:  addi t0, t0, -1
    bnez t0, 1b
    CHECK 47, s6, 9
    li t0, MSTATUS_SIE
    csrs sstatus, t0                /* now it is */
s_enable_done:
    WAIT_S6 48, 10
s_wait_end:
    CHECK 49, s2, CAUSE_IRQ | 1
    la t0, s_enable_done            /* taken once enabled, while waiting */
    sltu t1, s3, t0
    CHECK 50, t1, 0
    la t0, s_wait_end
    sltu t1, s3, t0
    CHECK 51, t1, 1
    csrr a0, sip
    andi a0, a0, MIP_SSIP
    CHECK 52, a0, 0                 /* the S handler cleared it */
    /* vectored stvec: S raises SSIP itself; the interrupt lands at base + 4 * 1 */
    la t0, s_vtable
    ori t0, t0, 1
    csrw stvec, t0
    li s1, -1
    csrsi sip, MIP_SSIP
    WAIT_S6 53, 11
    CHECK 54, s1, 1
    CHECK 55, s2, CAUSE_IRQ | 1
    li a7, 0x4d                     /* back to M */
    la s9, 1f
    ecall
1:  li a7, 0
    csrw mideleg, zero
    csrw mie, zero

    PASS

/* ---- handlers ---- */
    ALIGN4
irq_handler:
    csrr s2, mcause
    csrr s3, mepc
    csrr s5, mstatus
    sd s2, 0(s7)
    addi s7, s7, 8
    addi s6, s6, 1
    bgez s2, 3f                     /* exception */
    andi s8, s2, 63
    addi s8, s8, -7
    bnez s8, 1f
    li s8, CLINT_MTIMECMP           /* timer: disarm */
    li s4, -1
    sd s4, 0(s8)
    j 4f
1:  andi s8, s2, 63
    addi s8, s8, -3
    bnez s8, 2f
    li s8, CLINT_MSIP               /* software: clear */
    sw zero, 0(s8)
    j 4f
2:  csrw mie, zero                  /* anything else: silence it (the checks will notice) */
    j 4f
3:  csrw mepc, s9                   /* exception: resume at s9 */
4:  li s8, 0x4d                     /* a7 = 0x4d: resume at s9 in M */
    bne a7, s8, 5f
    csrw mepc, s9
    li s8, MSTATUS_MPP
    csrs mstatus, s8
5:  mret

    ALIGN4
s_irq_handler:
    csrr s2, scause
    csrr s3, sepc
    addi s6, s6, 1
    csrci sip, MIP_SSIP
    sret

/* S-mode vector table: only entry 1 (supervisor software interrupt) is expected. */
    .option push
    .option rvc
    .balign 256
    .option pop
s_vtable:
    j s_vec_bad
    j s_vec1
s_vec_bad:
    li s1, 99
    j s_irq_handler
s_vec1:
    li s1, 1
    j s_irq_handler

/* Vector table: entry n at vtable + 4n. */
    .option push
    .option rvc
    .balign 256
    .option pop
vtable:
    j vec_exc                       /* 0: every exception */
    j vec_bad
    j vec_bad
    j vec_msi                       /* 3 */
    j vec_bad
    j vec_bad
    j vec_bad
    j vec_mti                       /* 7 */
    j vec_bad
    j vec_bad
    j vec_bad
    j vec_bad                       /* 11 */
vec_exc:
    li s1, 0
    j irq_handler
vec_msi:
    li s1, 3
    j irq_handler
vec_mti:
    li s1, 7
    j irq_handler
vec_bad:
    li s1, 99
    j irq_handler

TEST_END

    .bss
    .balign 8
log: .skip 256
