/*
 * Body of the MMU programs (mmu_sv39.S, mmu_sv48.S define LEVELS as 3 or 4 first).
 *
 * M-mode builds page tables in RAM, delegates page faults (12, 13, 15) to S, sets satp and
 * drops to S-mode, which checks translations and faults. Physical layout:
 *   0x81000000 root table             0x81003000 T1: level-1 table for VA 0x40000000..
 *   0x81001000 (Sv48) level-2 table   0x81004000 T0: level-0 table for VA 0x40000000..0x401fffff
 *   0x81002000 (Sv48) level-2 table for VA 0x80_0000_0000 (root index 1)
 *   data pages DATA0..DATA4, CODE, CODE2 below; 0x81200000: a 2 MiB page.
 * The table of 1 GiB entries (GT: the root in Sv39, the level-2 table in Sv48) maps:
 *   [0] VA 0x00000000 -> PA 0x00000000, RW (devices: UART and finisher for the fail path)
 *   [1] -> T1
 *   [2] VA 0x80000000 -> PA 0x80000000, RWX (identity: program, stack, page tables, data)
 *   [3] VA 0xc0000000 -> PA 0x80000000, RW (a gigapage alias)
 *   [4] VA 0x100000000 -> PPN 0x80200 (not 1 GiB aligned: misaligned superpage)
 *   [5] VA 0x140000000 -> PA 0x80000000, RWX and U (the program again, for U-mode code)
 *   [6] -> a "table" at PA 0x20000000, where there is no memory
 * T1: [0] -> T0; [1] VA 0x40200000 -> PA 0x81200000 (megapage); [2] VA 0x40400000 -> a
 *   misaligned megapage. T0 (VA 0x40000000 + 4 KiB * i):
 *   [0] DATA0 RW, A = D = 0      [1] DATA1 RW        [2] DATA2 R          [3] CODE X only
 *   [4] DATA4 RW, U              [5] invalid         [6] W without R (reserved)
 *   [7] DATA1 R (sfence test)    [8] CODE X, U       [9] DATA4 RW, A = D = 0
 *   [10] CODE2 RX                [11] invalid (so an instruction at the end of [10] straddles)
 *   [12] PA 0x20000000 (no memory) RW                [13] DATA1 R with PBMT bits (reserved)
 * Access faults (5, 7) and ecall from U (8) are delegated to S as well.
 */

#define ROOT   0x81000000
#define L2B    0x81002000
#define T1     0x81003000
#define T0     0x81004000
#define DATA0  0x81100000
#define DATA1  0x81102000
#define DATA2  0x81103000
#define CODE   0x81104000
#define DATA4  0x81105000
#define CODE2  0x81107000
#define MEGA   0x81200000
#define NOMEM  0x20000000
/* The U-mode alias of the program: VA = PA + UALIAS */
#define UALIAS 0xc0000000
#if LEVELS == 4
#define GT     0x81001000
#define SATP_MODE 9
#else
#define GT     ROOT
#define SATP_MODE 8
#endif

#include "pte.h"

TEST_BEGIN
    /* ---- zero the tables ---- */
    li t0, ROOT
    li t1, T0 + 0x1000
1:  sd zero, 0(t0)
    addi t0, t0, 8
    bltu t0, t1, 1b

#if LEVELS == 4
    PTE ROOT, 0, GT, PTE_V
    PTE ROOT, 1, L2B, PTE_V
    PTE L2B, 0, 0x80000000, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D
#endif
    PTE GT, 0, 0x00000000, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D
    PTE GT, 1, T1, PTE_V
    PTE GT, 2, 0x80000000, PTE_V | PTE_R | PTE_W | PTE_X | PTE_A | PTE_D
    PTE GT, 3, 0x80000000, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D
    PTE GT, 4, 0x80200000, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D
    PTE GT, 5, 0x80000000, PTE_V | PTE_R | PTE_W | PTE_X | PTE_U | PTE_A | PTE_D
    PTE GT, 6, NOMEM, PTE_V
    PTE T1, 0, T0, PTE_V
    PTE T1, 1, MEGA, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D
    PTE T1, 2, MEGA + 0x1000, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D
    PTE T0, 0, DATA0, PTE_V | PTE_R | PTE_W
    PTE T0, 1, DATA1, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D
    PTE T0, 2, DATA2, PTE_V | PTE_R | PTE_A
    PTE T0, 3, CODE, PTE_V | PTE_X | PTE_A
    PTE T0, 4, DATA4, PTE_V | PTE_R | PTE_W | PTE_U | PTE_A | PTE_D
    PTE T0, 6, DATA0, PTE_V | PTE_W | PTE_A | PTE_D
    PTE T0, 7, DATA1, PTE_V | PTE_R | PTE_A
    PTE T0, 8, CODE, PTE_V | PTE_X | PTE_U | PTE_A
    PTE T0, 9, DATA4, PTE_V | PTE_R | PTE_W
    PTE T0, 10, CODE2, PTE_V | PTE_R | PTE_X | PTE_A
    PTE T0, 12, NOMEM, PTE_V | PTE_R | PTE_W | PTE_A | PTE_D
    li t0, (1 << 61) | ((DATA1 >> 12) << 10) | PTE_V | PTE_R | PTE_A
    li t1, T0 + 13 * 8
    sd t0, 0(t1)

    /* ---- page contents ---- */
    POKE DATA0, 0x1111111111111111
    POKE DATA0 + 0xff8, 0x8877665544332211
    POKE DATA1, 0x2222222222222222
    POKE DATA2, 0x3333333333333333
    POKE DATA4, 0x4444444444444444
    POKE MEGA + 0x1234, 0x5555aaaa5555aaaa
    POKE MEGA + 0x1ffff8, 0x6666
    /* CODE: addi a0, zero, 0x77 (0x07700513); ret (jalr x0, 0(ra) = 0x00008067) */
    POKE CODE, 0x0000806707700513
    /* CODE2's last halfword: the first half of that addi */
    li t0, 0x0513
    li t1, CODE2 + 0xffe
    sh t0, 0(t1)
    fence.i

    /* ---- delegate page faults to S; enter S with paging on ---- */
    li t0, (1 << 5) | (1 << 7) | (1 << 8) | (1 << 12) | (1 << 13) | (1 << 15)
    csrw medeleg, t0
    la t0, s_trap_record
    csrw stvec, t0
    la t0, m_trap_to_m              /* the only trap M sees from S: ecall, to come back */
    csrw mtvec, t0
    li t0, (SATP_MODE << 60) | (ROOT >> 12)
    csrw satp, t0
    csrr t1, satp
    CHECKR 1, t1, t0
    ENTER_S s_main

s_main:
    /* ---- 4 KiB pages ---- */
    li s0, VA(1)
    ld a0, 0(s0)
    CHECK 2, a0, 0x2222222222222222
    li s0, VA(0)
    ld a0, 0(s0)
    CHECK 3, a0, 0x1111111111111111

    /* ---- A and D set by hardware ---- */
    li s1, T0                       /* the tables are identity-mapped */
    ld a0, 0(s1)                    /* T0[0] after a load: A set, D still clear */
    andi a1, a0, PTE_A | PTE_D
    CHECK 4, a1, PTE_A
    li t0, 0x0101010101010101
    sd t0, 8(s0)
    ld a0, 0(s1)                    /* after a store: D set */
    andi a1, a0, PTE_A | PTE_D
    CHECK 5, a1, PTE_A | PTE_D
    li s0, VA(9)
    sd zero, 16(s0)                 /* a store to a fresh page sets both */
    ld a0, 9 * 8(s1)
    andi a1, a0, PTE_A | PTE_D
    CHECK 6, a1, PTE_A | PTE_D

    /* ---- read-only page ---- */
    li s0, VA(2)
    ld a0, 0(s0)
    CHECK 7, a0, 0x3333333333333333
    FAULT
ro_store:
    sd a0, 8(s0)
    FAULTED 8, 15, VA(2) + 8
    la t0, ro_store
    CHECKR 10, s3, t0               /* sepc = the store */
    FAULT
    amoadd.d a1, a0, (s0)           /* an AMO faults as a store */
    FAULTED 11, 15, VA(2)
    ld a0, 0(s0)
    CHECK 13, a0, 0x3333333333333333

    /* ---- execute-only page, MXR ---- */
    li a0, 0
    li t0, VA(3)
    jalr ra, 0(t0)                  /* runs addi a0, zero, 0x77; ret */
    CHECK 14, a0, 0x77
    li s0, VA(3)
    FAULT
    lwu a0, 0(s0)
    FAULTED 15, 13, VA(3)
    li t0, MSTATUS_MXR
    csrs sstatus, t0
    lwu a0, 0(s0)                   /* MXR: executable pages are readable */
    CHECK 17, a0, 0x07700513
    li t0, MSTATUS_MXR
    csrc sstatus, t0
    FAULT
    lwu a0, 4(s0)                   /* and not any more */
    FAULTED 18, 13, VA(3) + 4
    FAULT
    sw zero, 0(s0)
    FAULTED 20, 15, VA(3)

    /* ---- U pages from S: only with SUM, and never executable ---- */
    li s0, VA(4)
    FAULT
    ld a0, 0(s0)
    FAULTED 22, 13, VA(4)
    FAULT
    sd zero, 8(s0)
    FAULTED 24, 15, VA(4) + 8
    li t0, MSTATUS_SUM
    csrs sstatus, t0
    ld a0, 0(s0)
    CHECK 26, a0, 0x4444444444444444
    li t0, VA(8)
    FAULT
    jalr ra, 0(t0)                  /* U + X page: S may not execute it, SUM or not */
    FAULTED 27, 12, VA(8)
    CHECK 29, s3, VA(8)             /* sepc = the target */
    li t0, MSTATUS_SUM
    csrc sstatus, t0
    FAULT
    ld a0, 0(s0)
    FAULTED 30, 13, VA(4)

    /* ---- invalid and reserved PTEs ---- */
    li s0, VA(5)
    FAULT
    lw a0, 4(s0)
    FAULTED 32, 13, VA(5) + 4
    FAULT
    sb a0, 0x10(s0)
    FAULTED 34, 15, VA(5) + 0x10
    FAULT
    jalr ra, 0(s0)
    FAULTED 36, 12, VA(5)
    CHECK 38, s3, VA(5)
    li s0, VA(6)                    /* W without R */
    FAULT
    ld a0, 0(s0)
    FAULTED 39, 13, VA(6)
    FAULT
    sd a0, 0(s0)
    FAULTED 41, 15, VA(6)

    /* ---- superpages ---- */
    li s0, 0x40201234               /* megapage: VA 0x40200000 + x -> PA 0x81200000 + x */
    ld a0, 0(s0)
    CHECK 43, a0, 0x5555aaaa5555aaaa
    li s0, 0x403ffff8
    ld a0, 0(s0)
    CHECK 44, a0, 0x6666
    li s0, 0x40400000               /* misaligned megapage */
    FAULT
    ld a0, 0(s0)
    FAULTED 45, 13, 0x40400000
    li s0, 0xc1100000               /* gigapage: VA 0xc0000000 + x -> PA 0x80000000 + x = DATA0 */
    ld a0, 0(s0)
    CHECK 47, a0, 0x1111111111111111
    ld a0, 8(s0)                    /* written through VA(0) above */
    CHECK 48, a0, 0x0101010101010101
    li s0, 0xc1102000               /* DATA1: write through the gigapage, read through VA(1) */
    li t0, 0x7777777777777777
    sd t0, 8(s0)
    li s1, VA(1)
    ld a0, 8(s1)
    CHECK 49, a0, 0x7777777777777777
    li s0, 0x100000000              /* misaligned gigapage */
    FAULT
    ld a0, 0(s0)
    FAULTED 50, 13, 0x100000000
    FAULT
    sd a0, 0(s0)
    FAULTED 52, 15, 0x100000000

    /* ---- non-canonical addresses: the low bits would hit a valid mapping ---- */
#if LEVELS == 4
#define NONCANON 0x0001000080000000     /* bit 48 set above a 48-bit VA; low bits -> GT[2] */
#else
#define NONCANON 0x0000008080000000     /* bit 39 set above a 39-bit VA; low bits -> GT[2] */
#endif
    li s0, NONCANON
    FAULT
    ld a0, 0(s0)
    FAULTED 54, 13, NONCANON
    FAULT
    sd a0, 0(s0)
    FAULTED 56, 15, NONCANON
    FAULT
    jalr ra, 0(s0)
    FAULTED 58, 12, NONCANON
#if LEVELS == 4
    /* a 4-level walk through root index 1: VA 0x80_0000_0000 + x -> PA 0x80000000 + x */
    li s0, 0x8000000000 + 0x01100000
    ld a0, 0(s0)
    CHECK 60, a0, 0x1111111111111111
    li s0, 0x0000004000000000       /* canonical in Sv48 (not in Sv39), but unmapped */
    FAULT
    ld a0, 0(s0)
    FAULTED 61, 13, 0x0000004000000000
#else
    li s0, 0x0000004000000000       /* bit 38 set, upper bits clear: non-canonical in Sv39 */
    FAULT
    ld a0, 0(s0)
    FAULTED 61, 13, 0x0000004000000000
    li s0, 0xffffffc000000000       /* canonical (upper half), GT[256] is empty */
    FAULT
    ld a0, 0(s0)
    FAULTED 63, 13, 0xffffffc000000000
#endif

    /* ---- a satp write selecting an unsupported mode (Sv57) has no effect ---- */
    csrr a0, satp
    li t0, (10 << 60) | (ROOT >> 12)
    csrw satp, t0
    csrr a1, satp
    CHECKR 65, a1, a0
    li s0, VA(1)                    /* translation unchanged */
    ld a0, 0(s0)
    CHECK 66, a0, 0x2222222222222222

    /* ---- sfence.vma makes a changed PTE take effect ---- */
    li s0, VA(7)
    ld a0, 0(s0)                    /* T0[7] -> DATA1 */
    CHECK 67, a0, 0x2222222222222222
    li t0, (((DATA2) >> 12) << 10) | PTE_V | PTE_R | PTE_A
    li t1, T0 + 7 * 8
    sd t0, 0(t1)
    sfence.vma
    ld a0, 0(s0)                    /* now -> DATA2 */
    CHECK 68, a0, 0x3333333333333333
    li t0, 0                        /* invalidate it */
    sd t0, 0(t1)
    sfence.vma s0, zero             /* the address-specific form */
    FAULT
    ld a0, 0(s0)
    FAULTED 69, 13, VA(7)

    /* ---- misaligned accesses across pages ---- */
    li s0, VA(1) - 4                /* DATA0 + 0xffc .. | DATA1 + 0 .. : not contiguous in PA */
    ld a0, 0(s0)                    /* 55 66 77 88 | 22 22 22 22 */
    CHECK 71, a0, 0x2222222288776655
    li t0, 0x0102030405060708
    sd t0, 0(s0)
    li t1, VA(0) + 0xff8
    ld a1, 0(t1)                    /* 11 22 33 44 | 08 07 06 05 */
    CHECK 72, a1, 0x0506070844332211
    li t1, VA(1)
    lwu a1, 0(t1)                   /* 04 03 02 01 */
    CHECK 73, a1, 0x01020304
    li s0, VA(2) - 4                /* RW page | read-only page: the store faults */
    FAULT
    sd zero, 0(s0)
    1:
    CHECK 74, s2, 15
    li t0, VA(2)                    /* stval: an address in the faulting part */
    sub t1, s4, t0
    sltiu t1, t1, 4
    CHECK 75, t1, 1
    li s0, VA(11) - 2               /* readable page | invalid page: the load faults */
    FAULT
    lw a0, 0(s0)
    1:
    CHECK 76, s2, 13
    li t0, VA(11)
    sub t1, s4, t0
    sltiu t1, t1, 2
    CHECK 77, t1, 1

    /* ---- an instruction straddling into an invalid page ---- */
    li s0, VA(10) + 0xffe
    FAULT
    jalr ra, 0(s0)
    FAULTED 78, 12, VA(11)          /* stval: the part that faulted */
    CHECK 80, s3, VA(10) + 0xffe    /* sepc: the instruction */

    /* ---- access faults: a leaf, and a table, where there is no memory ---- */
    li s0, VA(12)
    FAULT
    ld a0, 0(s0)
    FAULTED 86, 5, VA(12)
    FAULT
    sw a0, 4(s0)
    FAULTED 88, 7, VA(12) + 4
    li s0, 0x180000000              /* GT[6] -> a table at PA 0x20000000 */
    FAULT
    ld a0, 0(s0)
    FAULTED 90, 5, 0x180000000
    /* ---- reserved PTE bits (PBMT without Svpbmt): page fault ---- */
    li s0, VA(13)
    FAULT
    ld a0, 0(s0)
    FAULTED 92, 13, VA(13)

    /* ---- U-mode under paging ----
     * U runs the program through its U alias (GT[5]) and records results in DATA4 + 0x100..
     * (VA(4), a U page); S checks them afterwards. s_handler returns to S when a7 = 0x53. */
    li a7, 0
    la t0, s_handler
    csrw stvec, t0
    li t0, MSTATUS_SUM              /* SUM has no effect on U itself */
    csrs sstatus, t0
    li t0, MSTATUS_SPP
    csrc sstatus, t0
    la t0, u_code
    li t1, UALIAS
    add t0, t0, t1
    csrw sepc, t0
    sret
u_code:
    li s0, VA(4)
    ld t0, 0(s0)                    /* a U page: fine */
    sd t0, 0x100(s0)
    li t0, 0x99
    sd t0, 8(s0)
    li s1, VA(1)                    /* a page without U: load fault */
    li s2, -1
    la s9, 1f
    ld t0, 0(s1)
1:  sd s2, 0x108(s0)
    sd s4, 0x110(s0)
    li s2, -1                       /* executable but not U: fetch fault */
    la s9, 1f
    li t0, VA(3)
    jalr ra, 0(t0)
1:  sd s2, 0x118(s0)
    sd s4, 0x120(s0)
    li a0, 0                        /* U and executable: runs addi a0, zero, 0x77; ret */
    li t0, VA(8)
    jalr ra, 0(t0)
    sd a0, 0x128(s0)
    li s2, -1                       /* execute-only U page, MXR clear: not readable */
    la s9, 1f
    li t0, VA(8)
    lw t0, 0(t0)
1:  sd s2, 0x130(s0)
    li s2, -1                       /* the UART page is not U */
    la s9, 1f
    li t0, UART_THR
    sb zero, 0(t0)
1:  sd s2, 0x138(s0)
    la s9, s_back                   /* back to S, at the identity address */
    li t0, UALIAS
    sub s9, s9, t0
    li a7, 0x53
    ecall
s_back:
    li a7, 0
    li s0, VA(4)                    /* SUM is still set */
    ld a0, 0x100(s0)
    CHECK 94, a0, 0x4444444444444444
    ld a0, 8(s0)
    CHECK 95, a0, 0x99
    ld a0, 0x108(s0)
    CHECK 96, a0, 13
    ld a0, 0x110(s0)
    CHECK 97, a0, VA(1)
    ld a0, 0x118(s0)
    CHECK 98, a0, 12
    ld a0, 0x120(s0)
    CHECK 99, a0, VA(3)
    ld a0, 0x128(s0)
    CHECK 100, a0, 0x77
    ld a0, 0x130(s0)
    CHECK 101, a0, 13
    ld a0, 0x138(s0)
    CHECK 102, a0, 15
    CHECK 103, s2, 8                /* the way back was an ecall from U */
    li t0, MSTATUS_SUM
    csrc sstatus, t0
    la t0, s_trap_record
    csrw stvec, t0

    /* ---- back to M (ecall from S is not delegated): MPRV ---- */
    la s9, in_m
    ecall
in_m:
    CHECK 81, s2, 9
    csrr a0, mscratch               /* in M: no trap */
    la t0, m_trap_record
    csrw mtvec, t0
    li t0, MSTATUS_MPRV | (1 << 11) /* M loads and stores as S */
    csrs mstatus, t0
    li s0, VA(1)
    ld a0, 0(s0)                    /* DATA1: 04 03 02 01 (check 73) 22 22 22 22 */
    CHECK 82, a0, 0x2222222201020304
    li s0, VA(5)
    li s2, -1
    la s9, 1f
    ld a0, 0(s0)                    /* faults, in M (medeleg never applies to M) */
1:  CHECK 83, s2, 13
    CHECK 84, s4, VA(5)
    li t0, MSTATUS_MPRV
    csrc mstatus, t0
    li s0, VA(1)                    /* without MPRV, M is untranslated: VA(1) is not RAM */
    li s2, -1
    la s9, 1f
    ld a0, 0(s0)
1:  CHECK 85, s2, 5

    PASS

/* S handler for the U-mode part: like s_trap_record, but returns to S when a7 = 0x53. */
    ALIGN4
s_handler:
    csrr s2, scause
    csrr s3, sepc
    csrr s4, stval
    csrr s5, sstatus
    csrw sepc, s9
    li t6, 0x53
    bne a7, t6, 1f
    li t6, MSTATUS_SPP
    csrs sstatus, t6
1:  sret

TEST_END
