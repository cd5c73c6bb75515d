/* Page-table helpers shared by the MMU programs: PTE bits, the test VA window, and macros to
 * write PTEs and data and to expect a fault in S-mode (its handler records in s2/s4). */

#define PTE_V 0x01
#define PTE_R 0x02
#define PTE_W 0x04
#define PTE_X 0x08
#define PTE_U 0x10
#define PTE_A 0x40
#define PTE_D 0x80

#define VA(i) (0x40000000 + (i) * 0x1000)

/* table[index] = a PTE for physical address pa with flags */
.macro PTE table, index, pa, flags
    li t0, (((\pa) >> 12) << 10) | (\flags)
    li t1, (\table) + 8 * (\index)
    sd t0, 0(t1)
.endm

/* 64-bit store of a constant to a physical address (M-mode, no translation) */
.macro POKE addr, val
    li t0, \val
    li t1, \addr
    sd t0, 0(t1)
.endm

/* The instruction between FAULT and FAULTED must raise exception `cause` with stval = `tval`
 * (the S handler resumes after it); check numbers n (cause) and n+1 (tval). */
.macro FAULT
    li s2, -1
    la s9, 1f
.endm
.macro FAULTED n, cause, tval
1:  CHECK \n, s2, \cause
    CHECK (\n + 1), s4, \tval
.endm
