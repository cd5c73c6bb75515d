/* Sv48 paging: see mmu.h for the page tables and what is checked. */
#define LEVELS 4
#include "common.h"
#include "mmu.h"
