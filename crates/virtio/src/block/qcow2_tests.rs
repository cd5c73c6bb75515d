//! qcow2 images made by qemu-img, read and written through vireo's `Qcow2Image`, with qemu-img
//! as the referee: `qemu-img check` must find them clean afterwards and `qemu-img compare` must
//! find them identical to a raw image written the same way. And hostile images: an error at
//! open or at the read, never a panic.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::image;
use super::qcow2::Qcow2Image;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("vireo-q2t-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn p(&self, f: &str) -> PathBuf {
        self.0.join(f)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn run(prog: &str, args: &[&str]) -> std::process::Output {
    Command::new(prog)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{prog} is needed (apt-get install qemu-utils): {e}"))
}

fn qemu_img(args: &[&str]) {
    let o = run("qemu-img", args);
    assert!(o.status.success(), "qemu-img {args:?}: {o:?}");
}

/// qemu-io commands on an image of format `fmt`.
fn qemu_io(fmt: &str, path: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", fmt];
    for c in cmds {
        args.extend(["-c", c]);
    }
    args.push(s(path));
    let o = run("qemu-io", &args);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && !out.contains("failed"),
        "qemu-io {args:?}: {o:?}"
    );
}

fn check_clean(path: &Path) {
    let o = run("qemu-img", &["check", s(path)]);
    assert!(
        o.status.success(),
        "qemu-img check {}: {}{}",
        path.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `qemu-img compare` of a qcow2 image against a raw one.
fn identical(qcow2: &Path, raw: &Path) {
    let o = run(
        "qemu-img",
        &["compare", "-f", "qcow2", "-F", "raw", s(qcow2), s(raw)],
    );
    assert!(
        o.status.success(),
        "qemu-img compare {} {}: {}{}",
        qcow2.display(),
        raw.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn open(path: &Path, readonly: bool) -> (File, io::Result<Qcow2Image>) {
    let f = OpenOptions::new()
        .read(true)
        .write(!readonly)
        .open(path)
        .unwrap();
    let q = Qcow2Image::open(&f, path, readonly);
    (f, q)
}

/// Bytes that differ from offset to offset, so a misplaced cluster shows.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] ^ seed)
        .collect()
}

/// Writes (unaligned, across clusters and L2 tables, at the very end), zeroes and discards,
/// applied alike to the qcow2 image through vireo and to a raw file.
fn write_both(q: &Qcow2Image, raw: &File, size: u64) {
    let zeroes = vec![0u8; 64 << 10];
    let writes: [(u64, usize, u8); 6] = [
        (0, 4096, 1),
        (65_000, 70_000, 2),
        (3 << 20, 2 << 20, 3),
        ((5 << 20) + 512, 1536, 4),
        (size - 8192, 8192, 5),
        ((1 << 20) - 7, 77, 6),
    ];
    for (at, len, seed) in writes {
        let b = pattern(len, seed);
        q.write_all_at(&b, at).unwrap();
        raw.write_all_at(&b, at).unwrap();
    }
    // Zeroes inside data, kept allocated and freed.
    let z = |at: u64, len: u64, unmap: bool| {
        q.write_zeroes(at, len, unmap, &zeroes).unwrap();
        raw.write_all_at(&vec![0u8; len as usize], at).unwrap();
    };
    z(3 << 20, 128 << 10, false);
    z((4 << 20) - 4096, 4096, true);
    q.discard(2 << 20, 2 << 20, &zeroes).unwrap();
    raw.write_all_at(&vec![0u8; 2 << 20], 2 << 20).unwrap();
    q.sync().unwrap();
}

/// The whole disk read through vireo equals the raw file.
fn reads_as(q: &Qcow2Image, raw: &Path) {
    let want = std::fs::read(raw).unwrap();
    assert_eq!(q.size(), want.len() as u64);
    let mut got = vec![0u8; want.len()];
    // In pieces that do not fall on cluster boundaries.
    for (i, piece) in got.chunks_mut(300_001).enumerate() {
        q.read_exact_at(piece, i as u64 * 300_001).unwrap();
    }
    assert!(got == want, "{}: read back differs", raw.display());
}

#[test]
fn qemu_img_images_with_lazy_refcounts_on_and_off_and_big_clusters_stay_clean() {
    let d = Dir::new("lazy");
    let size = 16u64 << 20;
    for lazy in ["on", "off"] {
        for cluster in ["64k", "2M"] {
            let img = d.p(&format!("{lazy}-{cluster}.qcow2"));
            let raw = d.p(&format!("{lazy}-{cluster}.raw"));
            let o = format!("lazy_refcounts={lazy},cluster_size={cluster}");
            qemu_img(&["create", "-q", "-f", "qcow2", "-o", &o, s(&img), "16M"]);
            std::fs::File::create(&raw).unwrap().set_len(size).unwrap();
            // qemu writes first, so vireo meets qemu's allocations too.
            let pre = ["write -P 0x5a 1M 300k", "write -P 0xa5 9M 64k"];
            qemu_io("qcow2", &img, &pre);
            qemu_io("raw", &raw, &pre);
            {
                let (_f, q) = open(&img, false);
                let q = q.unwrap();
                let r = OpenOptions::new().write(true).open(&raw).unwrap();
                write_both(&q, &r, size);
                reads_as(&q, &raw);
            }
            check_clean(&img);
            identical(&img, &raw);
        }
    }
}

#[test]
fn a_backing_chain_of_three_is_read_and_written_through() {
    let d = Dir::new("chain");
    let (base, mid, top) = (d.p("base.qcow2"), d.p("mid.qcow2"), d.p("top.qcow2"));
    qemu_img(&["create", "-q", "-f", "qcow2", s(&base), "16M"]);
    qemu_io(
        "qcow2",
        &base,
        &["write -P 0x11 0 6M", "write -P 0x12 15M 1M"],
    );
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&base),
        "-F",
        "qcow2",
        s(&mid),
    ]);
    qemu_io("qcow2", &mid, &["write -P 0x21 1M 1M", "write -z 5M 64k"]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        s(&mid),
        "-F",
        "qcow2",
        s(&top),
    ]);
    qemu_io("qcow2", &top, &["write -P 0x31 1536k 100k"]);
    // What the chain reads, and what its lower images hold, before vireo writes.
    let raw = d.p("expect.raw");
    qemu_img(&["convert", "-O", "raw", s(&top), s(&raw)]);
    let (base_copy, mid_copy) = (d.p("base.raw"), d.p("mid.raw"));
    qemu_img(&["convert", "-O", "raw", s(&base), s(&base_copy)]);
    qemu_img(&["convert", "-O", "raw", s(&mid), s(&mid_copy)]);
    {
        let (_f, q) = open(&top, false);
        let q = q.unwrap();
        reads_as(&q, &raw);
        // Partial clusters over the lower images' data: copy-on-write from the chain.
        let r = OpenOptions::new().write(true).open(&raw).unwrap();
        write_both(&q, &r, 16 << 20);
        reads_as(&q, &raw);
    }
    check_clean(&top);
    identical(&top, &raw);
    identical(&mid, &mid_copy);
    identical(&base, &base_copy);
}

#[test]
fn compressed_clusters_are_read_zlib_and_zstd_is_refused_at_open() {
    let d = Dir::new("compressed");
    let raw = d.p("src.raw");
    // Compressible but not uniform, with a hole.
    let mut data = Vec::new();
    for i in 0..(8u32 << 20) / 4096 {
        let b = if i % 7 == 3 { 0 } else { (i % 251) as u8 };
        data.extend(std::iter::repeat_n(b, 2048));
        data.extend(pattern(2048, b));
    }
    std::fs::write(&raw, &data).unwrap();
    let zlib = d.p("zlib.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        s(&raw),
        s(&zlib),
    ]);
    // The referee says the clusters are compressed, else this test tests nothing.
    let o = run("qemu-img", &["check", "--output=json", s(&zlib)]);
    let j = String::from_utf8_lossy(&o.stdout);
    assert!(
        !j.contains("\"compressed-clusters\": 0,") && j.contains("compressed-clusters"),
        "{j}"
    );
    {
        let (_f, q) = open(&zlib, true);
        reads_as(&q.unwrap(), &raw);
    }
    // Overwriting part of a compressed cluster: imago decompresses, merges, writes anew.
    {
        let (_f, q) = open(&zlib, false);
        let q = q.unwrap();
        let b = pattern(1000, 9);
        q.write_all_at(&b, 70_000).unwrap();
        q.sync().unwrap();
        let r = OpenOptions::new().write(true).open(&raw).unwrap();
        r.write_all_at(&b, 70_000).unwrap();
    }
    check_clean(&zlib);
    identical(&zlib, &raw);

    // imago 0.2.6 decompresses zlib (deflate) only: a zstd image is refused with its
    // message, before any guest read could return garbage.
    let zstd = d.p("zstd.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-f",
        "raw",
        "-O",
        "qcow2",
        "-o",
        "compression_type=zstd",
        s(&raw),
        s(&zstd),
    ]);
    for readonly in [true, false] {
        let (_f, q) = open(&zstd, readonly);
        let e = q.err().expect("a zstd image was opened");
        assert!(
            e.to_string().contains("compression"),
            "zstd image refused with: {e}"
        );
    }
}

#[test]
fn a_version_2_image_is_read_and_written() {
    let d = Dir::new("v2");
    let img = d.p("v2.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "compat=0.10",
        s(&img),
        "16M",
    ]);
    qemu_io(
        "qcow2",
        &img,
        &["write -P 0x42 100k 3M", "write -P 0x43 12M 4k"],
    );
    let raw = d.p("v2.raw");
    qemu_img(&["convert", "-O", "raw", s(&img), s(&raw)]);
    {
        let (_f, q) = open(&img, false);
        let q = q.unwrap();
        reads_as(&q, &raw);
        // v2 has no zero clusters: zeroes and discards are written as zeroes.
        let r = OpenOptions::new().write(true).open(&raw).unwrap();
        write_both(&q, &r, 16 << 20);
    }
    check_clean(&img);
    identical(&img, &raw);
    let o = run("qemu-img", &["info", s(&img)]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("compat: 0.10"));
}

#[test]
fn discard_frees_the_host_files_blocks() {
    let d = Dir::new("discard");
    let img = d.p("d.qcow2");
    image::create(&img, true, Some(64 << 20), None, None).unwrap();
    let (_f, q) = open(&img, false);
    let q = q.unwrap();
    let data = pattern(16 << 20, 1);
    q.write_all_at(&data, 8 << 20).unwrap();
    q.sync().unwrap();
    let blocks = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
    let before = blocks(&img);
    assert!(
        before >= 16 << 20,
        "{before} bytes allocated after 16M written"
    );
    q.discard(8 << 20, 16 << 20, &[0u8; 4096]).unwrap();
    q.sync().unwrap();
    let after = blocks(&img);
    assert!(
        after + (15 << 20) <= before,
        "discarding 16M freed only {} bytes ({before} -> {after})",
        before - after
    );
    let mut back = vec![1u8; 1 << 20];
    q.read_exact_at(&mut back, 12 << 20).unwrap();
    assert!(back.iter().all(|&b| b == 0));
    drop(q);
    check_clean(&img);
}

fn poke(path: &Path, at: u64, bytes: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, at)
        .unwrap();
}

fn peek64(path: &Path, at: u64) -> u64 {
    let mut b = [0u8; 8];
    File::open(path).unwrap().read_exact_at(&mut b, at).unwrap();
    u64::from_be_bytes(b)
}

/// A 16M qcow2 image (64K clusters) with data in its first cluster.
fn with_data(d: &Dir, name: &str) -> PathBuf {
    let p = d.p(name);
    qemu_img(&["create", "-q", "-f", "qcow2", s(&p), "16M"]);
    qemu_io("qcow2", &p, &["write -P 0x77 0 64k"]);
    p
}

/// Whatever vireo does with the image, it neither panics nor succeeds at reading a cluster
/// that is not there; `qemu-img check` and `vireo disk check` both call it broken.
fn broken_everywhere(p: &Path) {
    let o = run("qemu-img", &["check", s(p)]);
    assert!(!o.status.success(), "qemu-img check found {p:?} clean");
    // An error (it could not be checked at all) is a verdict too.
    if let Ok(r) = image::check(p) {
        assert!(r.exit_code() != 0, "vireo's check found {p:?} clean: {r:?}");
    }
}

/// The open was refused with an error that says what is wrong.
fn refused_past_the_end(q: io::Result<Qcow2Image>, what: &str) {
    let e = q.err().unwrap_or_else(|| panic!("{what}: opened"));
    assert!(
        e.to_string().contains("past the end of the file"),
        "{what}: {e}"
    );
}

#[test]
fn a_refcount_table_past_the_end_of_the_file_is_refused_at_open() {
    let d = Dir::new("reftable");
    let p = with_data(&d, "rt.qcow2");
    poke(&p, 48, &(1u64 << 40).to_be_bytes());
    // (imago alone overflows its stack opening this for writing, and reads it as zeroes.)
    for readonly in [true, false] {
        refused_past_the_end(open(&p, readonly).1, "refcount table");
    }
    broken_everywhere(&p);
}

#[test]
fn an_l2_table_past_the_end_of_the_file_is_refused_at_open() {
    let d = Dir::new("l2");
    let p = with_data(&d, "l2.qcow2");
    let l1 = peek64(&p, 40);
    // The first L1 entry points 1 TiB into a file of a few hundred KiB (imago alone would
    // read the guest's first 512 MiB as zeroes).
    poke(&p, l1, &((1u64 << 40) | (1 << 63)).to_be_bytes());
    for readonly in [true, false] {
        refused_past_the_end(open(&p, readonly).1, "L2 table");
    }
    broken_everywhere(&p);
}

#[test]
fn a_lost_refcount_keeps_the_image_from_being_written_not_read() {
    let d = Dir::new("lostref");
    let p = with_data(&d, "lost.qcow2");
    // The refcount table's first entry gone: the header, the tables and the data have no
    // refcount. imago alone takes cluster 0 for a new refcount block and overwrites the
    // header (or overflows its stack).
    let reftable = peek64(&p, 48);
    poke(&p, reftable, &0u64.to_be_bytes());
    let before = std::fs::read(&p).unwrap();
    let e = open(&p, false).1.err().expect("opened for writing");
    assert!(e.to_string().contains("has no refcount"), "{e}");
    assert!(std::fs::read(&p).unwrap() == before, "the image changed");
    // Read-only, nothing needs the refcounts: the data is there.
    let (_f, q) = open(&p, true);
    let mut b = vec![0u8; 65536];
    q.unwrap().read_exact_at(&mut b, 0).unwrap();
    assert!(b.iter().all(|&x| x == 0x77));
    broken_everywhere(&p);
}

#[test]
fn an_l1_table_overlapping_the_refcount_table() {
    let d = Dir::new("overlap");
    let p = with_data(&d, "ov.qcow2");
    let reftable = peek64(&p, 48);
    poke(&p, 40, &reftable.to_be_bytes());
    // The refcount table's entries now read as L2 table offsets (the refcount block's
    // cluster, whose 16-bit refcounts make no valid L2 entries): errors, not a panic.
    for readonly in [true, false] {
        let (_f, q) = open(&p, readonly);
        let Ok(q) = q else { continue };
        let mut b = vec![0u8; 65536];
        let _ = q.read_exact_at(&mut b, 0);
        if !readonly {
            let _ = q.write_all_at(&b, 0).and_then(|()| q.sync());
        }
    }
    // vireo's check names the overlap.
    let p2 = with_data(&d, "ov2.qcow2");
    poke(&p2, 40, &peek64(&p2, 48).to_be_bytes());
    let r = image::check(&p2).unwrap();
    assert_eq!(r.exit_code(), 2, "{r:?}");
    assert!(
        r.messages
            .iter()
            .any(|m| m.contains("the refcount table") && m.contains("the L1 table")),
        "{r:?}"
    );
    broken_everywhere(&p2);
}

#[test]
fn header_length_and_cluster_bits_just_out_of_range_are_refused_at_open() {
    let d = Dir::new("header");
    for (what, at, bytes) in [
        ("cluster bits 8", 20u64, 8u32.to_be_bytes()),
        ("cluster bits 22", 20, 22u32.to_be_bytes()),
        ("header length 96", 100, 96u32.to_be_bytes()),
        (
            "header length a cluster and more",
            100,
            (65536u32 + 8).to_be_bytes(),
        ),
    ] {
        let p = with_data(&d, "h.qcow2");
        poke(&p, at, &bytes);
        for readonly in [true, false] {
            let (_f, q) = open(&p, readonly);
            assert!(q.is_err(), "{what}: opened");
        }
        assert!(image::check(&p).is_err(), "{what}: checked");
        let o = run("qemu-img", &["check", s(&p)]);
        assert!(!o.status.success(), "{what}: qemu-img check accepted it");
        std::fs::remove_file(&p).unwrap();
    }
}

/// A backing file name that points at a FIFO: opening it would wait for a writer forever.
/// The device, `info` and `check` refuse it at once, naming what it is.
#[test]
fn a_fifo_as_backing_file_is_refused_without_blocking() {
    let d = Dir::new("fifo");
    let fifo = d.p("fifo");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path and nothing else.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let top = d.p("top.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-u",
        "-b",
        s(&fifo),
        "-F",
        "raw",
        s(&top),
        "16M",
    ]);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let t = top.clone();
    std::thread::spawn(move || {
        let (_f, q) = open(&t, true);
        let info = image::info(&t);
        let _ = done_tx.send((
            q.err().map(|e| e.to_string()),
            info.err().map(|e| e.to_string()),
        ));
    });
    let (open_err, info_err) = done_rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("opening an image on a FIFO blocked");
    for e in [open_err, info_err] {
        let e = e.expect("a FIFO as backing file was accepted");
        assert!(e.contains("is a FIFO; expected a regular file"), "{e}");
    }
    let e = image::check(&fifo).expect_err("check took a FIFO");
    assert!(e.to_string().contains("FIFO"), "{e}");
}

/// Features vireo does not serve are refused at open, naming the feature: an external data
/// file, an incompatible feature bit it does not know.
#[test]
fn unsupported_qcow2_features_are_refused_naming_them() {
    let d = Dir::new("features");
    let top = d.p("ext.qcow2");
    let data = d.p("ext.raw");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={}", s(&data)),
        s(&top),
        "16M",
    ]);
    for readonly in [true, false] {
        let (_f, q) = open(&top, readonly);
        let e = q
            .err()
            .expect("an external data file was accepted")
            .to_string();
        assert!(e.contains("external data file"), "{e}");
    }
    let unknown = d.p("unknown.qcow2");
    qemu_img(&["create", "-q", "-f", "qcow2", s(&unknown), "16M"]);
    // Incompatible features are the 64-bit big-endian field at offset 72; bit 10 is unassigned.
    let f = OpenOptions::new().write(true).open(&unknown).unwrap();
    f.write_all_at(&(1u64 << 10).to_be_bytes(), 72).unwrap();
    drop(f);
    for readonly in [true, false] {
        let (_f, q) = open(&unknown, readonly);
        let e = q
            .err()
            .expect("an unknown incompatible bit was accepted")
            .to_string();
        assert!(
            e.contains("incompatible feature") && e.contains("10"),
            "{e}"
        );
    }
}
