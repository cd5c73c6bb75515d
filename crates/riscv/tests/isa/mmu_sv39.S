/* Sv39 paging: see mmu.h for the page tables and what is checked. */
#define LEVELS 3
#include "common.h"
#include "mmu.h"
