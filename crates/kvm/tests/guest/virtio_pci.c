/*
 * virtio_pci.c - a freestanding x86-64 micro-guest that drives vireo's virtio-pci functions
 * (virtio 1.2 section 4.1, modern interface only) from bare metal.
 *
 * Environment (vireo's KVM micro-guest conventions): the flat binary is loaded at
 * guest-physical 0x100000 and entered at its first byte (_start, placed first by micro.ld) in
 * 64-bit mode at CPL0 with the low 4 GiB identity-mapped, RFLAGS.IF = 0 and a valid stack. The
 * host cannot deliver guest exceptions, so this code must never fault, never execute
 * int/int3/ud2, and never touch SSE/AVX registers (built with -mgeneral-regs-only).
 *
 * Output goes to COM1 (port 0x3f8); the run ends with a 32-bit store to the exit register at
 * 0xfeb00000: 0x5555 = success, (code << 16) | 0x3333 = failure `code` (a reason line is
 * printed first).
 *
 * What it does:
 *  1. Lists every function on PCI bus 0 through the CF8/CFC ports.
 *  2. For each virtio function: walks its capabilities, moves the BARs its structures live in
 *     to guest-chosen addresses (vireo puts everything in the 64-bit BAR0, which goes to
 *     0xd0000000 + device * 1 MiB), enables memory decoding and bus mastering, and
 *     initialises the device per section 3.1.1 with one split virtqueue of 8 entries.
 *  3. virtio-rng: MSI-X vector 0 -> LAPIC vector 0x51; reads 64 random bytes and checks that
 *     the MSI left vector 0x51 pending in the LAPIC IRR (interrupts stay disabled).
 *  4. virtio-blk: INTx path; reads the capacity, reads sector 0, writes sector 1, reads it back,
 *     and checks the ISR's read-to-clear behaviour after every completion.
 */

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef unsigned long uptr;

#define COM1 0x3f8
#define EXIT_REGISTER 0xfeb00000u
#define EXIT_SUCCESS_VALUE 0x5555u
#define EXIT_FAILURE_VALUE 0x3333u

#define LAPIC_BASE 0xfee00000u
#define LAPIC_SVR 0x0f0u
#define LAPIC_IRR 0x200u
#define MSI_VECTOR 0x51u

/* Failure codes (the guest's exit status). */
enum {
	E_NO_RNG = 1,
	E_NO_BLK = 2,
	E_CAPS = 3,
	E_BAR = 4,
	E_STATUS = 5,
	E_VERSION_1 = 6,
	E_FEATURES_OK = 7,
	E_QUEUE = 8,
	E_MSIX = 9,
	E_TIMEOUT = 10,
	E_RNG_DATA = 11,
	E_IRR = 12,
	E_BLK_REQUEST = 13,
	E_BLK_DATA = 14,
	E_ISR = 15,
	E_NEEDS_RESET = 16,
};

/* Entry point: the first byte of the image. RFLAGS.IF is already 0 and stays so (no cli/sti
 * here). Align the stack as the ABI expects, run, and spin if guest_main ever returns (it does
 * not: it always ends on the exit register). `hlt` is not used: with the in-kernel irqchip a
 * halted vCPU with IF=0 is reported as hung. */
__asm__(".section .text.start, \"ax\", @progbits\n"
	".globl _start\n"
	".type _start, @function\n"
	"_start:\n"
	"\tandq $-16, %rsp\n"
	"\tcall guest_main\n"
	"0:\tjmp 0b\n"
	".size _start, . - _start\n"
	".previous\n");

void guest_main(void);

/* ---------------------------------------------------------------------------------------- */
/* Low-level access                                                                          */

static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" : : "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" : : "a"(v), "Nd"(port)); }

static inline u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u16 inw(u16 port)
{
	u16 v;
	__asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

static inline u32 inl(u16 port)
{
	u32 v;
	__asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

/* MMIO: exactly one plain `mov` of the given width per access (the simplest form for the
 * hypervisor's instruction emulation), ordered against all other memory accesses. */
static inline u8 mmio_r8(u64 a)
{
	u8 v;
	__asm__ volatile("movb (%1), %0" : "=q"(v) : "r"(a) : "memory");
	return v;
}

static inline u16 mmio_r16(u64 a)
{
	u16 v;
	__asm__ volatile("movw (%1), %0" : "=r"(v) : "r"(a) : "memory");
	return v;
}

static inline u32 mmio_r32(u64 a)
{
	u32 v;
	__asm__ volatile("movl (%1), %0" : "=r"(v) : "r"(a) : "memory");
	return v;
}

static inline void mmio_w8(u64 a, u8 v) { __asm__ volatile("movb %0, (%1)" : : "q"(v), "r"(a) : "memory"); }
static inline void mmio_w16(u64 a, u16 v) { __asm__ volatile("movw %0, (%1)" : : "r"(v), "r"(a) : "memory"); }
static inline void mmio_w32(u64 a, u32 v) { __asm__ volatile("movl %0, (%1)" : : "r"(v), "r"(a) : "memory"); }

/* x86 is TSO: ordering between the driver's stores as the device sees them only needs the
 * compiler not to reorder them. */
static inline void barrier(void) { __asm__ volatile("" : : : "memory"); }
static inline void cpu_relax(void) { __asm__ volatile("pause" : : : "memory"); }

static inline u64 phys(const volatile void *p) { return (u64)(uptr)p; }

/* The compiler may emit calls to these even in freestanding code. String instructions keep
 * them from being turned back into calls to themselves. */
void *memset(void *d, int c, unsigned long n)
{
	void *ret = d;
	__asm__ volatile("rep stosb" : "+D"(d), "+c"(n) : "a"(c) : "memory");
	return ret;
}

void *memcpy(void *d, const void *s, unsigned long n)
{
	void *ret = d;
	__asm__ volatile("rep movsb" : "+D"(d), "+S"(s), "+c"(n) : : "memory");
	return ret;
}

/* ---------------------------------------------------------------------------------------- */
/* Console and exit                                                                          */

static void putc_(char c) { outb(COM1, (u8)c); }

static void puts_(const char *s)
{
	while (*s)
		putc_(*s++);
}

static void put_hex(u64 v, int digits)
{
	static const char hex[] = "0123456789abcdef";
	for (int i = digits - 1; i >= 0; i--)
		putc_(hex[(v >> (i * 4)) & 0xf]);
}

static void put_dec(u64 v)
{
	char buf[24];
	int n = 0;
	do {
		buf[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v != 0);
	while (n > 0)
		putc_(buf[--n]);
}

static void put_bdf(u32 dev)
{
	puts_("00:");
	put_hex(dev, 2);
	puts_(".0");
}

static void __attribute__((noreturn)) exit_with(u32 value)
{
	mmio_w32(EXIT_REGISTER, value);
	for (;;)
		barrier();
}

static void __attribute__((noreturn)) fail(u32 code, const char *why)
{
	puts_("FAIL: ");
	puts_(why);
	puts_("\n");
	exit_with((code << 16) | EXIT_FAILURE_VALUE);
}

/* A failure that names a value: "FAIL: <why> 0x<v>". */
static void __attribute__((noreturn)) fail_hex(u32 code, const char *why, u64 v)
{
	puts_("FAIL: ");
	puts_(why);
	puts_(" 0x");
	put_hex(v, 8);
	puts_("\n");
	exit_with((code << 16) | EXIT_FAILURE_VALUE);
}

/* ---------------------------------------------------------------------------------------- */
/* PCI configuration mechanism #1 (bus 0, function 0 only)                                   */

#define PCI_ADDR 0xcf8
#define PCI_DATA 0xcfc

#define PCI_VENDOR 0x00
#define PCI_DEVICE 0x02
#define PCI_COMMAND 0x04
#define PCI_STATUS 0x06
#define PCI_REVISION 0x08
#define PCI_BAR0 0x10
#define PCI_BAR1 0x14
#define PCI_CAP_PTR 0x34

#define PCI_CMD_MEMORY (1u << 1)
#define PCI_CMD_BUS_MASTER (1u << 2)
#define PCI_STATUS_CAP_LIST (1u << 4)

#define PCI_CAP_VENDOR 0x09
#define PCI_CAP_MSIX 0x11

static void pci_select(u32 dev, u32 reg) { outl(PCI_ADDR, 0x80000000u | (dev << 11) | (reg & 0xfc)); }

static u32 pci_r32(u32 dev, u32 reg)
{
	pci_select(dev, reg);
	return inl(PCI_DATA);
}

static u16 pci_r16(u32 dev, u32 reg)
{
	pci_select(dev, reg);
	return inw((u16)(PCI_DATA + (reg & 2)));
}

static u8 pci_r8(u32 dev, u32 reg)
{
	pci_select(dev, reg);
	return inb((u16)(PCI_DATA + (reg & 3)));
}

static void pci_w32(u32 dev, u32 reg, u32 v)
{
	pci_select(dev, reg);
	outl(PCI_DATA, v);
}

static void pci_w16(u32 dev, u32 reg, u16 v)
{
	pci_select(dev, reg);
	outw((u16)(PCI_DATA + (reg & 2)), v);
}

/* ---------------------------------------------------------------------------------------- */
/* Virtio structures (virtio 1.2 sections 2.7 and 4.1.4)                                     */

#define VIRTIO_VENDOR 0x1af4
#define VIRTIO_DEVICE_BASE 0x1040
#define VIRTIO_TYPE_BLOCK 2
#define VIRTIO_TYPE_RNG 4

/* virtio_pci_cap cfg_type */
#define CAP_COMMON 1
#define CAP_NOTIFY 2
#define CAP_ISR 3
#define CAP_DEVICE 4

/* Common configuration (struct virtio_pci_common_cfg) */
#define CC_DEVICE_FEATURE_SELECT 0x00
#define CC_DEVICE_FEATURE 0x04
#define CC_DRIVER_FEATURE_SELECT 0x08
#define CC_DRIVER_FEATURE 0x0c
#define CC_CONFIG_MSIX_VECTOR 0x10
#define CC_NUM_QUEUES 0x12
#define CC_DEVICE_STATUS 0x14
#define CC_CONFIG_GENERATION 0x15
#define CC_QUEUE_SELECT 0x16
#define CC_QUEUE_SIZE 0x18
#define CC_QUEUE_MSIX_VECTOR 0x1a
#define CC_QUEUE_ENABLE 0x1c
#define CC_QUEUE_NOTIFY_OFF 0x1e
#define CC_QUEUE_DESC 0x20
#define CC_QUEUE_DRIVER 0x28
#define CC_QUEUE_DEVICE 0x30

/* device_status bits (section 2.1) */
#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 64
#define S_FAILED 128

#define NO_VECTOR 0xffff

/* Split virtqueue (section 2.7) */
#define QSZ 8
#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2

struct vring_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct vring_avail {
	u16 flags;
	u16 idx;
	u16 ring[QSZ];
	u16 used_event;
};

struct vring_used_elem {
	u32 id;
	u32 len;
};

struct vring_used {
	u16 flags;
	u16 idx;
	struct vring_used_elem ring[QSZ];
	u16 avail_event;
};

/* One queue's rings, each on its own page (the spec asks for 16/2/4-byte alignment). */
struct vring {
	volatile struct vring_desc desc[QSZ] __attribute__((aligned(4096)));
	volatile struct vring_avail avail __attribute__((aligned(4096)));
	volatile struct vring_used used __attribute__((aligned(4096)));
};

/* A structure a capability points at: `length` bytes at `offset` in BAR `bar`, and its
 * guest-physical address once the BARs are placed. */
struct region {
	u32 bar;
	u32 offset;
	u32 length;
	u64 addr;
};

struct vdev {
	u32 dev;        /* PCI device number on bus 0 */
	u32 type;       /* virtio device type */
	struct region common, notify, isr, devcfg;
	u32 notify_mult;
	u32 found;      /* bit n set: cfg_type n was found */
	u32 msix_cap;   /* config offset of the MSI-X capability, 0 if none */
	struct region msix_table;
	u32 msix_vectors;
	u32 bars_used;  /* bit n set: a structure lives in BAR n */
	u64 bar_base[6];
	u64 bar_size[6];
	u64 notify_addr; /* queue 0's doorbell */
	struct vring *vq;
	u16 avail_idx;  /* next free avail slot (free-running) */
	u16 used_idx;   /* next used entry to consume (free-running) */
};

/* Guest memory the devices read and write: static, page-aligned, identity-mapped RAM. */
static struct vring rng_ring __attribute__((aligned(4096)));
static struct vring blk_ring __attribute__((aligned(4096)));
static volatile u8 rng_buf[64] __attribute__((aligned(4096)));

struct blk_req_header {
	u32 type;
	u32 reserved;
	u64 sector;
};
#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1

static volatile struct blk_req_header blk_header __attribute__((aligned(4096)));
static volatile u8 blk_status __attribute__((aligned(16)));
static volatile u8 blk_data[512] __attribute__((aligned(4096)));
static u8 blk_pattern[512];

/* Up to 31 virtio functions (device numbers 1..31). */
static struct vdev vdevs[32];
static u32 nvdevs;

/* ---------------------------------------------------------------------------------------- */
/* Helpers                                                                                   */

static u8 cc_r8(struct vdev *d, u32 off) { return mmio_r8(d->common.addr + off); }
static u16 cc_r16(struct vdev *d, u32 off) { return mmio_r16(d->common.addr + off); }
static u32 cc_r32(struct vdev *d, u32 off) { return mmio_r32(d->common.addr + off); }
static void cc_w8(struct vdev *d, u32 off, u8 v) { mmio_w8(d->common.addr + off, v); }
static void cc_w16(struct vdev *d, u32 off, u16 v) { mmio_w16(d->common.addr + off, v); }
static void cc_w32(struct vdev *d, u32 off, u32 v) { mmio_w32(d->common.addr + off, v); }

/* 64-bit common-config fields are written as two 32-bit halves, low first. */
static void cc_w64(struct vdev *d, u32 off, u64 v)
{
	cc_w32(d, off, (u32)v);
	cc_w32(d, off + 4, (u32)(v >> 32));
}

static void __attribute__((noreturn)) dev_fail(struct vdev *d, u32 code, const char *why)
{
	puts_("virtio ");
	put_bdf(d->dev);
	puts_(": ");
	fail(code, why);
}

/* 200 million polls with a `pause` each (roughly 1-10 s depending on the CPU, inside the
 * host's 20 s limit): a device that never answers is reported, never waited on forever.
 * vireo's devices complete synchronously, within the doorbell write, so the first poll
 * normally succeeds. */
#define POLL_ITERATIONS 200000000u

static int wait_u16(volatile u16 *p, u16 want)
{
	for (u32 i = 0; i < POLL_ITERATIONS; i++) {
		if (*p == want)
			return 1;
		cpu_relax();
	}
	return *p == want;
}

/* ---------------------------------------------------------------------------------------- */
/* Discovery                                                                                 */

static void walk_caps(struct vdev *d)
{
	u32 dev = d->dev;
	if (!(pci_r16(dev, PCI_STATUS) & PCI_STATUS_CAP_LIST))
		dev_fail(d, E_CAPS, "no capability list (status bit 4 clear)");
	u32 at = pci_r8(dev, PCI_CAP_PTR) & 0xfc;
	/* 48 capabilities fit in the 192 bytes past the header: more means a loop. */
	for (int n = 0; at != 0 && n < 48; n++) {
		u8 id = pci_r8(dev, at);
		u8 next = pci_r8(dev, at + 1);
		if (id == PCI_CAP_VENDOR) {
			u8 cfg_type = pci_r8(dev, at + 3);
			u8 bar = pci_r8(dev, at + 4);
			u32 offset = pci_r32(dev, at + 8);
			u32 length = pci_r32(dev, at + 12);
			if (cfg_type >= CAP_COMMON && cfg_type <= CAP_DEVICE &&
			    !(d->found & (1u << cfg_type))) {
				/* The first capability of each type is the one to use (4.1.4.1). */
				struct region r = { bar, offset, length, 0 };
				if (bar > 5)
					dev_fail(d, E_CAPS, "virtio capability names a BAR above 5");
				if (length == 0 || offset + length < offset)
					dev_fail(d, E_CAPS, "virtio capability with an empty or wrapping range");
				d->found |= 1u << cfg_type;
				d->bars_used |= 1u << bar;
				switch (cfg_type) {
				case CAP_COMMON:
					if (length < 0x38)
						dev_fail(d, E_CAPS, "common configuration shorter than 0x38");
					d->common = r;
					break;
				case CAP_NOTIFY:
					d->notify = r;
					d->notify_mult = pci_r32(dev, at + 16);
					break;
				case CAP_ISR:
					d->isr = r;
					break;
				case CAP_DEVICE:
					d->devcfg = r;
					break;
				}
			}
		} else if (id == PCI_CAP_MSIX && d->msix_cap == 0) {
			u16 ctrl = pci_r16(dev, at + 2);
			u32 table = pci_r32(dev, at + 4);
			d->msix_cap = at;
			d->msix_vectors = (ctrl & 0x7ffu) + 1;
			d->msix_table.bar = table & 7;
			d->msix_table.offset = table & ~7u;
			d->msix_table.length = d->msix_vectors * 16;
			if (d->msix_table.bar > 5)
				dev_fail(d, E_MSIX, "MSI-X table in a BAR above 5");
			d->bars_used |= 1u << d->msix_table.bar;
		}
		at = next & 0xfc;
	}
	if (at != 0)
		dev_fail(d, E_CAPS, "capability list does not end");
	u32 all = (1u << CAP_COMMON) | (1u << CAP_NOTIFY) | (1u << CAP_ISR) | (1u << CAP_DEVICE);
	if ((d->found & all) != all)
		dev_fail(d, E_CAPS, "missing a common/notify/ISR/device capability");
}

/* Places `r` in its (already moved) BAR. */
static void place(struct vdev *d, struct region *r, const char *what)
{
	if (d->bar_size[r->bar] == 0 || (u64)r->offset + r->length > d->bar_size[r->bar]) {
		puts_("virtio ");
		put_bdf(d->dev);
		puts_(": ");
		puts_(what);
		puts_(" does not fit in BAR ");
		put_dec(r->bar);
		puts_("\n");
		fail(E_CAPS, "virtio structure outside its BAR");
	}
	r->addr = d->bar_base[r->bar] + r->offset;
}

/* Moves every memory BAR the capabilities use to a guest-chosen address, BAR n of device `dev`
 * at 0xd0000000 + dev * 1 MiB + n * 64 KiB (vireo's BAR0: 0xd0000000 + dev * 1 MiB), checks
 * the registers read back, and turns on memory decoding and bus mastering. */
static void move_bars(struct vdev *d)
{
	u32 dev = d->dev;
	/* Which BAR registers are upper halves of 64-bit BARs (they cannot hold structures). */
	u32 upper = 0;
	for (u32 i = 0; i < 6; i++) {
		u32 v = pci_r32(dev, PCI_BAR0 + 4 * i);
		if (!(v & 1) && ((v >> 1) & 3) == 2)
			upper |= 1u << ++i;
	}
	if (d->bars_used & upper)
		dev_fail(d, E_BAR, "a capability names the upper half of a 64-bit BAR");
	/* Decoding stays off while BARs are sized and half-written. */
	pci_w16(dev, PCI_COMMAND, 0);
	for (u32 i = 0; i < 6; i++) {
		if (!(d->bars_used & (1u << i)))
			continue;
		u32 reg = PCI_BAR0 + 4 * i;
		u32 low = pci_r32(dev, reg);
		if (low & 1)
			fail_hex(E_BAR, "virtio structures in an I/O BAR; BAR register", low);
		int is64 = ((low >> 1) & 3) == 2;
		if (is64 && i == 5)
			dev_fail(d, E_BAR, "64-bit BAR 5 has no upper half");
		/* Size it: all ones, read back the address bits that stuck. */
		pci_w32(dev, reg, 0xffffffffu);
		u64 mask = 0xffffffff00000000ull | (pci_r32(dev, reg) & ~0xfu);
		if (is64) {
			pci_w32(dev, reg + 4, 0xffffffffu);
			mask = ((u64)pci_r32(dev, reg + 4) << 32) | (mask & 0xffffffffu);
		}
		u64 size = ~mask + 1;
		if (size < 16 || size > 0x10000 || (size & (size - 1)) != 0)
			fail_hex(E_BAR, "BAR size not a power of two up to 64 KiB:", size);
		u64 target = 0xd0000000ull + ((u64)dev << 20) + ((u64)i << 16);
		pci_w32(dev, reg, (u32)target);
		if (is64)
			pci_w32(dev, reg + 4, (u32)(target >> 32));
		u64 got = pci_r32(dev, reg) & ~0xfu;
		if (is64)
			got |= (u64)pci_r32(dev, reg + 4) << 32;
		if (got != target)
			fail_hex(E_BAR, "BAR did not take the new address; reads back", got);
		d->bar_base[i] = target;
		d->bar_size[i] = size;
		puts_("virtio ");
		put_bdf(dev);
		puts_(" type ");
		put_dec(d->type);
		puts_(" bar");
		put_dec(i);
		puts_("=0x");
		put_hex(target, 8);
		puts_(is64 ? " (64-bit) size 0x" : " size 0x");
		put_hex(size, 4);
		puts_("\n");
	}
	place(d, &d->common, "common configuration");
	place(d, &d->notify, "notify structure");
	place(d, &d->isr, "ISR");
	place(d, &d->devcfg, "device configuration");
	if (d->msix_cap)
		place(d, &d->msix_table, "MSI-X table");
	pci_w16(dev, PCI_COMMAND, PCI_CMD_MEMORY | PCI_CMD_BUS_MASTER);
	u16 cmd = pci_r16(dev, PCI_COMMAND);
	if ((cmd & (PCI_CMD_MEMORY | PCI_CMD_BUS_MASTER)) != (PCI_CMD_MEMORY | PCI_CMD_BUS_MASTER))
		fail_hex(E_BAR, "COMMAND did not keep memory + bus master; reads", cmd);
}

/* ---------------------------------------------------------------------------------------- */
/* Device initialisation (section 3.1.1)                                                     */

static void set_status(struct vdev *d, u8 s) { cc_w8(d, CC_DEVICE_STATUS, s); }

/* Steps 1-6: reset, ACKNOWLEDGE, DRIVER, negotiate VERSION_1 only, FEATURES_OK. */
static void init_begin(struct vdev *d)
{
	set_status(d, 0);
	if (cc_r8(d, CC_DEVICE_STATUS) != 0)
		dev_fail(d, E_STATUS, "device_status not 0 after reset");
	set_status(d, S_ACKNOWLEDGE);
	set_status(d, S_ACKNOWLEDGE | S_DRIVER);
	cc_w32(d, CC_DEVICE_FEATURE_SELECT, 1);
	u32 hi = cc_r32(d, CC_DEVICE_FEATURE);
	if (!(hi & 1))
		dev_fail(d, E_VERSION_1, "VIRTIO_F_VERSION_1 (feature bit 32) not offered");
	cc_w32(d, CC_DRIVER_FEATURE_SELECT, 0);
	cc_w32(d, CC_DRIVER_FEATURE, 0);
	cc_w32(d, CC_DRIVER_FEATURE_SELECT, 1);
	cc_w32(d, CC_DRIVER_FEATURE, 1);
	set_status(d, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
	if (!(cc_r8(d, CC_DEVICE_STATUS) & S_FEATURES_OK))
		dev_fail(d, E_FEATURES_OK, "FEATURES_OK did not stick");
	if (cc_r16(d, CC_NUM_QUEUES) < 1)
		dev_fail(d, E_QUEUE, "num_queues is 0");
	cc_w16(d, CC_CONFIG_MSIX_VECTOR, NO_VECTOR);
	d->notify_addr = 0;
}

/* Step 7 for queue 0: size QSZ, rings in `vq`; `vector` is its MSI-X vector (NO_VECTOR for
 * none). */
static void setup_queue0(struct vdev *d, struct vring *vq, u16 vector)
{
	cc_w16(d, CC_QUEUE_SELECT, 0);
	u16 max = cc_r16(d, CC_QUEUE_SIZE);
	if (max < QSZ)
		fail_hex(E_QUEUE, "queue 0 maximum size below 8:", max);
	if (cc_r16(d, CC_QUEUE_ENABLE) != 0)
		dev_fail(d, E_QUEUE, "queue 0 enabled after reset");
	cc_w16(d, CC_QUEUE_SIZE, QSZ);
	if (cc_r16(d, CC_QUEUE_SIZE) != QSZ)
		dev_fail(d, E_QUEUE, "queue 0 did not accept size 8");
	if (vector != NO_VECTOR) {
		cc_w16(d, CC_QUEUE_MSIX_VECTOR, vector);
		u16 got = cc_r16(d, CC_QUEUE_MSIX_VECTOR);
		if (got != vector)
			fail_hex(E_MSIX, "queue_msix_vector not accepted; reads back", got);
	}
	d->vq = vq;
	d->avail_idx = 0;
	d->used_idx = 0;
	vq->avail.flags = 0;
	vq->avail.idx = 0;
	vq->used.flags = 0;
	vq->used.idx = 0;
	barrier();
	cc_w64(d, CC_QUEUE_DESC, phys(vq->desc));
	cc_w64(d, CC_QUEUE_DRIVER, phys(&vq->avail));
	cc_w64(d, CC_QUEUE_DEVICE, phys(&vq->used));
	u16 notify_off = cc_r16(d, CC_QUEUE_NOTIFY_OFF);
	d->notify_addr = d->notify.addr + (u64)notify_off * d->notify_mult;
	if ((u64)notify_off * d->notify_mult + 2 > d->notify.length)
		dev_fail(d, E_QUEUE, "queue 0's doorbell lies outside the notify structure");
	cc_w16(d, CC_QUEUE_ENABLE, 1);
	if (cc_r16(d, CC_QUEUE_ENABLE) != 1)
		dev_fail(d, E_QUEUE, "queue_enable did not read back 1");
}

/* Step 8: DRIVER_OK, and the device must not have asked for a reset. */
static void init_finish(struct vdev *d)
{
	set_status(d, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
	u8 s = cc_r8(d, CC_DEVICE_STATUS);
	if (s & S_NEEDS_RESET)
		dev_fail(d, E_NEEDS_RESET, "DEVICE_NEEDS_RESET after DRIVER_OK");
	if (!(s & S_DRIVER_OK))
		fail_hex(E_STATUS, "DRIVER_OK did not stick; device_status", s);
}

/* Publishes the chain starting at `head`, kicks queue 0 and waits for the device to return it.
 * Returns the used length. */
static u32 submit_and_wait(struct vdev *d, u16 head)
{
	struct vring *vq = d->vq;
	/* Descriptors first, then the ring entry, then the index that publishes it (2.7.13). */
	barrier();
	vq->avail.ring[d->avail_idx % QSZ] = head;
	barrier();
	d->avail_idx++;
	vq->avail.idx = d->avail_idx;
	barrier();
	mmio_w16(d->notify_addr, 0);
	u16 want = (u16)(d->used_idx + 1);
	if (!wait_u16(&vq->used.idx, want)) {
		puts_("virtio ");
		put_bdf(d->dev);
		puts_(": timeout: used.idx stayed at 0x");
		put_hex(vq->used.idx, 4);
		puts_("\n");
		fail(E_TIMEOUT, "timed out waiting for the used ring");
	}
	barrier();
	volatile struct vring_used_elem *e = &vq->used.ring[d->used_idx % QSZ];
	u32 id = e->id;
	u32 len = e->len;
	d->used_idx = want;
	if (id != head)
		fail_hex(E_QUEUE, "used entry names the wrong head:", id);
	u8 s = cc_r8(d, CC_DEVICE_STATUS);
	if (s & S_NEEDS_RESET)
		dev_fail(d, E_NEEDS_RESET, "DEVICE_NEEDS_RESET after a request");
	return len;
}

/* ---------------------------------------------------------------------------------------- */
/* virtio-rng over MSI-X                                                                     */

static u32 lapic_r32(u32 reg) { return mmio_r32(LAPIC_BASE + reg); }
static void lapic_w32(u32 reg, u32 v) { mmio_w32(LAPIC_BASE + reg, v); }

static int irr_has(u32 vector)
{
	return (lapic_r32(LAPIC_IRR + 0x10 * (vector / 32)) >> (vector % 32)) & 1;
}

static void drive_rng(struct vdev *d)
{
	if (d->msix_cap == 0)
		dev_fail(d, E_MSIX, "virtio-rng has no MSI-X capability");

	/* The local APIC must be software-enabled to accept the message. */
	lapic_w32(LAPIC_SVR, 0x1ff);
	if (irr_has(MSI_VECTOR))
		dev_fail(d, E_IRR, "vector 0x51 already pending before the request");

	/* MSI-X table entry 0: fixed delivery, edge, vector 0x51 to APIC 0; unmasked. */
	u64 entry = d->msix_table.addr;
	mmio_w32(entry + 0, LAPIC_BASE);
	mmio_w32(entry + 4, 0);
	mmio_w32(entry + 8, MSI_VECTOR);
	mmio_w32(entry + 12, 0);
	if (mmio_r32(entry + 8) != MSI_VECTOR || (mmio_r32(entry + 12) & 1))
		dev_fail(d, E_MSIX, "MSI-X table entry 0 did not read back");
	/* Message control: enable (bit 15), function mask (bit 14) clear. */
	u16 ctrl = pci_r16(d->dev, d->msix_cap + 2);
	pci_w16(d->dev, d->msix_cap + 2, (u16)((ctrl | 0x8000u) & ~0x4000u));
	ctrl = pci_r16(d->dev, d->msix_cap + 2);
	if ((ctrl & 0xc000u) != 0x8000u)
		fail_hex(E_MSIX, "MSI-X message control did not enable; reads", ctrl);

	init_begin(d);
	if (cc_r16(d, CC_CONFIG_MSIX_VECTOR) != NO_VECTOR)
		dev_fail(d, E_MSIX, "config_msix_vector does not read back NO_VECTOR");
	setup_queue0(d, &rng_ring, 0);
	init_finish(d);

	for (int i = 0; i < 64; i++)
		rng_buf[i] = 0;
	struct vring *vq = d->vq;
	vq->desc[0].addr = phys(rng_buf);
	vq->desc[0].len = 64;
	vq->desc[0].flags = VRING_DESC_F_WRITE;
	vq->desc[0].next = 0;
	u32 len = submit_and_wait(d, 0);
	barrier();

	puts_("rng: ");
	u32 nonzero = 0;
	for (int i = 0; i < 64; i++) {
		put_hex(rng_buf[i], 2);
		nonzero |= rng_buf[i];
	}
	puts_("\n");
	if (len != 64)
		fail_hex(E_RNG_DATA, "rng used length is not 64:", len);
	if (nonzero == 0)
		fail(E_RNG_DATA, "rng returned 64 zero bytes");

	/* The MSI is sent before the device returns from the doorbell write; poll briefly anyway
	 * (each LAPIC read is an exit). Interrupts stay off, so it stays pending in the IRR. */
	int pending = 0;
	for (u32 i = 0; i < 100000u && !pending; i++)
		pending = irr_has(MSI_VECTOR);
	if (!pending)
		fail(E_IRR, "MSI-X vector 0x51 is not pending in the LAPIC IRR");
	puts_("msix irr=1\n");
}

/* ---------------------------------------------------------------------------------------- */
/* virtio-blk over INTx                                                                      */

/* Reads the ISR (acknowledging it) and checks it said "used buffer", then that it cleared.
 * The device's I/O thread publishes the used entry before it raises the interrupt, so a
 * driver that polled the ring may be early: poll the ISR briefly (each read is an exit). */
static void check_isr(struct vdev *d)
{
	u8 first = 0;
	for (u32 i = 0; i < 100000u && !(first & 1); i++)
		first = mmio_r8(d->isr.addr);
	if (!(first & 1))
		fail_hex(E_ISR, "ISR bit 0 not set after a completion; ISR", first);
	u8 second = mmio_r8(d->isr.addr);
	if (second != 0)
		fail_hex(E_ISR, "ISR not cleared by reading it; second read", second);
}

static void blk_request(struct vdev *d, u32 type, u64 sector)
{
	struct vring *vq = d->vq;
	blk_header.type = type;
	blk_header.reserved = 0;
	blk_header.sector = sector;
	blk_status = 0xff;
	vq->desc[0].addr = phys(&blk_header);
	vq->desc[0].len = sizeof(struct blk_req_header);
	vq->desc[0].flags = VRING_DESC_F_NEXT;
	vq->desc[0].next = 1;
	vq->desc[1].addr = phys(blk_data);
	vq->desc[1].len = 512;
	vq->desc[1].flags = (u16)(VRING_DESC_F_NEXT | (type == VIRTIO_BLK_T_IN ? VRING_DESC_F_WRITE : 0));
	vq->desc[1].next = 2;
	vq->desc[2].addr = phys(&blk_status);
	vq->desc[2].len = 1;
	vq->desc[2].flags = VRING_DESC_F_WRITE;
	vq->desc[2].next = 0;
	u32 len = submit_and_wait(d, 0);
	barrier();
	if (blk_status != 0)
		fail_hex(E_BLK_REQUEST, "blk request status not OK:", blk_status);
	/* The used length counts the bytes written: the data for a read, plus the status byte. */
	u32 want = type == VIRTIO_BLK_T_IN ? 513 : 1;
	if (len != want)
		fail_hex(E_BLK_REQUEST, "blk used length wrong:", len);
	check_isr(d);
}

static void drive_blk(struct vdev *d)
{
	init_begin(d);
	setup_queue0(d, &blk_ring, NO_VECTOR);
	init_finish(d);

	/* capacity: le64 at offset 0, read as two dwords inside a stable config generation. */
	u64 capacity = 0;
	int stable = 0;
	for (int tries = 0; tries < 100 && !stable; tries++) {
		u8 g0 = cc_r8(d, CC_CONFIG_GENERATION);
		u32 lo = mmio_r32(d->devcfg.addr + 0);
		u32 hi = mmio_r32(d->devcfg.addr + 4);
		u8 g1 = cc_r8(d, CC_CONFIG_GENERATION);
		capacity = ((u64)hi << 32) | lo;
		stable = g0 == g1;
	}
	if (!stable)
		dev_fail(d, E_STATUS, "config_generation never settled");
	if (d->devcfg.length < 8)
		dev_fail(d, E_CAPS, "device configuration shorter than the 8-byte capacity");
	puts_("blk capacity=");
	put_dec(capacity);
	puts_("\n");
	if (capacity < 2)
		dev_fail(d, E_BLK_REQUEST, "disk smaller than 2 sectors");

	blk_request(d, VIRTIO_BLK_T_IN, 0);
	puts_("blk sector0=");
	for (int i = 0; i < 16; i++)
		put_hex(blk_data[i], 2);
	puts_("\n");

	for (int i = 0; i < 512; i++) {
		blk_pattern[i] = (u8)(i * 7 + 3);
		blk_data[i] = blk_pattern[i];
	}
	blk_request(d, VIRTIO_BLK_T_OUT, 1);

	for (int i = 0; i < 512; i++)
		blk_data[i] = 0;
	blk_request(d, VIRTIO_BLK_T_IN, 1);
	for (int i = 0; i < 512; i++) {
		if (blk_data[i] != blk_pattern[i]) {
			puts_("blk sector1 byte 0x");
			put_hex((u64)i, 3);
			puts_(" is 0x");
			put_hex(blk_data[i], 2);
			puts_(", wrote 0x");
			put_hex(blk_pattern[i], 2);
			puts_("\n");
			fail(E_BLK_DATA, "sector 1 read back differs from what was written");
		}
	}
	puts_("blk write-read ok\n");
	puts_("isr ok\n");
}

/* ---------------------------------------------------------------------------------------- */

void guest_main(void)
{
	puts_("virtio-pci micro-guest\n");

	for (u32 dev = 0; dev < 32; dev++) {
		u32 id = pci_r32(dev, PCI_VENDOR);
		u16 vendor = (u16)id;
		u16 device = (u16)(id >> 16);
		if (vendor == 0xffff)
			continue;
		u32 class_code = pci_r32(dev, PCI_REVISION) >> 8;
		puts_("pci ");
		put_bdf(dev);
		puts_(" ");
		put_hex(vendor, 4);
		puts_(":");
		put_hex(device, 4);
		puts_(" class ");
		put_hex(class_code, 6);
		puts_("\n");
		if (vendor == VIRTIO_VENDOR && device >= VIRTIO_DEVICE_BASE && nvdevs < 32) {
			struct vdev *d = &vdevs[nvdevs++];
			d->dev = dev;
			d->type = (u32)(device - VIRTIO_DEVICE_BASE);
		}
	}

	struct vdev *rng = 0, *blk = 0;
	for (u32 i = 0; i < nvdevs; i++) {
		struct vdev *d = &vdevs[i];
		if (d->type == VIRTIO_TYPE_RNG && !rng) {
			rng = d;
		} else if (d->type == VIRTIO_TYPE_BLOCK && !blk) {
			blk = d;
		} else {
			puts_("virtio ");
			put_bdf(d->dev);
			puts_(" type ");
			put_dec(d->type);
			puts_(": listed, not driven\n");
		}
	}
	if (!rng && !blk)
		fail(E_NO_RNG, "no virtio-rng and no virtio-blk function found");
	if (!rng)
		fail(E_NO_RNG, "no virtio-rng function found");
	if (!blk)
		fail(E_NO_BLK, "no virtio-blk function found");

	walk_caps(rng);
	move_bars(rng);
	drive_rng(rng);

	walk_caps(blk);
	move_bars(blk);
	drive_blk(blk);

	puts_("virtio-pci guest done\n");
	exit_with(EXIT_SUCCESS_VALUE);
}
