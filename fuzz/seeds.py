#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/TARGET/seed-*): for each device, inputs that make one
valid request (so the fuzzer starts inside the request parser, not at its door); for the
interpreter, the ISA test programs (run `python3 fuzz/seeds.py` after building them: it takes
their raw images from $VIREO_ISA_BIN, if set); for the config parser, real vm.toml files; for
qcow2 images, images qemu-img makes (skipped when qemu-img is missing); for the REST API,
request sequences a client sends."""
import os, shutil, struct, subprocess, sys, tempfile

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

# net: both queues in one memory (receive at RINGS, transmit at RINGS + 0x800); the host part
# (chunks the host writes to the backend's stream) goes in front of the device input.
def queues(per_queue, bufs):
    mem = bytearray(0x3000)
    for q, (descs, heads) in per_queue.items():
        one = queue(q, descs, heads, [])
        base = 0x800 * q
        mem[base:base + 0x800] = one[base:base + 0x800]
    for addr, data in bufs:
        o = addr - RINGS
        mem[o:o + len(data)] = data
    return bytes(mem)


def trimmed(mem):
    """Guest memory past the input's end reads as zeroes: the seed need not carry them."""
    return mem.rstrip(b"\0")


def net_input(host_chunks, script, mem):
    # None: the host closes its end
    host = b"".join(struct.pack("<H", 0x8000) if c is None else struct.pack("<H", len(c)) + c
                    for c in host_chunks)
    return struct.pack("<H", len(host)) + host + device_input(script, trimmed(mem))


def vnet_hdr(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0, nbuf=0):
    return struct.pack("<BBHHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset,
                       nbuf)


def ether(n, seed):
    dst, src = b"\x52\x54\x00\x12\x34\x56", b"\x52\x54\x00\x00\x00\x02"
    return dst + src + b"\x08\x00" + bytes((i * 7 + seed) & 0xff for i in range(n - 14))


def framed(frame):
    return struct.pack(">I", len(frame)) + frame


# transmit: a header asking for checksum and TCPv4 segmentation in its own descriptor, the
# frame in the next; a second request with header and frame in one; then the host reads.
f1, f2 = ether(60, 1), ether(200, 2)
tx = {1: ([desc(0x3000, 12, NEXT, 1), desc(0x3100, len(f1)), desc(0x3400, 12 + len(f2))],
          [0, 2])}
put("virtio_net", "transmit", net_input(
    [], notify(1) + notify(3),
    queues(tx, [(0x3000, vnet_hdr(1, 1, 54, 1448, 34, 16)), (0x3100, f1),
                (0x3400, vnet_hdr(0, 0x80 | 3, 14, 1000, 0, 0, 1) + f2)])))
# receive: two buffers (one split in two descriptors), two frames from the host, one split
# across writes; then a frame larger than any buffer.
rx = {0: ([desc(0x2000, 1526, WRITE), desc(0x2600, 8, WRITE | NEXT, 2), desc(0x2700, 1518, WRITE)],
          [0, 1])}
r1, r2 = framed(ether(64, 3)), framed(ether(1514, 4))
put("virtio_net", "receive", net_input(
    [r1, r2[:3], r2[3:], framed(ether(1600, 5))],
    notify(0) + notify(2) + notify(2) + notify(2) + notify(2) + notify(0),
    queues(rx, [])))
# transmit until the small socket buffer is full (eight 6000-byte frames, all from one
# buffer), then the host drains and transmit resumes
txb = {1: ([desc(0x2400, 12 + 6000) for i in range(8)], list(range(8))),
       0: ([desc(0x2000, 1000, WRITE)], [0])}
put("virtio_net", "transmit-blocked", net_input(
    [framed(ether(100, 9))],
    notify(1) + notify(2) + notify(0) + notify(3) + notify(3),
    queues(txb, [(0x2400, vnet_hdr() + ether(6000, 6))])))
# the host announces a frame longer than any (the backend fails, the link goes down: read the
# status in the configuration space), then closes its end
put("virtio_net", "host-garbage", net_input(
    [struct.pack(">I", 1 << 20) + b"xxxx", None],
    notify(2) + op(0, 0, 1, 0x106) + notify(2) + notify(0) + notify(1),
    queues(rx, [])))


# qcow2_image: images made by qemu-img, as records of their non-zero sectors (file, offset,
# length, bytes) so a 64 KiB-cluster image is a few KB of input; then virtio-blk requests.
def image_records(which, data):
    out = bytearray()
    sectors = [i for i in range(0, len(data), 512) if any(data[i:i + 512])]
    runs = []
    for s0 in sectors:
        if runs and runs[-1][1] == s0 and runs[-1][1] - runs[-1][0] < 0xfe00:
            runs[-1][1] = s0 + 512
        else:
            runs.append([s0, s0 + 512])
    for a, b in runs:
        chunk = data[a:min(b, len(data))]
        out += struct.pack("<BIH", which, a, len(chunk)) + chunk
    # the file's length, if it ends in zeroes
    if not runs or runs[-1][1] < len(data):
        out += struct.pack("<BIH", which, len(data), 0)
    return bytes(out)


def blk_requests():
    """Memory for queue 0 with five chains: read sector 0, write sector 1, discard sectors
    8-15, write-zeroes (unmap) of sectors 16-23, flush."""
    descs, heads, bufs = [], [], []
    reqs = [(0, 0, WRITE, 512, None), (1, 1, 0, 512, None),
            (11, 0, 0, 16, struct.pack("<QII", 8, 8, 0)),
            (13, 0, 0, 16, struct.pack("<QII", 16, 8, 1)), (4, 0, 0, 0, None)]
    for i, (t, sector, flags, n, payload) in enumerate(reqs):
        hdr_at, data_at, status_at = 0x1400 + 16 * i, 0x2000 + 0x200 * i, 0x17f0 + i
        first = len(descs)
        heads.append(first)
        descs.append(desc(hdr_at, 16, NEXT, first + 1))
        bufs.append((hdr_at, struct.pack("<IIQ", t, 0, sector)))
        if n:
            descs.append(desc(data_at, n, flags | NEXT, first + 2))
            bufs.append((data_at, payload or bytes((j * 3 + i) & 0xff for j in range(n))))
        descs.append(desc(status_at, 1, WRITE))
    return queue(0, descs, heads, bufs)


def qcow2_input(top, base=b""):
    recs = image_records(0, top) + (image_records(1, base) if base else b"")
    return struct.pack("<H", len(recs)) + recs + device_input(notify(0), trimmed(blk_requests()))


qemu_img = shutil.which("qemu-img")
if qemu_img:
    with tempfile.TemporaryDirectory() as tmp:
        def run(*args):
            subprocess.run([qemu_img, *args], cwd=tmp, check=True, stdout=subprocess.DEVNULL)

        def read(name):
            with open(os.path.join(tmp, name), "rb") as fh:
                return fh.read()

        def rm(*names):
            for n in names:
                os.remove(os.path.join(tmp, n))

        # a raw disk with data in its first clusters and further in
        raw = bytearray(1 << 20)
        raw[0:1024] = bytes((i * 5 + 1) & 0xff for i in range(1024))
        raw[0x80000:0x80200] = b"vireo" * 102 + b"..."
        with open(os.path.join(tmp, "data.raw"), "wb") as fh:
            fh.write(raw)
        variants = {
            "64k": [],
            "2m-clusters": ["-o", "cluster_size=2M"],
            "512-clusters": ["-o", "cluster_size=512"],
            "v2": ["-o", "compat=0.10"],
            "compressed": ["-c"],
            "refcount-bits-1": ["-o", "refcount_bits=1"],
            "refcount-bits-64": ["-o", "refcount_bits=64,cluster_size=4k"],
            "extended-l2": ["-o", "extended_l2=on"],
        }
        for name, opts in variants.items():
            run("convert", "-q", "-O", "qcow2", *opts, "data.raw", "top.qcow2")
            put("qcow2_image", name, qcow2_input(read("top.qcow2")))
            rm("top.qcow2")
        # an empty image, and one with an internal snapshot
        run("create", "-q", "-f", "qcow2", "top.qcow2", "1M")
        put("qcow2_image", "empty", qcow2_input(read("top.qcow2")))
        rm("top.qcow2")
        run("convert", "-q", "-O", "qcow2", "-o", "cluster_size=4k", "data.raw", "top.qcow2")
        run("snapshot", "-c", "s1", "top.qcow2")
        snap = bytearray(read("top.qcow2"))
        # The snapshot's creation time, fixed so the seed is the same every time it is written
        # (date_sec and date_nsec of the first entry of the snapshot table).
        table = struct.unpack(">Q", snap[64:72])[0]
        snap[table + 16:table + 24] = struct.pack(">II", 1700000000, 0)
        put("qcow2_image", "snapshot", qcow2_input(bytes(snap)))
        rm("top.qcow2")
        # overlays on a qcow2 and on a raw backing file, both named relatively (base.qcow2 is
        # the target's second file)
        run("convert", "-q", "-O", "qcow2", "-o", "cluster_size=4k", "data.raw", "base.qcow2")
        run("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
            "-o", "cluster_size=4k", "top.qcow2")
        put("qcow2_image", "backing-qcow2", qcow2_input(read("top.qcow2"), read("base.qcow2")))
        rm("top.qcow2", "base.qcow2")
        with open(os.path.join(tmp, "base.qcow2"), "wb") as fh:
            fh.write(raw[:64 << 10])
        run("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "raw", "top.qcow2")
        put("qcow2_image", "backing-raw", qcow2_input(read("top.qcow2"), read("base.qcow2")))
else:
    print("qemu-img not found: qcow2_image seeds not written", file=sys.stderr)


# api_request: requests separated by NUL; $R is the target's scratch root (a kernel file at
# $R/vmlinux, pools allowed under $R/pools).
def http(method, target, body=None, headers=()):
    h = list(headers)
    if body is not None and not any(k.lower() == "content-type" for k, _ in h):
        h.append(("Content-Type", "application/json"))
    text = f"{method} {target}\n" + "".join(f"{k}: {v}\n" for k, v in h) + "\n"
    return (text + (body or "")).encode()


def api(name, *reqs):
    put("api_request", name, b"\0".join(reqs))


spec = '{"name": "a", "spec": {"kernel": "$R/vmlinux", "cmdline": "console=ttyS0", ' \
    '"memory": "64M", "cpus": 1, "accel": "emu", "rng": true}}'
api("vm-lifecycle",
    http("POST", "/vms", spec), http("GET", "/vms"), http("POST", "/vms/a/start", '{"wait_ready": false}'),
    http("GET", "/vms/a"), http("POST", "/vms/a/stop", '{"timeout_secs": 1}'),
    http("GET", "/vms/a/logs"), http("GET", "/events?since=0&vm=a&limit=5"),
    http("DELETE", "/vms/a?force=true"))
api("vm-actions",
    http("POST", "/vms", spec), http("POST", "/vms/a/pause"), http("POST", "/vms/a/resume"),
    http("POST", "/vms/a/kill"), http("POST", "/vms/a/restart"), http("GET", "/vms/a/stats"),
    http("GET", "/vms/a/console?mode=rw", headers=[("Connection", "upgrade"), ("Upgrade", "vireo-console")]),
    http("POST", "/vms/a/exec?command=%5B%22uname%22%2C%22-a%22%5D", headers=[("Connection", "upgrade"), ("Upgrade", "vireo-exec")]))
api("storage",
    http("POST", "/pools", '{"name": "p", "path": "$R/pools/p"}'),
    http("POST", "/pools/p/volumes", '{"name": "v.qcow2", "size_bytes": 1048576, "format": "qcow2"}'),
    http("POST", "/pools/p/volumes/v.qcow2/clone", '{"name": "w.qcow2", "overlay": true}'),
    http("GET", "/pools/p/volumes"), http("GET", "/pools/p/volumes/w.qcow2"),
    http("DELETE", "/pools/p/volumes/v.qcow2"), http("DELETE", "/pools/p?force=true"),
    http("GET", "/pools"))
api("vm-on-volumes",
    http("POST", "/pools/default/volumes", '{"name": "d.raw", "size_bytes": 65536, "format": "raw"}'),
    http("POST", "/vms", '{"name": "b", "spec": {"kernel": "$R/vmlinux", '
         '"disk": ["vol:d.raw,overlay,serial=d0", "vol:default/d.raw,readonly"]}}'),
    http("GET", "/vms/b"), http("POST", "/vms/b/start"), http("DELETE", "/pools/default/volumes/d.raw"),
    http("DELETE", "/vms/b"), http("GET", "/pools/default"))
api("host",
    http("GET", "/host"), http("GET", "/metrics"), http("GET", "/openapi.json"),
    http("GET", "/events?follow=true"), http("GET", "/nowhere"), http("PUT", "/vms"))
api("bad-bodies",
    http("POST", "/vms", "{\"name\": ", ), http("POST", "/vms", '{"name": "x", "spec": {"cpus": "two"}}'),
    http("POST", "/vms", '{"name": "x"}', headers=[("Content-Type", "text/plain")]),
    http("POST", "/vms", '{"name": "x", "spec": {}, "extra": 1}'),
    http("POST", "/vms/%ff/start"), http("GET", "/events?since=x"),
    http("POST", "/pools", '{"name": "q", "path": "/etc"}'),
    http("POST", "/vms", '[' * 200))
# state_file: mode byte 0 (the bytes are the file) with the checked-in format-1 fixture; mode
# byte 1 (the target frames the records) with the fixture's records, so mutations reach the
# payload decoders past the checksums.
fixture = open(os.path.join(here, "..", "crates", "state", "tests", "fixtures", "v1-synthetic.vst"), "rb").read()
put("state_file", "v1-fixture", b"\x00" + fixture)
recs, pos = b"", 12
kinds = {b"HEAD": 0, b"SECT": 1}
while True:
    tag, length = fixture[pos:pos + 4], struct.unpack_from("<Q", fixture, pos + 4)[0]
    if tag not in kinds:
        break
    recs += bytes([kinds[tag]]) + struct.pack("<H", length) + fixture[pos + 16:pos + 16 + length]
    pos += 16 + length
put("state_file", "v1-records", b"\x01" + recs)
print("seeds written", file=sys.stderr)
