//! virtio-blk against real descriptor chains in guest memory and a real image file.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use vireo_machine::GuestMemoryMmap;
use vireo_machine::IrqLine;
use virtio_bindings::virtio_blk::{
    virtio_blk_config, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_MQ, VIRTIO_BLK_F_RO, VIRTIO_BLK_S_IOERR,
    VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH,
    VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::split::Descriptor as SplitDescriptor;
use virtio_queue::desc::RawDescriptor;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};

use super::device::config_offset;
use super::*;
use crate::{Activation, Interrupt, VirtioDevice, F_VERSION_1, INT_USED};

const MEM_SIZE: usize = 0x40_0000;
const QSIZE: u16 = 64;
/// Where test buffers go (the rings sit at 0).
const DATA: u64 = 0x1_0000;

/// A temporary file removed on drop.
struct TempImage(PathBuf);

impl TempImage {
    fn new(len: u64) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "vireo-blk-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(len).unwrap();
        TempImage(path)
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

struct CountingIrq(AtomicU32);

impl IrqLine for CountingIrq {
    fn set_level(&self, high: bool) {
        if high {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Plays the driver: lays out chains in the descriptor table and publishes them.
struct Driver<'a> {
    mem: &'a GuestMemoryMmap,
    vq: MockSplitQueue<'a, GuestMemoryMmap>,
    next_desc: u16,
    next_data: u64,
    published: u16,
}

/// One buffer of a chain: guest address, length, device-writable.
#[derive(Clone, Copy)]
struct Buf(u64, u32, bool);

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMemoryMmap) -> Self {
        Driver {
            mem,
            vq: MockSplitQueue::new(mem, QSIZE),
            next_desc: 0,
            next_data: DATA,
            published: 0,
        }
    }

    /// A second driver queue: its rings at `rings`, its buffers from `data` on.
    fn at(mem: &'a GuestMemoryMmap, rings: u64, data: u64) -> Self {
        Driver {
            mem,
            vq: MockSplitQueue::create(mem, GuestAddress(rings), QSIZE),
            next_desc: 0,
            next_data: data,
            published: 0,
        }
    }

    fn queue(&self) -> Queue {
        self.vq.create_queue().unwrap()
    }

    /// Reserves `len` bytes of guest memory for a buffer.
    fn alloc(&mut self, len: u32) -> u64 {
        let a = self.next_data;
        self.next_data += u64::from(len).next_multiple_of(16);
        a
    }

    fn store(&self, index: u16, addr: u64, len: u32, flags: u32, next: u16) {
        let d = SplitDescriptor::new(addr, len, flags as u16, next);
        self.vq
            .desc_table()
            .store(index, RawDescriptor::from(d))
            .unwrap();
    }

    fn publish(&mut self, head: u16) {
        let idx = self.vq.avail().idx().load();
        self.vq
            .avail()
            .ring()
            .ref_at(usize::from(idx % QSIZE))
            .unwrap()
            .store(head);
        self.vq.avail().idx().store(idx.wrapping_add(1));
        self.published += 1;
    }

    /// Adds a well-linked chain and returns its head.
    fn chain(&mut self, bufs: &[Buf]) -> u16 {
        let head = self.next_desc % QSIZE;
        for (i, b) in bufs.iter().enumerate() {
            let index = (head + i as u16) % QSIZE;
            let last = i + 1 == bufs.len();
            let flags =
                if b.2 { VRING_DESC_F_WRITE } else { 0 } | if last { 0 } else { VRING_DESC_F_NEXT };
            self.store(
                index,
                b.0,
                b.1,
                flags,
                if last { 0 } else { (index + 1) % QSIZE },
            );
        }
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
        self.publish(head);
        head
    }

    fn used_count(&self) -> u16 {
        self.vq.used().idx().load()
    }

    /// The used ring entry `i`: (head, length).
    fn used(&self, i: u16) -> (u32, u32) {
        let e = self
            .vq
            .used()
            .ring()
            .ref_at(usize::from(i % QSIZE))
            .unwrap()
            .load();
        (e.id(), e.len())
    }
}

/// A request built in guest memory: header, data, status.
struct Req {
    header: u64,
    data: u64,
    data_len: u32,
    status: u64,
}

fn header(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&kind.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(at)).unwrap();
}

impl Driver<'_> {
    /// A standard three-part request; `data_writable` says which way the data goes. Returns the
    /// request and its head. The status byte starts as 0xff so a write is visible.
    fn request(
        &mut self,
        kind: u32,
        sector: u64,
        data_len: u32,
        data_writable: bool,
    ) -> (Req, u16) {
        let r = Req {
            header: self.alloc(16),
            data: self.alloc(data_len),
            data_len,
            status: self.alloc(1),
        };
        header(self.mem, r.header, kind, sector);
        self.mem.write_obj(0xffu8, GuestAddress(r.status)).unwrap();
        let mut bufs = vec![Buf(r.header, 16, false)];
        if data_len > 0 {
            bufs.push(Buf(r.data, data_len, data_writable));
        }
        bufs.push(Buf(r.status, 1, true));
        let head = self.chain(&bufs);
        (r, head)
    }

    fn status(&self, r: &Req) -> u8 {
        self.mem.read_obj(GuestAddress(r.status)).unwrap()
    }

    fn data(&self, r: &Req) -> Vec<u8> {
        let mut v = vec![0; r.data_len as usize];
        self.mem.read_slice(&mut v, GuestAddress(r.data)).unwrap();
        v
    }

    fn fill(&self, r: &Req, bytes: &[u8]) {
        self.mem.write_slice(bytes, GuestAddress(r.data)).unwrap();
    }
}

fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

struct Rig {
    block: Block,
    irq: Arc<CountingIrq>,
    interrupt: Interrupt,
}

fn open(image: &TempImage, readonly: bool, serial: Option<&str>) -> Block {
    Block::open(&BlockConfig {
        path: image.path().to_path_buf(),
        readonly,
        serial: serial.map(str::to_string),
        format: None,
        num_queues: 1,
    })
    .unwrap()
}

fn activate(mut block: Block, driver: &Driver, features: u64) -> Rig {
    let irq = Arc::new(CountingIrq(AtomicU32::new(0)));
    let interrupt = Interrupt::new(irq.clone());
    block
        .activate(Activation {
            mem: driver.mem.clone(),
            queues: vec![Some(driver.queue())],
            interrupt: interrupt.clone(),
            features,
        })
        .unwrap();
    Rig {
        block,
        irq,
        interrupt,
    }
}

/// The driver's doorbell for queue `index`, then the wait for the I/O thread to have served
/// everything (the device works asynchronously; the tests look at the rings afterwards).
fn kick(block: &mut Block, index: u16) {
    block.queue_notify(index);
    assert!(
        block.wait_idle(std::time::Duration::from_secs(10)),
        "the I/O thread did not finish within 10 s"
    );
}

fn all_features(block: &Block) -> u64 {
    block.features()
}

#[test]
fn config_space_matches_the_spec_layout() {
    // Our offsets against the C layout as virtio-bindings generated it.
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, capacity),
        config_offset::CAPACITY
    );
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, seg_max),
        config_offset::SEG_MAX
    );
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, blk_size),
        config_offset::BLK_SIZE
    );
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, num_queues),
        config_offset::NUM_QUEUES
    );
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, max_discard_sectors),
        config_offset::MAX_DISCARD_SECTORS
    );
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, max_discard_seg),
        config_offset::MAX_DISCARD_SEG
    );
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, discard_sector_alignment),
        config_offset::DISCARD_SECTOR_ALIGNMENT
    );
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, max_write_zeroes_sectors),
        config_offset::MAX_WRITE_ZEROES_SECTORS
    );
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, max_write_zeroes_seg),
        config_offset::MAX_WRITE_ZEROES_SEG
    );
    assert_eq!(
        std::mem::offset_of!(virtio_blk_config, write_zeroes_may_unmap),
        config_offset::WRITE_ZEROES_MAY_UNMAP
    );

    let image = TempImage::new(8 * 1024 * 1024 + 100);
    let block = open(&image, false, None);
    let mut cap = [0u8; 8];
    block.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 16384);
    let w = block.warnings();
    assert!(
        w.len() == 1 && w[0].contains("100"),
        "a size off by 100 bytes is warned about: {w:?}"
    );
    let mut v = [0u8; 4];
    block.read_config(20, &mut v);
    assert_eq!(u32::from_le_bytes(v), 512);
    block.read_config(12, &mut v);
    assert_eq!(u32::from_le_bytes(v), u32::from(QUEUE_SIZE) - 2);
    block.read_config(40, &mut v);
    assert_eq!(u32::from_le_bytes(v), MAX_DISCARD_SEG);
    let mut b = [0u8; 1];
    block.read_config(56, &mut b);
    assert_eq!(b[0], 1);
    // Past the structure: zeroes, not a panic.
    block.read_config(u64::MAX - 1, &mut v);
    assert_eq!(v, [0; 4]);

    let f = block.features();
    assert_ne!(f & F_VERSION_1, 0);
    assert_eq!(f & (1 << VIRTIO_BLK_F_RO), 0);
    let exact = TempImage::new(4096);
    assert!(open(&exact, true, None).warnings().is_empty());
    assert_ne!(
        open(&exact, true, None).features() & (1 << VIRTIO_BLK_F_RO),
        0
    );
}

#[test]
fn open_errors_name_the_path_and_the_reason() {
    let missing = std::env::temp_dir().join("vireo-blk-test-does-not-exist");
    let e = Block::open(&BlockConfig {
        path: missing.clone(),
        readonly: false,
        serial: None,
        format: None,
        num_queues: 1,
    })
    .err()
    .unwrap();
    assert!(matches!(e, BlockError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains(&*missing.to_string_lossy()), "{e}");

    let e = Block::open(&BlockConfig {
        path: std::env::temp_dir(),
        readonly: true,
        serial: None,
        format: None,
        num_queues: 1,
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("directory"), "{e}");

    let e = Block::open(&BlockConfig {
        path: "/dev/null".into(),
        readonly: true,
        serial: None,
        format: None,
        num_queues: 1,
    })
    .err()
    .unwrap();
    assert!(e.to_string().contains("character device"), "{e}");

    let image = TempImage::new(4096);
    let e = Block::open(&BlockConfig {
        path: image.path().to_path_buf(),
        readonly: true,
        serial: Some("x".repeat(21)),
        format: None,
        num_queues: 1,
    })
    .err()
    .unwrap();
    assert!(
        matches!(e, BlockError::SerialTooLong { len: 21, .. }),
        "{e}"
    );

    // A file we may read but not write: refused read-write, accepted read-only. Root ignores
    // permission bits, so only check where the refusal is real.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(image.path(), std::fs::Permissions::from_mode(0o444)).unwrap();
    if std::fs::OpenOptions::new()
        .write(true)
        .open(image.path())
        .is_err()
    {
        let e = Block::open(&BlockConfig {
            path: image.path().to_path_buf(),
            readonly: false,
            serial: None,
            format: None,
            num_queues: 1,
        })
        .err()
        .unwrap();
        assert!(matches!(e, BlockError::NotWritable { .. }), "{e}");
        assert!(e.to_string().contains("not writable"), "{e}");
    } else {
        println!("running as a user that may write a 0444 file; not-writable case not checked");
    }
    assert!(Block::open(&BlockConfig {
        path: image.path().to_path_buf(),
        readonly: true,
        serial: None,
        format: None,
        num_queues: 1,
    })
    .is_ok());
}

fn config(path: &Path, readonly: bool, format: Option<DiskFormat>) -> BlockConfig {
    BlockConfig {
        path: path.to_path_buf(),
        readonly,
        serial: None,
        format,
        num_queues: 1,
    }
}

/// A qcow2 image made by qemu-img itself.
fn qcow2(dir_name: &str) -> TempImage {
    let image = TempImage::new(0);
    let path = image.path().with_extension(dir_name);
    let out = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&path)
        .arg("16M")
        .output()
        .expect("qemu-img is needed: apt-get install qemu-utils");
    assert!(out.status.success(), "{out:?}");
    TempImage(path)
}

fn qemu_img(args: &[&str]) -> String {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is needed: apt-get install qemu-utils");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn qemu_io(image: &Path, cmd: &str) {
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c", cmd])
        .arg(image)
        .output()
        .expect("qemu-io is needed: apt-get install qemu-utils");
    assert!(out.status.success(), "qemu-io {cmd}: {out:?}");
}

/// The image as raw bytes, as qemu-img reads it (through its backing chain).
fn qemu_raw(image: &Path) -> Vec<u8> {
    let raw = image.with_extension("raw-view");
    qemu_img(&[
        "convert",
        "-O",
        "raw",
        image.to_str().unwrap(),
        raw.to_str().unwrap(),
    ]);
    let v = std::fs::read(&raw).unwrap();
    let _ = std::fs::remove_file(&raw);
    v
}

fn qemu_check_clean(image: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "qemu-img check {}: {}{}",
        image.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes `data` at `sector` and reads it back through the device.
fn write_read(rig: &mut Rig, d: &mut Driver, sector: u64, data: &[u8]) -> Vec<u8> {
    let (w, _) = d.request(VIRTIO_BLK_T_OUT, sector, data.len() as u32, false);
    d.fill(&w, data);
    kick(&mut rig.block, 0);
    assert_eq!(d.status(&w), VIRTIO_BLK_S_OK as u8);
    let (r, _) = d.request(VIRTIO_BLK_T_IN, sector, data.len() as u32, true);
    kick(&mut rig.block, 0);
    assert_eq!(d.status(&r), VIRTIO_BLK_S_OK as u8);
    d.data(&r)
}

fn flush(rig: &mut Rig, d: &mut Driver) {
    let (f, _) = d.request(VIRTIO_BLK_T_FLUSH, 0, 0, false);
    kick(&mut rig.block, 0);
    assert_eq!(d.status(&f), VIRTIO_BLK_S_OK as u8);
}

#[test]
fn a_qcow2_image_is_read_and_written_and_qemu_img_agrees() {
    for cluster in ["65536", "2M"] {
        // Named like a raw image: detection is by content.
        let image = qcow2("img");
        let p = image.path().to_str().unwrap().to_string();
        qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            &format!("cluster_size={cluster}"),
            &p,
            "16M",
        ]);
        qemu_io(image.path(), "write -P 0x5a 1M 64k");
        let block = open(&image, false, None);
        assert_eq!(block.format(), "qcow2");
        assert_eq!(
            block.capacity(),
            (16 << 20) / 512,
            "the virtual size, not the file's"
        );
        let mem = guest_memory();
        let mut d = Driver::new(&mem);
        let features = all_features(&block);
        let mut rig = activate(block, &d, features);
        // What qemu-io wrote is read.
        let (r, _) = d.request(VIRTIO_BLK_T_IN, (1 << 20) / 512, 4096, true);
        kick(&mut rig.block, 0);
        assert_eq!(d.status(&r), VIRTIO_BLK_S_OK as u8);
        assert!(d.data(&r).iter().all(|&b| b == 0x5a));
        // What the guest writes (in an unallocated cluster, and over qemu's) qemu-img reads.
        let a: Vec<u8> = (0..8192u32).map(|i| (i * 13 + 1) as u8).collect();
        let b: Vec<u8> = (0..4096u32).map(|i| (i * 5 + 9) as u8).collect();
        assert_eq!(write_read(&mut rig, &mut d, 10, &a), a);
        assert_eq!(write_read(&mut rig, &mut d, (1 << 20) / 512 + 3, &b), b);
        flush(&mut rig, &mut d);
        drop(rig);
        qemu_check_clean(image.path());
        let raw = qemu_raw(image.path());
        assert_eq!(raw.len(), 16 << 20);
        assert_eq!(&raw[5120..5120 + 8192], &a[..]);
        let at = (1 << 20) + 3 * 512;
        assert_eq!(&raw[at..at + 4096], &b[..]);
        assert!(raw[1 << 20..at].iter().all(|&x| x == 0x5a));
        assert!(raw[..5120].iter().all(|&x| x == 0));
    }
}

#[test]
fn a_qcow2_overlay_reads_its_base_and_leaves_it_alone() {
    let base = qcow2("base");
    qemu_io(base.path(), "write -P 0xab 0 128k");
    let before = std::fs::read(base.path()).unwrap();
    let mid = TempImage(base.path().with_extension("mid"));
    let top = TempImage(base.path().with_extension("top"));
    let bp = base.path().to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        bp,
        "-F",
        "qcow2",
        mid.path().to_str().unwrap(),
    ]);
    qemu_io(mid.path(), "write -P 0xcd 64k 64k");
    let mp = mid.path().to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        mp,
        "-F",
        "qcow2",
        top.path().to_str().unwrap(),
    ]);
    let block = open(&top, false, None);
    let mem = guest_memory();
    let mut d = Driver::new(&mem);
    let features = all_features(&block);
    let mut rig = activate(block, &d, features);
    // Through a chain of three: the base's bytes, the middle's over them.
    let (r, _) = d.request(VIRTIO_BLK_T_IN, 0, 128 * 1024, true);
    kick(&mut rig.block, 0);
    let got = d.data(&r);
    assert!(got[..64 * 1024].iter().all(|&b| b == 0xab));
    assert!(got[64 * 1024..].iter().all(|&b| b == 0xcd));
    // While the overlay is open its base cannot be written by anyone else.
    let e = Block::open(&config(base.path(), false, Some(DiskFormat::Qcow2)))
        .err()
        .expect("the base is in use");
    assert!(matches!(e, BlockError::InUse { .. }), "{e}");
    let new: Vec<u8> = vec![0x11; 4096];
    assert_eq!(write_read(&mut rig, &mut d, 0, &new), new);
    flush(&mut rig, &mut d);
    drop(rig);
    assert!(
        std::fs::read(base.path()).unwrap() == before,
        "the base changed"
    );
    qemu_check_clean(top.path());
    let raw = qemu_raw(top.path());
    assert_eq!(&raw[..4096], &new[..]);
    assert!(raw[4096..64 * 1024].iter().all(|&b| b == 0xab));
}

#[test]
fn hostile_qcow2_images_are_refused_at_open() {
    // Encrypted: imago would serve ciphertext.
    let enc = qcow2("enc");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(enc.path())
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&1u32.to_be_bytes(), 32).unwrap();
    let e = Block::open(&config(enc.path(), false, None)).err().unwrap();
    assert!(e.to_string().contains("encrypted qcow2 image (AES)"), "{e}");
    // An L1 table past the end of the file, a cluster size out of range, a bad header size:
    // an error at open, not a crash or a huge allocation.
    for (what, offset, bytes) in [
        (
            "l1 offset",
            40usize,
            0x7fff_ffff_0000_0000u64.to_be_bytes().to_vec(),
        ),
        ("cluster bits", 20, 40u32.to_be_bytes().to_vec()),
        ("l1 size", 36, u32::MAX.to_be_bytes().to_vec()),
        ("header length", 100, 0xffffu32.to_be_bytes().to_vec()),
    ] {
        let bad = qcow2("bad");
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(bad.path())
            .unwrap();
        f.write_all_at(&bytes, offset as u64).unwrap();
        let r = Block::open(&config(bad.path(), false, None));
        assert!(r.is_err(), "{what}: a broken image was opened");
    }
    // A backing chain that loops (a on b on a).
    let a = qcow2("loopa");
    let b = TempImage(a.path().with_extension("loopb"));
    let (ap, bp) = (a.path().to_str().unwrap(), b.path().to_str().unwrap());
    qemu_img(&[
        "create", "-q", "-f", "qcow2", "-u", "-b", ap, "-F", "qcow2", bp, "16M",
    ]);
    qemu_img(&[
        "rebase", "-q", "-f", "qcow2", "-u", "-b", bp, "-F", "qcow2", ap,
    ]);
    for readonly in [false, true] {
        let e = Block::open(&config(a.path(), readonly, None))
            .err()
            .expect("a loop");
        assert!(
            matches!(e, BlockError::Image { .. } | BlockError::InUse { .. }),
            "{e}"
        );
    }
    // A missing backing file is named.
    let orphan = qcow2("orphan");
    let gone = orphan.path().with_extension("gone");
    qemu_img(&[
        "rebase",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        gone.to_str().unwrap(),
        "-F",
        "qcow2",
        orphan.path().to_str().unwrap(),
    ]);
    let e = Block::open(&config(orphan.path(), false, None))
        .err()
        .unwrap();
    assert!(e.to_string().contains(gone.to_str().unwrap()), "{e}");
}

#[test]
fn other_container_formats_are_still_refused() {
    let image = TempImage::new(0);
    let path = image.path().with_extension("qed");
    qemu_img(&["create", "-q", "-f", "qed", path.to_str().unwrap(), "16M"]);
    let image = TempImage(path);
    let before = std::fs::read(image.path()).unwrap();
    let e = Block::open(&config(image.path(), false, None))
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            BlockError::Foreign {
                format: ForeignFormat::Qed,
                ..
            }
        ),
        "{e}"
    );
    assert!(std::fs::read(image.path()).unwrap() == before);
    // format=raw trusts the user, as QEMU's does.
    let b = Block::open(&config(image.path(), true, Some(DiskFormat::Raw))).unwrap();
    assert_eq!(b.capacity(), before.len() as u64 / 512);
}

#[test]
fn a_fixed_vhd_footer_is_found_at_the_end() {
    let image = TempImage::new(64 * 1024);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(image.path())
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"conectix", 64 * 1024 - 512).unwrap();
    let e = Block::open(&config(image.path(), false, None))
        .err()
        .unwrap();
    assert!(e.to_string().contains("is a VHD image"), "{e}");
    // A tiny raw file (shorter than a sector) is fine.
    let small = TempImage::new(100);
    Block::open(&config(small.path(), false, None)).unwrap();
}

#[test]
fn a_second_writer_is_refused_and_the_lock_goes_with_the_device() {
    let image = TempImage::new(1 << 20);
    let first = Block::open(&config(image.path(), false, None)).unwrap();
    for readonly in [false, true] {
        let e = Block::open(&config(image.path(), readonly, None))
            .err()
            .expect("the image is in use");
        assert!(
            matches!(
                e,
                BlockError::InUse {
                    holder: Holder::Writer,
                    ..
                }
            ),
            "{e}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains(&format!(
                "disk image {} is in use by another process (locked for writing)",
                image.path().display()
            )),
            "{msg}"
        );
    }
    drop(first);
    let r1 = Block::open(&config(image.path(), true, None)).unwrap();
    let _r2 = Block::open(&config(image.path(), true, None)).unwrap();
    let e = Block::open(&config(image.path(), false, None))
        .err()
        .unwrap();
    assert!(e.to_string().contains("keeps writers out"), "{e}");
    assert!(e.to_string().contains("readonly"), "{e}");
    drop(r1);
}

/// A QEMU process writing an image keeps vireo out; qemu-io stands in for a running QEMU.
#[test]
fn an_image_qemu_writes_is_refused() {
    let image = TempImage::new(1 << 20);
    let mut qemu = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "sleep 20000"])
        .arg(image.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("qemu-io is needed: apt-get install qemu-utils");
    // Wait for qemu-io's locks to show (opening the image meanwhile would keep qemu-io out).
    let ino = std::fs::metadata(image.path()).unwrap().ino();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains(&format!(":{ino} ")))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "qemu-io did not lock the image"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let refused = Block::open(&config(image.path(), true, None)).err();
    let writer = Block::open(&config(image.path(), false, None)).err();
    let _ = qemu.kill();
    let _ = qemu.wait();
    let e = refused.expect("a vireo reader was let in beside qemu-io writing");
    assert!(
        matches!(
            e,
            BlockError::InUse {
                holder: Holder::Writer,
                ..
            }
        ),
        "{e}"
    );
    assert!(writer.is_some(), "a vireo writer was let in beside qemu-io");
}

#[test]
fn one_file_has_one_id_whatever_the_path() {
    let image = TempImage::new(4096);
    let link = image.path().with_extension("link");
    std::os::unix::fs::symlink(image.path(), &link).unwrap();
    let id = |p: &Path| FileId::of(&std::fs::metadata(p).unwrap());
    let b = Block::open(&config(image.path(), true, None)).unwrap();
    assert_eq!(b.file_id(), id(&link));
    let other = TempImage::new(4096);
    assert_ne!(b.file_id(), id(other.path()));
    let _ = std::fs::remove_file(&link);
}

#[test]
fn write_then_read_round_trip() {
    let image = TempImage::new(1024 * 1024);
    let mem = guest_memory();
    let mut d = Driver::new(&mem);
    let block = open(&image, false, None);
    let features = all_features(&block);
    let mut rig = activate(block, &d, features);

    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
    let (w, wh) = d.request(VIRTIO_BLK_T_OUT, 10, 4096, false);
    d.fill(&w, &pattern);
    kick(&mut rig.block, 0);
    assert_eq!(d.used_count(), 1);
    assert_eq!(d.used(0), (u32::from(wh), 1));
    assert_eq!(d.status(&w), VIRTIO_BLK_S_OK as u8);
    assert_ne!(rig.interrupt.status() & INT_USED, 0);
    assert!(rig.irq.0.load(Ordering::Relaxed) > 0);

    // On the host, at sector 10.
    let on_disk = std::fs::read(image.path()).unwrap();
    assert_eq!(&on_disk[5120..5120 + 4096], &pattern[..]);

    let (r, rh) = d.request(VIRTIO_BLK_T_IN, 10, 4096, true);
    kick(&mut rig.block, 0);
    assert_eq!(d.used_count(), 2);
    assert_eq!(d.used(1), (u32::from(rh), 4097));
    assert_eq!(d.status(&r), VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.data(&r), pattern);

    // A read split over several descriptors, with the status in the last data descriptor.
    let a = d.alloc(16);
    header(&mem, a, VIRTIO_BLK_T_IN, 11);
    let b1 = d.alloc(100);
    let b2 = d.alloc(413);
    mem.write_obj(0xffu8, GuestAddress(b2 + 412)).unwrap();
    d.chain(&[Buf(a, 16, false), Buf(b1, 100, true), Buf(b2, 413, true)]);
    kick(&mut rig.block, 0);
    assert_eq!(d.used(2).1, 513);
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got[..100], GuestAddress(b1)).unwrap();
    mem.read_slice(&mut got[100..], GuestAddress(b2)).unwrap();
    assert_eq!(&got[..], &pattern[512..1024]);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(b2 + 412)).unwrap(), 0);
}

#[test]
fn flush_and_get_id() {
    let image = TempImage::new(64 * 1024);
    let mem = guest_memory();
    let mut d = Driver::new(&mem);
    let block = open(&image, false, Some("vireo-disk-0"));
    let features = all_features(&block);
    let mut rig = activate(block, &d, features);

    let (f, _) = d.request(VIRTIO_BLK_T_FLUSH, 0, 0, false);
    let (id, _) = d.request(VIRTIO_BLK_T_GET_ID, 0, 20, true);
    kick(&mut rig.block, 0);
    assert_eq!(d.used_count(), 2);
    assert_eq!(d.status(&f), VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.status(&id), VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.used(1).1, 21);
    assert_eq!(&d.data(&id), b"vireo-disk-0\0\0\0\0\0\0\0\0");

    // A 20-byte serial has no terminator. (The first device must let the image go first: it
    // holds the write lock.)
    drop(rig);
    let block = open(&image, true, Some("abcdefghijklmnopqrst"));
    let mut d2 = Driver::new(&mem);
    let features = all_features(&block);
    let mut rig = activate(block, &d2, features);
    let (id, _) = d2.request(VIRTIO_BLK_T_GET_ID, 0, 20, true);
    kick(&mut rig.block, 0);
    assert_eq!(&d2.data(&id), b"abcdefghijklmnopqrst");
}

#[test]
fn write_through_when_flush_is_not_negotiated() {
    // Without FLUSH the write must be durable at completion; all we can see from here is that
    // it succeeds and lands, but this exercises the sync path.
    let image = TempImage::new(64 * 1024);
    let mem = guest_memory();
    let mut d = Driver::new(&mem);
    let block = open(&image, false, None);
    let features = all_features(&block) & !(1 << VIRTIO_BLK_F_FLUSH);
    let mut rig = activate(block, &d, features);
    let (w, _) = d.request(VIRTIO_BLK_T_OUT, 0, 512, false);
    d.fill(&w, &[0xab; 512]);
    kick(&mut rig.block, 0);
    assert_eq!(d.status(&w), VIRTIO_BLK_S_OK as u8);
    assert_eq!(std::fs::read(image.path()).unwrap()[..512], [0xab; 512]);
}

/// Allocated bytes of the image.
fn allocated(path: &Path) -> u64 {
    std::fs::metadata(path).unwrap().blocks() * 512
}

/// A segment of a discard / write-zeroes request.
fn segment(sector: u64, num: u32, flags: u32) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&num.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    s
}

fn segment_request(d: &mut Driver, kind: u32, segments: &[[u8; 16]]) -> Req {
    let len = (segments.len() * 16) as u32;
    let (r, _) = d.request(kind, 0, len, false);
    d.fill(&r, &segments.concat());
    r
}

#[test]
fn discard_punches_a_hole() {
    let size = 4 * 1024 * 1024u64;
    let image = TempImage::new(size);
    std::fs::write(image.path(), vec![0x5au8; size as usize]).unwrap();
    let before = allocated(image.path());
    assert!(before >= size, "image not allocated: {before} bytes");

    let mem = guest_memory();
    let mut d = Driver::new(&mem);
    let block = open(&image, false, None);
    let features = all_features(&block);
    let mut rig = activate(block, &d, features);

    // Discard the middle 2 MiB.
    let r = segment_request(&mut d, VIRTIO_BLK_T_DISCARD, &[segment(2048, 4096, 0)]);
    kick(&mut rig.block, 0);
    assert_eq!(d.status(&r), VIRTIO_BLK_S_OK as u8);
    let after = allocated(image.path());
    if after >= before {
        // The discard was accepted as a hint but the file system kept the blocks.
        println!(
            "SKIP: the file system under {} does not punch holes",
            image.path().display()
        );
        return;
    }
    assert!(
        before - after >= 2 * 1024 * 1024 - 8192,
        "{before} -> {after}"
    );
    assert_eq!(
        std::fs::metadata(image.path()).unwrap().len(),
        size,
        "size kept"
    );
    let on_disk = std::fs::read(image.path()).unwrap();
    assert_eq!(on_disk[1024 * 1024 - 1], 0x5a);
    assert_eq!(on_disk[3 * 1024 * 1024], 0x5a);

    // The unmap flag is not for discard; unknown flags are unsupported.
    let r1 = segment_request(&mut d, VIRTIO_BLK_T_DISCARD, &[segment(0, 8, 1)]);
    let r2 = segment_request(&mut d, VIRTIO_BLK_T_DISCARD, &[segment(0, 8, 4)]);
    // Past the end, and a length that is not whole segments.
    let r3 = segment_request(&mut d, VIRTIO_BLK_T_DISCARD, &[segment(8190, 8, 0)]);
    let (r4, _) = d.request(VIRTIO_BLK_T_DISCARD, 0, 15, false);
    let too_many: Vec<[u8; 16]> = (0..=MAX_DISCARD_SEG as u64)
        .map(|i| segment(i, 1, 0))
        .collect();
    let r5 = segment_request(&mut d, VIRTIO_BLK_T_DISCARD, &too_many);
    kick(&mut rig.block, 0);
    assert_eq!(d.status(&r1), VIRTIO_BLK_S_UNSUPP as u8);
    assert_eq!(d.status(&r2), VIRTIO_BLK_S_UNSUPP as u8);
    assert_eq!(d.status(&r3), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(d.status(&r4), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(d.status(&r5), VIRTIO_BLK_S_IOERR as u8);
    let on_disk = std::fs::read(image.path()).unwrap();
    assert_eq!(on_disk[0], 0x5a, "refused requests touch nothing");
}

#[test]
fn write_zeroes_reads_back_as_zero() {
    let size = 1024 * 1024u64;
    let image = TempImage::new(size);
    std::fs::write(image.path(), vec![0x77u8; size as usize]).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem);
    let block = open(&image, false, None);
    let features = all_features(&block);
    let mut rig = activate(block, &d, features);

    // With unmap (may punch) and without (zeroes in place), two segments in one request.
    let r1 = segment_request(
        &mut d,
        VIRTIO_BLK_T_WRITE_ZEROES,
        &[segment(0, 8, 1), segment(16, 1, 0)],
    );
    let r2 = segment_request(&mut d, VIRTIO_BLK_T_WRITE_ZEROES, &[segment(100, 3, 0)]);
    let r3 = segment_request(&mut d, VIRTIO_BLK_T_WRITE_ZEROES, &[segment(0, 1, 2)]);
    kick(&mut rig.block, 0);
    assert_eq!(d.status(&r1), VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.status(&r2), VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.status(&r3), VIRTIO_BLK_S_UNSUPP as u8);

    let on_disk = std::fs::read(image.path()).unwrap();
    assert_eq!(on_disk.len() as u64, size);
    assert!(on_disk[..4096].iter().all(|&b| b == 0));
    assert_eq!(on_disk[4096], 0x77);
    assert!(on_disk[16 * 512..17 * 512].iter().all(|&b| b == 0));
    assert_eq!(on_disk[17 * 512], 0x77);
    assert!(on_disk[100 * 512..103 * 512].iter().all(|&b| b == 0));
    assert_eq!(on_disk[103 * 512], 0x77);
    assert_eq!(on_disk[100 * 512 - 1], 0x77);

    // And the guest reads zeroes back.
    let (r, _) = d.request(VIRTIO_BLK_T_IN, 0, 4608, true);
    kick(&mut rig.block, 0);
    let data = d.data(&r);
    assert!(data[..4096].iter().all(|&b| b == 0));
    assert!(data[4096..].iter().all(|&b| b == 0x77));
}

#[test]
fn read_only_refuses_every_write() {
    let image = TempImage::new(64 * 1024);
    std::fs::write(image.path(), vec![0x11u8; 64 * 1024]).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem);
    let block = open(&image, true, None);
    let features = all_features(&block);
    let mut rig = activate(block, &d, features);

    let (w, _) = d.request(VIRTIO_BLK_T_OUT, 0, 512, false);
    d.fill(&w, &[0; 512]);
    let z = segment_request(&mut d, VIRTIO_BLK_T_WRITE_ZEROES, &[segment(0, 1, 0)]);
    let dc = segment_request(&mut d, VIRTIO_BLK_T_DISCARD, &[segment(0, 8, 0)]);
    let (r, _) = d.request(VIRTIO_BLK_T_IN, 0, 512, true);
    let (f, _) = d.request(VIRTIO_BLK_T_FLUSH, 0, 0, false);
    kick(&mut rig.block, 0);
    assert_eq!(d.used_count(), 5);
    assert_eq!(d.status(&w), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(d.status(&z), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(d.status(&dc), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(d.status(&r), VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.status(&f), VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.data(&r), vec![0x11; 512]);
    assert_eq!(
        std::fs::read(image.path()).unwrap(),
        vec![0x11u8; 64 * 1024]
    );
}

#[test]
fn out_of_range_and_unknown_requests() {
    let image = TempImage::new(64 * 1024); // 128 sectors
    let mem = guest_memory();
    let mut d = Driver::new(&mem);
    let block = open(&image, false, None);
    let features = all_features(&block);
    let mut rig = activate(block, &d, features);

    let (a, _) = d.request(VIRTIO_BLK_T_IN, 128, 512, true);
    let (b, _) = d.request(VIRTIO_BLK_T_IN, 127, 1024, true);
    let (c, _) = d.request(VIRTIO_BLK_T_OUT, u64::MAX / 256, 512, false);
    let (e, _) = d.request(VIRTIO_BLK_T_IN, 127, 512, true);
    let (u, _) = d.request(99, 0, 512, true);
    let (gl, _) = d.request(10, 0, 8, true); // GET_LIFETIME, not offered
    let (past, _) = d.request(VIRTIO_BLK_T_OUT, 128, 512, false);
    kick(&mut rig.block, 0);
    assert_eq!(d.used_count(), 7);
    assert_eq!(d.status(&past), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(
        std::fs::metadata(image.path()).unwrap().len(),
        64 * 1024,
        "not extended"
    );
    assert_eq!(d.status(&a), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(d.status(&b), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(d.status(&c), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(
        d.status(&e),
        VIRTIO_BLK_S_OK as u8,
        "the last sector is readable"
    );
    assert_eq!(d.status(&u), VIRTIO_BLK_S_UNSUPP as u8);
    assert_eq!(d.status(&gl), VIRTIO_BLK_S_UNSUPP as u8);
    assert_eq!(d.used(0).1, 1, "a failed read reports only the status byte");
}

/// Serves one good read after a hostile request and checks it.
fn still_serving(d: &mut Driver, block: &mut Block) {
    let before = d.used_count();
    let (r, head) = d.request(VIRTIO_BLK_T_IN, 0, 512, true);
    kick(block, 0);
    assert_eq!(d.used_count(), before + 1, "the good request was served");
    assert_eq!(d.used(before), (u32::from(head), 513));
    assert_eq!(d.status(&r), VIRTIO_BLK_S_OK as u8);
}

fn hostile_rig(mem: &GuestMemoryMmap) -> (Driver<'_>, Rig, TempImage) {
    let image = TempImage::new(64 * 1024);
    let d = Driver::new(mem);
    let block = open(&image, false, None);
    let features = all_features(&block);
    let rig = activate(block, &d, features);
    (d, rig, image)
}

#[test]
fn descriptor_beyond_guest_memory_is_ioerr() {
    let mem = guest_memory();
    let (mut d, mut rig, _image) = hostile_rig(&mem);
    let h = d.alloc(16);
    header(&mem, h, VIRTIO_BLK_T_IN, 0);
    let s = d.alloc(1);
    mem.write_obj(0xffu8, GuestAddress(s)).unwrap();
    // Data entirely past the end, and data straddling it.
    d.chain(&[
        Buf(h, 16, false),
        Buf(MEM_SIZE as u64 + 0x1000, 512, true),
        Buf(s, 1, true),
    ]);
    kick(&mut rig.block, 0);
    assert_eq!(d.used_count(), 1);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(s)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    let s2 = d.alloc(1);
    d.chain(&[
        Buf(h, 16, false),
        Buf(MEM_SIZE as u64 - 256, 512, true),
        Buf(s2, 1, true),
    ]);
    kick(&mut rig.block, 0);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(s2)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    // A header outside memory.
    let s3 = d.alloc(1);
    d.chain(&[Buf(u64::MAX - 8, 16, false), Buf(s3, 1, true)]);
    kick(&mut rig.block, 0);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(s3)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    // A status byte outside memory: nowhere to answer.
    d.chain(&[Buf(h, 16, false), Buf(MEM_SIZE as u64, 1, true)]);
    kick(&mut rig.block, 0);
    assert_eq!(d.used_count(), 4);
    assert_eq!(d.used(3).1, 0);
    assert!(rig.block.needs_reset());
    still_serving(&mut d, &mut rig.block);
}

#[test]
fn chain_with_a_next_loop_is_dropped() {
    let mem = guest_memory();
    let (mut d, mut rig, _image) = hostile_rig(&mem);
    let h = d.alloc(16);
    header(&mem, h, VIRTIO_BLK_T_IN, 0);
    let data = d.alloc(512);
    // 0 -> 1 -> 0 -> ...
    d.store(0, h, 16, VRING_DESC_F_NEXT, 1);
    d.store(1, data, 512, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 0);
    d.next_desc = 2;
    d.publish(0);
    // And a descriptor whose next index is past the table.
    d.store(2, h, 16, VRING_DESC_F_NEXT, 1000);
    d.next_desc = 3;
    d.publish(2);
    kick(&mut rig.block, 0);
    assert_eq!(d.used_count(), 2, "both returned, neither hangs");
    assert_eq!(d.used(0), (0, 0));
    assert_eq!(d.used(1), (2, 0));
    assert!(rig.block.needs_reset());
    still_serving(&mut d, &mut rig.block);
}

#[test]
fn short_header_is_ioerr() {
    let mem = guest_memory();
    let (mut d, mut rig, _image) = hostile_rig(&mem);
    let h = d.alloc(16);
    header(&mem, h, VIRTIO_BLK_T_IN, 0);
    let data = d.alloc(512);
    let s = d.alloc(1);
    d.chain(&[Buf(h, 15, false), Buf(data, 512, true), Buf(s, 1, true)]);
    // No readable part at all.
    let s2 = d.alloc(1);
    d.chain(&[Buf(s2, 1, true)]);
    kick(&mut rig.block, 0);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(s)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(s2)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    assert!(!rig.block.needs_reset());
    still_serving(&mut d, &mut rig.block);
}

#[test]
fn device_readable_status_is_dropped() {
    let mem = guest_memory();
    let (mut d, mut rig, image) = hostile_rig(&mem);
    let h = d.alloc(16);
    header(&mem, h, VIRTIO_BLK_T_OUT, 0);
    let data = d.alloc(512);
    mem.write_slice(&[0xee; 512], GuestAddress(data)).unwrap();
    let s = d.alloc(1);
    mem.write_obj(0xffu8, GuestAddress(s)).unwrap();
    d.chain(&[Buf(h, 16, false), Buf(data, 512, false), Buf(s, 1, false)]);
    kick(&mut rig.block, 0);
    assert_eq!(d.used_count(), 1);
    assert_eq!(d.used(0).1, 0);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(s)).unwrap(),
        0xff,
        "not written"
    );
    assert!(rig.block.needs_reset());
    assert_eq!(
        std::fs::read(image.path()).unwrap()[0],
        0,
        "nothing was written to disk"
    );

    // Readable after writable, with a writable status at the end: IOERR, nothing read.
    let h2 = d.alloc(16);
    header(&mem, h2, VIRTIO_BLK_T_IN, 0);
    let w = d.alloc(512);
    let r = d.alloc(512);
    let s2 = d.alloc(1);
    d.chain(&[
        Buf(h2, 16, false),
        Buf(w, 512, true),
        Buf(r, 512, false),
        Buf(s2, 1, true),
    ]);
    kick(&mut rig.block, 0);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(s2)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    still_serving(&mut d, &mut rig.block);
}

#[test]
fn data_not_a_multiple_of_512_is_ioerr() {
    let mem = guest_memory();
    let (mut d, mut rig, image) = hostile_rig(&mem);
    let (r, _) = d.request(VIRTIO_BLK_T_IN, 0, 511, true);
    let (w, _) = d.request(VIRTIO_BLK_T_OUT, 0, 513, false);
    d.fill(&w, &[0x33; 513]);
    kick(&mut rig.block, 0);
    assert_eq!(d.status(&r), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(d.status(&w), VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(std::fs::read(image.path()).unwrap()[0], 0);
    still_serving(&mut d, &mut rig.block);
}

#[test]
fn huge_lengths_are_refused_without_allocating() {
    let mem = guest_memory();
    let (mut d, mut rig, _image) = hostile_rig(&mem);
    let h = d.alloc(16);
    header(&mem, h, VIRTIO_BLK_T_IN, 0);
    // A descriptor claiming 3.75 GiB inside a 4 MiB guest.
    let s = d.alloc(1);
    d.chain(&[
        Buf(h, 16, false),
        Buf(DATA, 0xf000_0000, true),
        Buf(s, 1, true),
    ]);
    // Two descriptors whose lengths together overflow 32 bits.
    let s2 = d.alloc(1);
    d.chain(&[
        Buf(h, 16, false),
        Buf(DATA, 0x8000_0000, true),
        Buf(DATA, 0x8000_0000, true),
        Buf(s2, 1, true),
    ]);
    // A read that fits in guest memory but not on the 64 KiB disk.
    let (big, _) = d.request(VIRTIO_BLK_T_IN, 0, 2 * 1024 * 1024, true);
    kick(&mut rig.block, 0);
    assert_eq!(d.used_count(), 3);
    assert_eq!(
        mem.read_obj::<u8>(GuestAddress(s)).unwrap(),
        VIRTIO_BLK_S_IOERR as u8
    );
    assert_eq!(d.used(1).1, 0, "overflowing chain is cut short and dropped");
    assert_eq!(d.status(&big), VIRTIO_BLK_S_IOERR as u8);
    still_serving(&mut d, &mut rig.block);
}

#[test]
fn bad_available_index_stops_the_queue_without_hanging() {
    let mem = guest_memory();
    let (d, mut rig, _image) = hostile_rig(&mem);
    // The driver claims 1000 new chains in a 16-entry ring.
    d.vq.avail().idx().store(1000);
    kick(&mut rig.block, 0);
    assert_eq!(d.used_count(), 0);
    assert!(rig.block.needs_reset());
    // Reset clears it; notifications before activation do nothing.
    rig.block.reset();
    assert!(!rig.block.needs_reset());
    kick(&mut rig.block, 0);
    kick(&mut rig.block, 7);
}

#[test]
fn activation_without_the_queue_is_refused() {
    let image = TempImage::new(4096);
    let mut block = open(&image, false, None);
    let mem = guest_memory();
    let e = block
        .activate(Activation {
            mem,
            queues: vec![None],
            interrupt: Interrupt::new(Arc::new(vireo_machine::NoIrq)),
            features: F_VERSION_1,
        })
        .err()
        .unwrap();
    assert!(e.to_string().contains("queue 0"), "{e}");
}

#[test]
fn a_read_through_the_mmio_transport() {
    use crate::mmio::{
        MmioTransport, STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK,
        STATUS_NEEDS_RESET,
    };
    use vireo_machine::BusDevice;

    // Register offsets from virtio 1.2 §4.2.2.
    fn wr(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }
    fn rd(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    let image = TempImage::new(64 * 1024);
    std::fs::write(image.path(), vec![0x42u8; 64 * 1024]).unwrap();
    let mem = guest_memory();
    let mut d = Driver::new(&mem);
    let block = open(&image, false, Some("mmio"));
    let irq = Arc::new(CountingIrq(AtomicU32::new(0)));
    let mut t = MmioTransport::new(Box::new(block), mem.clone(), irq.clone());
    assert_eq!(rd(&mut t, 0x008), crate::types::BLOCK);
    assert_eq!(rd(&mut t, 0x100), 128, "capacity through the config window");

    wr(&mut t, 0x070, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    for sel in 0..2 {
        wr(&mut t, 0x014, sel);
        let offered = rd(&mut t, 0x010);
        wr(&mut t, 0x024, sel);
        wr(&mut t, 0x020, offered);
    }
    wr(
        &mut t,
        0x070,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
    );
    assert_ne!(rd(&mut t, 0x070) & STATUS_FEATURES_OK, 0);
    wr(&mut t, 0x030, 0);
    assert_eq!(rd(&mut t, 0x034), u32::from(QUEUE_SIZE));
    wr(&mut t, 0x038, u32::from(QSIZE));
    let q = d.queue();
    let (desc, avail, used) = (
        virtio_queue::QueueT::desc_table(&q),
        virtio_queue::QueueT::avail_ring(&q),
        virtio_queue::QueueT::used_ring(&q),
    );
    for (low, v) in [(0x080, desc), (0x090, avail), (0x0a0, used)] {
        wr(&mut t, low, v as u32);
        wr(&mut t, low + 4, (v >> 32) as u32);
    }
    wr(&mut t, 0x044, 1);
    wr(
        &mut t,
        0x070,
        STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
    );
    assert_eq!(rd(&mut t, 0x070) & STATUS_NEEDS_RESET, 0);

    let (r, head) = d.request(VIRTIO_BLK_T_IN, 3, 1024, true);
    let (id, _) = d.request(VIRTIO_BLK_T_GET_ID, 0, 20, true);
    wr(&mut t, 0x050, 0);
    // The I/O thread answers; a driver waits for the interrupt.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while irq.0.load(Ordering::Relaxed) == 0 || d.used_count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no completion within 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert_eq!(d.used_count(), 2);
    assert_eq!(d.used(0), (u32::from(head), 1025));
    assert_eq!(d.status(&r), VIRTIO_BLK_S_OK as u8);
    assert_eq!(d.data(&r), vec![0x42; 1024]);
    assert_eq!(&d.data(&id)[..5], b"mmio\0");
    assert_eq!(rd(&mut t, 0x060) & INT_USED, INT_USED);
    assert!(irq.0.load(Ordering::Relaxed) > 0);
}

/// Two request queues, each with its own I/O thread: F_MQ and num_queues are offered, each
/// queue's requests complete on its own ring, and without F_MQ only the first queue runs.
#[test]
fn several_queues_are_served_each_by_its_thread() {
    let image = TempImage::new(64 * 1024);
    std::fs::write(
        image.path(),
        (0..64 * 1024).map(|i| (i / 512) as u8).collect::<Vec<_>>(),
    )
    .unwrap();
    let open2 = || {
        Block::open(&BlockConfig {
            num_queues: 2,
            ..config(image.path(), false, None)
        })
        .unwrap()
    };
    let mem = guest_memory();
    let mut d0 = Driver::new(&mem);
    let mut d1 = Driver::at(&mem, 0x20_0000, 0x28_0000);
    let mut block = open2();
    assert_eq!(block.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let mut n = [0u8; 2];
    block.read_config(config_offset::NUM_QUEUES as u64, &mut n);
    assert_eq!(u16::from_le_bytes(n), 2);
    let features = block.features();
    assert_ne!(features & (1 << VIRTIO_BLK_F_MQ), 0);
    let irq = Arc::new(CountingIrq(AtomicU32::new(0)));
    block
        .activate(Activation {
            mem: mem.clone(),
            queues: vec![Some(d0.queue()), Some(d1.queue())],
            interrupt: Interrupt::new(irq.clone()),
            features,
        })
        .unwrap();
    let (r0, _) = d0.request(VIRTIO_BLK_T_IN, 3, 512, true);
    let (r1, _) = d1.request(VIRTIO_BLK_T_IN, 5, 512, true);
    kick(&mut block, 1);
    assert_eq!(d1.used_count(), 1, "queue 1 served");
    assert_eq!(d1.data(&r1), vec![5u8; 512]);
    kick(&mut block, 0);
    assert_eq!(d0.used_count(), 1);
    assert_eq!(d0.data(&r0), vec![3u8; 512]);
    assert!(block.queue_event(0).is_some() && block.queue_event(1).is_some());
    block.reset();
    assert!(block.queue_event(0).is_none(), "reset stops the threads");
    drop(block);

    // The driver did not take MQ: only the request queue runs.
    let mut block = open2();
    let mut d0 = Driver::new(&mem);
    let d1 = Driver::at(&mem, 0x20_0000, 0x28_0000);
    block
        .activate(Activation {
            mem: mem.clone(),
            queues: vec![Some(d0.queue()), Some(d1.queue())],
            interrupt: Interrupt::new(irq.clone()),
            features: features & !(1 << VIRTIO_BLK_F_MQ),
        })
        .unwrap();
    assert!(block.queue_event(1).is_none());
    let (r, _) = d0.request(VIRTIO_BLK_T_IN, 7, 512, true);
    kick(&mut block, 0);
    assert_eq!(d0.data(&r), vec![7u8; 512]);

    // Out of range: refused at open, naming the range.
    for bad in [0u16, MAX_QUEUES as u16 + 1] {
        let e = Block::open(&BlockConfig {
            num_queues: bad,
            ..config(image.path(), false, None)
        })
        .err()
        .expect("a bad queue count");
        assert!(e.to_string().contains("expected 1 to 16"), "{e}");
    }
}
