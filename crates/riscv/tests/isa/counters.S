/* Zicntr counters advance while a program runs: minstret/instret count retired instructions and
 * mcycle/cycle count cycles, so two reads with 20 instructions between them must differ (by at
 * least 20 for instret; by at least 1 for cycle, whose rate is implementation-defined). */
#include "common.h"

.macro TWENTY_NOPS
    .rept 20
    nop
    .endr
.endm

TEST_BEGIN
    csrr a0, minstret
    TWENTY_NOPS
    csrr a1, minstret
    sub a2, a1, a0
    sltiu a3, a2, 20                /* a3 = (delta < 20) */
    mv s10, a2
    CHECK 1, a3, 0

    rdinstret a0
    TWENTY_NOPS
    rdinstret a1
    sub a2, a1, a0
    sltiu a3, a2, 20
    CHECK 2, a3, 0

    csrr a0, mcycle
    TWENTY_NOPS
    csrr a1, mcycle
    sltu a3, a0, a1
    CHECK 3, a3, 1

    rdcycle a0
    TWENTY_NOPS
    rdcycle a1
    sltu a3, a0, a1
    CHECK 4, a3, 1

    PASS
TEST_END
