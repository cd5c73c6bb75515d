/*
 * Shared macros for vireo's bare-metal RISC-V ISA test programs.
 *
 * Each program runs as the firmware of the emulated `virt` board: hart 0 starts in M-mode at
 * 0x80000000 with a0 = hartid. A program reports through the sifive,test0 finisher:
 *   0x5555                  pass
 *   (n << 16) | 0x3333      failure at check number n
 * and prints a line describing a failure on the ns16550 UART before reporting it.
 *
 * Register conventions (programs must not keep their own values in these):
 *   t6, s10, s11    used by CHECK (expected value, actual value, check number)
 *   s2, s3, s4, s5  written by the trap-recording handlers (cause, epc, tval, status)
 *   s9              where the trap-recording handlers resume
 *   s6              written by handlers that need to say which one ran
 */

#define FINISHER        0x100000
#define UART_THR        0x10000000
#define CLINT_MSIP      0x2000000
#define CLINT_MTIMECMP  0x2004000
#define CLINT_MTIME     0x200bff8
/* Free RAM well past any program image (images are limited to 2 MiB). */
#define SCRATCH         0x81000000
/* Check number reported by the default handler for a trap nobody expected. */
#define UNEXPECTED_TRAP 4095

#define MSTATUS_SIE  (1 << 1)
#define MSTATUS_MIE  (1 << 3)
#define MSTATUS_SPIE (1 << 5)
#define MSTATUS_MPIE (1 << 7)
#define MSTATUS_SPP  (1 << 8)
#define MSTATUS_MPP  (3 << 11)
#define MSTATUS_FS   (3 << 13)
#define MSTATUS_MPRV (1 << 17)
#define MSTATUS_SUM  (1 << 18)
#define MSTATUS_MXR  (1 << 19)

#define CAUSE_IRQ    0x8000000000000000

/* Only the compressed-instruction program turns this back on. */
.option norvc
/* Absolute addresses for `la` (no GOT). */
.option nopic

/* Align to 4 bytes (trap vectors must be). gas cannot pad with 2 bytes while RVC is off, and
 * silently leaves the location misaligned after 16-bit code, so pad with RVC on. */
.macro ALIGN4
    .option push
    .option rvc
    .balign 4
    .option pop
.endm

/* Fail with check number n unless register reg holds the constant val. */
.macro CHECK n, reg, val
    li t6, \val
    beq \reg, t6, 1099f
    mv s10, \reg
    li s11, \n
    j test_fail
1099:
.endm

/* Fail with check number n unless registers reg and want are equal. */
.macro CHECKR n, reg, want
    mv t6, \want
    beq \reg, t6, 1098f
    mv s10, \reg
    li s11, \n
    j test_fail
1098:
.endm

/* Fail with check number n unless the bits of FP register freg equal val (all 64 bits:
 * single-precision results must be NaN-boxed, i.e. 0xffffffff_xxxxxxxx). */
.macro CHECKF n, freg, val
    fmv.x.d s10, \freg
    CHECK \n, s10, \val
.endm

/* Fail with check number n unless fflags equals val; clears fflags. */
.macro CHECK_FLAGS n, val
    csrrw s10, fflags, zero
    CHECK \n, s10, \val
.endm

/* Put a constant into an FP register (single: the assembler-visible 32 bits, boxed by fmv.w.x). */
.macro LIF freg, val
    li t6, \val
    fmv.w.x \freg, t6
.endm
.macro LID freg, val
    li t6, \val
    fmv.d.x \freg, t6
.endm

/* Run the instruction(s) after this macro expecting a trap into a trap-recording handler, which
 * resumes at label `resume`. s2 is preset to -1 so a missing trap shows as cause -1. */
.macro EXPECT_TRAP resume
    li s2, -1
    li s3, -1
    li s4, -1
    la s9, \resume
.endm

/* Drop from M to S-mode at `label` (mret with MPP = S). */
.macro ENTER_S label
    li t0, MSTATUS_MPP
    csrc mstatus, t0
    li t0, 1 << 11
    csrs mstatus, t0
    la t0, \label
    csrw mepc, t0
    mret
.endm

.macro PASS
    li t0, FINISHER
    li t1, 0x5555
    sw t1, 0(t0)
1097:
    j 1097b
.endm

/* Start of every program: entry point, PMP opened for S/U (no PMP entry matching would deny
 * them all memory), stack, and the default M-mode trap handler. Execution falls through into
 * whatever follows the macro. */
.macro TEST_BEGIN
    .section .text.init, "ax"
    .globl _start
_start:
    la t0, unexpected_trap
    csrw mtvec, t0
    li t0, -1
    csrw pmpaddr0, t0
    li t0, 0x1f             /* NAPOT, R W X */
    csrw pmpcfg0, t0
    la sp, stack_top
.endm

/* Shared routines and the stack. Place once, after the program's final PASS. */
.macro TEST_END
    .text
    ALIGN4
/* Failure: s11 = check number, s10 = value found, t6 = value expected. */
test_fail:
    la a0, msg_fail
    call print_str
    mv a0, s11
    call print_dec
    la a0, msg_got
    call print_str
    mv a0, s10
    call print_hex
    la a0, msg_want
    call print_str
    mv a0, t6
    call print_hex
    li a0, '\n'
    call print_chr
    slli t0, s11, 16
    li t1, 0x3333
    or t1, t1, t0
finish:
    li t0, FINISHER
    sw t1, 0(t0)
1:  j 1b

/* A trap nobody expected: say where, then fail with UNEXPECTED_TRAP. */
    ALIGN4
unexpected_trap:
    la a0, msg_trap
    call print_str
    csrr a0, mcause
    call print_hex
    la a0, msg_epc
    call print_str
    csrr a0, mepc
    call print_hex
    la a0, msg_tval
    call print_str
    csrr a0, mtval
    call print_hex
    li a0, '\n'
    call print_chr
    li t1, (UNEXPECTED_TRAP << 16) | 0x3333
    j finish

/* M-mode handler: record mcause/mepc/mtval/mstatus in s2..s5, resume at s9 in the privilege
 * the trap came from. */
    ALIGN4
m_trap_record:
    csrr s2, mcause
    csrr s3, mepc
    csrr s4, mtval
    csrr s5, mstatus
    csrw mepc, s9
    mret

/* M-mode handler: record as above, resume at s9 in M-mode. */
    ALIGN4
m_trap_to_m:
    csrr s2, mcause
    csrr s3, mepc
    csrr s4, mtval
    csrr s5, mstatus
    csrw mepc, s9
    li t6, MSTATUS_MPP
    csrs mstatus, t6
    mret

/* S-mode handler: record scause/sepc/stval/sstatus in s2..s5, resume at s9 (sret, so in the
 * privilege the trap came from). */
    ALIGN4
s_trap_record:
    csrr s2, scause
    csrr s3, sepc
    csrr s4, stval
    csrr s5, sstatus
    csrw sepc, s9
    sret

print_chr:
    li t0, UART_THR
    sb a0, 0(t0)
    ret

print_str:
    li t0, UART_THR
1:  lbu t1, 0(a0)
    beqz t1, 2f
    sb t1, 0(t0)
    addi a0, a0, 1
    j 1b
2:  ret

/* 0x + 16 hex digits */
print_hex:
    li t0, UART_THR
    li t1, '0'
    sb t1, 0(t0)
    li t1, 'x'
    sb t1, 0(t0)
    li t2, 60
1:  srl t1, a0, t2
    andi t1, t1, 15
    addi t1, t1, '0'
    li t3, '9'
    ble t1, t3, 2f
    addi t1, t1, 'a' - '0' - 10
2:  sb t1, 0(t0)
    addi t2, t2, -4
    bgez t2, 1b
    ret

/* decimal, for check numbers (0..65535) */
print_dec:
    li t0, UART_THR
    li t2, 10000
    li t4, 0            /* printed a digit yet? */
1:  divu t1, a0, t2
    remu a0, a0, t2
    bnez t1, 2f
    bnez t4, 2f
    li t3, 1
    bne t2, t3, 3f
2:  addi t1, t1, '0'
    sb t1, 0(t0)
    li t4, 1
3:  li t3, 10
    divu t2, t2, t3
    bnez t2, 1b
    ret

    .section .rodata
msg_fail: .asciz "FAIL check "
msg_got:  .asciz ": got "
msg_want: .asciz " want "
msg_trap: .asciz "unexpected trap: mcause "
msg_epc:  .asciz " mepc "
msg_tval: .asciz " mtval "

    .bss
    .balign 16
stack:
    .skip 8192
stack_top:
    .text
.endm
