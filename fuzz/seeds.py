#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/TARGET/seed-*): for each device, inputs that make one
valid request (so the fuzzer starts inside the request parser, not at its door); for the
interpreter, the ISA test programs (run `python3 fuzz/seeds.py` after building them: it takes
their raw images from $VIREO_ISA_BIN, if set); for the config parser, real vm.toml files."""
import os, struct, sys

here = os.path.dirname(os.path.abspath(__file__))
RINGS = 0x1000


def put(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def desc(addr, length, flags=0, nxt=0):
    return struct.pack("<QIHH", addr, length, flags, nxt)


NEXT, WRITE = 1, 2


def queue(q, descs, heads, bufs):
    """Memory (from RINGS) for queue q: descriptor table, avail ring with `heads`, buffers at
    absolute addresses."""
    mem = bytearray(0x3000)
    base = 0x800 * q
    for i, d in enumerate(descs):
        mem[base + 16 * i: base + 16 * i + 16] = d
    avail = base + 0x100
    mem[avail:avail + 4] = struct.pack("<HH", 0, len(heads))
    for i, h in enumerate(heads):
        mem[avail + 4 + 2 * i: avail + 6 + 2 * i] = struct.pack("<H", h)
    for addr, data in bufs:
        o = addr - RINGS
        mem[o:o + len(data)] = data
    return bytes(mem)


def notify(q):
    return bytes([2]) + struct.pack("<H", q)


def device_input(script, mem):
    return struct.pack("<H", len(script)) + script + mem


# rng (and virtio-pci, whose function is an rng): one 64-byte buffer
rng_mem = queue(0, [desc(0x1400, 64, WRITE)], [0], [])
put("virtio_rng", "one-request", device_input(notify(0), rng_mem))
put("virtio_pci", "one-request", device_input(notify(0), rng_mem))
# ECAM: read the vendor/device of device 1, size BAR0
ecam = bytes([0x40]) + struct.pack("<H", 0x8000) + bytes([0x41]) + struct.pack("<H", 0x8010) + b"\xff\xff\xff\xff"
put("virtio_pci", "config-space", device_input(ecam + notify(0), rng_mem))

# console: queue 1 (transmit) sends "hello\n"
con = queue(1, [desc(0x1c00, 6)], [0], [(0x1c00, b"hello\n")])
put("virtio_console", "transmit", device_input(notify(1), con))
# and a receive buffer on queue 0
con_rx = bytearray(con)
con_rx[0:16] = desc(0x1400, 32, WRITE)
con_rx[0x100:0x104] = struct.pack("<HH", 0, 1)
put("virtio_console", "transmit-receive", device_input(notify(0) + notify(1), bytes(con_rx)))

# serial: DEVICE_READY then PORT_READY for port 0 on the control transmit queue (3)
ctl = struct.pack("<IHH", 0, 0, 1) + struct.pack("<IHH", 0, 3, 1)
ser = queue(3, [desc(0x2f00, 8, NEXT, 1), desc(0x2f08, 8)], [0], [(0x2f00, ctl)])
put("virtio_serial", "control", device_input(notify(3), ser))

# vsock: a stream REQUEST to host port 1234 on the transmit queue (1), and a receive buffer on
# queue 0 for the reset that comes back; then the same connection's RW and SHUTDOWN
def vsock_hdr(op, length=0):
    return struct.pack("<QQIIIHHIII", 3, 2, 5000, 1234, length, 1, op, 0, 65536, 0)


vs = bytearray(queue(1, [desc(0x1c00, 44), desc(0x1c40, 44 + 4), desc(0x1c90, 44)], [0, 1, 2],
                     [(0x1c00, vsock_hdr(1)), (0x1c40, vsock_hdr(5, 4) + b"ping"),
                      (0x1c90, vsock_hdr(4))]))
vs[0:16] = desc(0x1400, 256, WRITE)
vs[0x100:0x104] = struct.pack("<HH", 0, 1)
put("virtio_vsock", "request-rw-shutdown", device_input(notify(0) + notify(1), bytes(vs)))

# blk: IN sector 0 (header, 512-byte buffer, status), OUT sector 1, FLUSH, GET_ID
def blk(req_type, sector, data_flags, data_len):
    hdr = struct.pack("<IIQ", req_type, 0, sector)
    descs = [desc(0x1400, 16, NEXT, 1)]
    if data_len:
        descs.append(desc(0x1500, data_len, data_flags | NEXT, 2))
        descs.append(desc(0x17f0, 1, WRITE))
    else:
        descs.append(desc(0x17f0, 1, WRITE))
    return queue(0, descs, [0], [(0x1400, hdr), (0x1500, b"\xa5" * data_len)])


for name, args in {
    "read": (0, 0, WRITE, 512),
    "write": (1, 1, 0, 512),
    "flush": (4, 0, 0, 0),
    "get-id": (8, 0, WRITE, 20),
}.items():
    put("virtio_blk", name, device_input(notify(0), blk(*args)))

# board devices: UART THR writes, a PLIC enable and priority, an RTC read, a finisher pass
def op(kind, space, length_code, offset, data=b""):
    return bytes([(length_code << 5) | (space << 2) | kind]) + struct.pack("<H", offset) + data


board = (op(1, 0, 0, 0, b"h") + op(1, 0, 0, 0, b"i") + op(1, 1, 2, 0x2000 >> 6, b"\xff" * 4)
         + op(1, 1, 2, 1, b"\x01\x00\x00\x00") + op(2, 0, 0, 10) + op(0, 1, 2, 0x200004 >> 6)
         + op(0, 2, 2, 0) + op(3, 0, 0, 0, b"input\r\n!"))
put("board_devices", "uart-plic-rtc", board)

# decoder: a handful of words of every kind
import random
rnd = random.Random(9)
put("riscv_decode", "words", b"".join(struct.pack("<I", rnd.getrandbits(32)) for _ in range(256)))
put("riscv_decode", "extensions", struct.pack("<8I", 0x20c5a533, 0x60059513, 0x0ec5d533, 0x0045200f,
                                               0x0100000f, 0xf0180553, 0x16b50073, 0x6b855513))

# interpreter: the ISA test programs, raw, after a mode byte (M-mode, every extension)
isa_bin = os.environ.get("VIREO_ISA_BIN")
if isa_bin:
    for f in sorted(os.listdir(isa_bin)):
        if f.endswith(".bin"):
            with open(os.path.join(isa_bin, f), "rb") as fh:
                put("riscv_step", f[:-4], b"\x00" + fh.read()[:0x10000])
# S-mode under the built-in SBI: sbi_get_spec_version, set_timer, console_putchar, shutdown
sbi = struct.pack("<12I",
                  0x01000893,  # li a7, 0x10 (BASE)
                  0x00000813,  # li a6, 0
                  0x00000073,  # ecall
                  0x00000893,  # li a7, 0 (legacy set_timer)
                  0x00000513,  # li a0, 0
                  0x00000073,  # ecall
                  0x00100893,  # li a7, 1 (legacy putchar)
                  0x04100513,  # li a0, 'A'
                  0x00000073,  # ecall
                  0x00800893,  # li a7, 8 (legacy shutdown)
                  0x00000073,  # ecall
                  0x0000006f)  # j .
put("riscv_step", "sbi-calls", b"\x01" + sbi)

# config files
put("vm_config", "full", b'''accel = "emu"
image = "debian-riscv64"
cpus = 2
memory = "1G"
cmdline = "console=ttyS0"
disk = ["data.img,serial=d0,readonly", "b.img,format=raw"]
net = ["user,hostfwd=tcp:8080-:80"]
rng = true
vsock = "cid=3,uds=/tmp/vm.sock"
console = "virtio"
virtio_transport = "pci"
cpu = "max,-sstc"
reboot = "exit"
command = ["uname", "-a"]
''')
put("vm_config", "bad-values", b'cpus = 0\nmemory = "12k"\nconsole = "tty"\n')
print("seeds written", file=sys.stderr)
