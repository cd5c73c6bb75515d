//! `vireo disk`: images it creates are what qemu-img reads, and its description of images
//! (qemu-img's own included) agrees with qemu-img's.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use serde_json::Value;

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("vireo-disk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
    fn p(&self, f: &str) -> String {
        self.0.join(f).to_str().unwrap().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn qemu_img_json(args: &[&str]) -> Value {
    let out = Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is needed: apt-get install qemu-utils");
    assert!(out.status.success(), "qemu-img {args:?}: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn ok(args: &[&str]) -> String {
    let r = run(args);
    assert_eq!(r.status, 0, "vireo {args:?}: {}{}", r.stdout, r.stderr);
    r.stdout
}

fn info(path: &str) -> Value {
    serde_json::from_str(&ok(&["disk", "info", "--json", path])).unwrap()
}

#[test]
fn created_images_are_what_qemu_img_reads() {
    let d = Dir::new("create");
    let (base, top, big, raw) = (
        d.p("base.qcow2"),
        d.p("top.qcow2"),
        d.p("big.qcow2"),
        d.p("r.raw"),
    );
    ok(&["disk", "create", &base, "64M"]);
    ok(&["disk", "create", "-b", &base, &top]);
    ok(&["disk", "create", &big, "2G", "--cluster-size", "2M"]);
    ok(&["disk", "create", "-f", "raw", &raw, "10M"]);
    for img in [&base, &top, &big] {
        let check = Command::new("qemu-img")
            .args(["check", "-q", img])
            .output()
            .unwrap();
        assert!(check.status.success(), "{img}: {check:?}");
    }
    let q = qemu_img_json(&["info", "--output=json", &top]);
    assert_eq!(q["format"], "qcow2");
    assert_eq!(q["virtual-size"], 64u64 << 20);
    assert_eq!(q["backing-filename"], base.as_str());
    assert_eq!(q["backing-filename-format"], "qcow2");
    let q = qemu_img_json(&["info", "--output=json", &big]);
    assert_eq!(q["cluster-size"], 2u64 << 20);
    assert_eq!(q["virtual-size"], 2u64 << 30);
    let q = qemu_img_json(&["info", "--output=json", &raw]);
    assert_eq!(
        (q["format"].as_str(), q["virtual-size"].as_u64()),
        (Some("raw"), Some(10 << 20))
    );
    // Never over an existing image; bad values name themselves.
    for (args, says) in [
        (vec!["disk", "create", base.as_str(), "1G"], "exists"),
        (
            vec!["disk", "create", "-f", "vmdk", &d.p("x"), "1G"],
            "'vmdk'",
        ),
        (vec!["disk", "create", &d.p("y"), "0"], "'0'"),
        (
            vec!["disk", "create", &d.p("z"), "1G", "--cluster-size", "3000"],
            "power of two",
        ),
        (vec!["disk", "create", &d.p("w")], "size"),
        (
            vec!["disk", "create", "-f", "raw", "-b", &base, &d.p("v")],
            "backing",
        ),
    ] {
        let r = run(&args);
        assert_eq!(r.status, VIREO_ERROR, "{args:?}");
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    assert!(!Path::new(&d.p("x")).exists() && !Path::new(&d.p("v")).exists());
}

#[test]
fn info_describes_chains_and_flags_as_qemu_img_does() {
    let d = Dir::new("info");
    let (a, b, c) = (d.p("a.qcow2"), d.p("b.qcow2"), d.p("c.qcow2"));
    let q = |args: &[&str]| {
        let out = Command::new("qemu-img").args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
    };
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "cluster_size=4096",
        &a,
        "32M",
    ]);
    q(&[
        "create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", &b,
    ]);
    q(&["create", "-q", "-f", "qcow2", "-b", &b, "-F", "qcow2", &c]);
    let i = info(&c);
    assert_eq!(i["format"], "qcow2");
    assert_eq!(i["virtual_size"], 32u64 << 20);
    assert_eq!(i["backing_file"], b.as_str());
    assert_eq!(i["backing_format"], "qcow2");
    // A relative name resolves against its image's directory.
    assert_eq!(i["backing"]["backing_file"], "a.qcow2");
    assert_eq!(i["backing"]["backing"]["cluster_size"], 4096);
    assert!(i["backing"]["backing"]["backing"].is_null());
    let text = ok(&["disk", "info", &c]);
    assert!(
        text.contains("backing file: a.qcow2 (format qcow2)"),
        "{text}"
    );
    // Flags qemu-img set: lazy refcounts left dirty.
    let dirty = d.p("dirty.qcow2");
    q(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "lazy_refcounts=on",
        &dirty,
        "16M",
    ]);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&dirty)
            .unwrap();
        f.write_all_at(&1u64.to_be_bytes(), 72).unwrap();
    }
    assert_eq!(info(&dirty)["dirty"], true);
    // A loop and a missing backing file are errors naming the file.
    let (x, y) = (d.p("x.qcow2"), d.p("y.qcow2"));
    q(&["create", "-q", "-f", "qcow2", &x, "16M"]);
    q(&[
        "create", "-q", "-f", "qcow2", "-u", "-b", &x, "-F", "qcow2", &y, "16M",
    ]);
    q(&["rebase", "-q", "-u", "-b", &y, "-F", "qcow2", &x]);
    let r = run(&["disk", "info", &x]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(r.stderr.contains("loops"), "{}", r.stderr);
    q(&[
        "rebase",
        "-q",
        "-u",
        "-b",
        &d.p("gone.qcow2"),
        "-F",
        "qcow2",
        &x,
    ]);
    let r = run(&["disk", "info", &x]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(r.stderr.contains("gone.qcow2"), "{}", r.stderr);
    // Not an image at all: raw, as qemu-img says.
    let plain = d.p("plain.img");
    std::fs::write(&plain, vec![1u8; 4096]).unwrap();
    assert_eq!(info(&plain)["format"], "raw");
}

#[test]
fn resize_grows_qcow2_and_raw_images_and_never_shrinks() {
    let d = Dir::new("resize");
    let (q, r) = (d.p("q.qcow2"), d.p("r.raw"));
    ok(&["disk", "create", &q, "64M"]);
    let io = |cmd: &str| {
        let out = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", cmd, &q])
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    io("write -P 0x61 1M 64k");
    assert!(ok(&["disk", "resize", &q, "128M"]).contains("128M"));
    let info = qemu_img_json(&["info", "--output=json", &q]);
    assert_eq!(info["virtual-size"], 128u64 << 20);
    let check = Command::new("qemu-img")
        .args(["check", "-q", &q])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    // The old data stays, the new range reads as zeroes.
    assert!(!io("read -P 0x61 1M 64k").contains("Pattern verification failed"));
    assert!(!io("read -P 0 100M 1M").contains("Pattern verification failed"));
    ok(&["disk", "create", "-f", "raw", &r, "1M"]);
    ok(&["disk", "resize", &r, "3M"]);
    assert_eq!(std::fs::metadata(&r).unwrap().len(), 3 << 20);
    let s = run(&["disk", "resize", &q, "32M"]);
    assert_eq!(s.status, VIREO_ERROR);
    assert!(s.stderr.contains("only grows"), "{}", s.stderr);
    assert_eq!(
        qemu_img_json(&["info", "--output=json", &q])["virtual-size"],
        128u64 << 20
    );
}

fn qemu(args: &[&str]) -> std::process::Output {
    Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img is needed: apt-get install qemu-utils")
}

fn qemu_ok(args: &[&str]) {
    let o = qemu(args);
    assert!(o.status.success(), "qemu-img {args:?}: {o:?}");
}

fn qemu_io(fmt: &str, path: &str, cmds: &[&str]) {
    let mut c = Command::new("qemu-io");
    c.args(["-f", fmt]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    let o = c.arg(path).output().unwrap();
    assert!(
        o.status.success() && !String::from_utf8_lossy(&o.stdout).contains("failed"),
        "qemu-io {cmds:?} {path}: {o:?}"
    );
}

/// `qemu-img compare` says the two disks read the same.
fn same(a: &str, b: &str) {
    let o = qemu(&["compare", a, b]);
    assert!(o.status.success(), "qemu-img compare {a} {b}: {o:?}");
}

fn clean(img: &str) {
    let o = qemu(&["check", img]);
    assert!(o.status.success(), "qemu-img check {img}: {o:?}");
}

fn allocated(p: &str) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// A chain of three qcow2 images made by qemu: base (64M) <- mid <- top, data in each, a zero
/// range in mid over base's data, and most of the disk never written.
fn chain(d: &Dir) -> (String, String, String) {
    let (base, mid, top) = (d.p("base.qcow2"), d.p("mid.qcow2"), d.p("top.qcow2"));
    qemu_ok(&["create", "-q", "-f", "qcow2", &base, "64M"]);
    qemu_io(
        "qcow2",
        &base,
        &["write -P 0x11 0 2M", "write -P 0x12 40M 64k"],
    );
    qemu_ok(&[
        "create", "-q", "-f", "qcow2", "-b", &base, "-F", "qcow2", &mid,
    ]);
    qemu_io(
        "qcow2",
        &mid,
        &["write -P 0x21 1M 1536k", "write -z 0 128k"],
    );
    qemu_ok(&[
        "create", "-q", "-f", "qcow2", "-b", &mid, "-F", "qcow2", &top,
    ]);
    qemu_io(
        "qcow2",
        &top,
        &["write -P 0x31 20M 100k", "write -P 0x32 63M 1M"],
    );
    (base, mid, top)
}

#[test]
fn convert_flattens_a_chain_into_sparse_images_that_qemu_img_finds_identical() {
    let d = Dir::new("convert");
    let (base, _mid, top) = chain(&d);
    let (q, r, big, delta) = (
        d.p("flat.qcow2"),
        d.p("flat.raw"),
        d.p("big.qcow2"),
        d.p("delta.qcow2"),
    );
    // No progress bar when stderr is not a terminal (indicatif hides it).
    let out = run(&["disk", "convert", &top, &q]);
    assert_eq!((out.status, out.stderr.as_str()), (0, ""));
    ok(&["disk", "convert", "-O", "raw", &top, &r]);
    // Back from raw, with 2M clusters.
    ok(&[
        "disk",
        "convert",
        "-f",
        "raw",
        "--cluster-size",
        "2M",
        &r,
        &big,
    ]);
    // An overlay on base holding only what differs from it.
    ok(&["disk", "convert", "-B", &base, &top, &delta]);
    for img in [&q, &r, &big, &delta] {
        same(&top, img);
    }
    for img in [&q, &big, &delta] {
        clean(img);
    }
    // Sparse: about 5 MiB of data on a 64 MiB disk.
    assert!(allocated(&r) < 16 << 20, "raw: {} bytes", allocated(&r));
    assert!(allocated(&q) < 16 << 20, "qcow2: {} bytes", allocated(&q));
    let i = qemu_img_json(&["info", "--output=json", &big]);
    assert_eq!(i["cluster-size"], 2u64 << 20);
    let i = qemu_img_json(&["info", "--output=json", &delta]);
    assert_eq!(i["backing-filename"], base.as_str());
    assert_eq!(i["backing-filename-format"], "qcow2");
    // The delta holds less than the flat image: base's 2M at 0 are not copied (but for
    // mid's zero range over them and mid's own data).
    let data_in = |img: &str| -> u64 {
        let m = qemu_img_json(&["map", "--output=json", img]);
        m.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["depth"] == 0 && e["data"] == true)
            .map(|e| e["length"].as_u64().unwrap())
            .sum()
    };
    assert!(
        data_in(&delta) < data_in(&q),
        "{} {}",
        data_in(&delta),
        data_in(&q)
    );

    // Refusals: an existing destination is left alone, a missing source is named, and no
    // temporary file stays behind.
    std::fs::write(d.p("keep.img"), b"precious").unwrap();
    for (args, says) in [
        (
            vec!["disk", "convert", top.as_str(), &d.p("keep.img")],
            "exists",
        ),
        (
            vec!["disk", "convert", &d.p("nope.qcow2"), &d.p("x.qcow2")],
            "nope.qcow2",
        ),
        (
            vec!["disk", "convert", "-O", "vmdk", top.as_str(), &d.p("y")],
            "'vmdk'",
        ),
        (
            vec![
                "disk",
                "convert",
                "-O",
                "raw",
                "-B",
                &base,
                top.as_str(),
                &d.p("z"),
            ],
            "-B",
        ),
    ] {
        let r = run(&args);
        assert_eq!(r.status, VIREO_ERROR, "{args:?}");
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
        assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    }
    assert_eq!(std::fs::read(d.p("keep.img")).unwrap(), b"precious");
    let left: Vec<_> = std::fs::read_dir(&d.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("vireo-convert"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Reads an image's header field.
fn be64_at(p: &str, at: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 8];
    std::fs::File::open(p)
        .unwrap()
        .read_exact_at(&mut b, at)
        .unwrap();
    u64::from_be_bytes(b)
}

fn poke(p: &str, at: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    std::fs::OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .write_all_at(bytes, at)
        .unwrap();
}

/// Sets cluster `c`'s 16-bit refcount (64K clusters, one refcount block).
fn set_refcount(p: &str, c: u64, n: u16) {
    let refblock = be64_at(p, be64_at(p, 48));
    poke(p, refblock + 2 * c, &n.to_be_bytes());
}

/// vireo's and qemu-img's verdicts on one image: exit codes and counts agree.
fn verdicts_agree(img: &str) -> i32 {
    let q = qemu(&["check", "--output=json", img]);
    let v = run(&["disk", "check", "--json", img]);
    assert_eq!(
        v.status,
        q.status.code().unwrap(),
        "{img}: vireo {} / qemu-img {}",
        v.stdout,
        String::from_utf8_lossy(&q.stdout)
    );
    let qj: Value = serde_json::from_slice(&q.stdout).unwrap();
    let vj: Value = serde_json::from_str(&v.stdout).unwrap();
    assert_eq!(
        vj["leaks"],
        qj["leaks"].as_u64().unwrap_or(0),
        "{img}: {vj} / {qj}"
    );
    assert_eq!(
        vj["corruptions"],
        qj["corruptions"].as_u64().unwrap_or(0),
        "{img}: {vj} / {qj}"
    );
    v.status
}

#[test]
fn check_agrees_with_qemu_img_on_clean_leaking_and_corrupt_images() {
    let d = Dir::new("check");
    // Clean: made by qemu, and written by vireo (convert).
    let img = d.p("a.qcow2");
    qemu_ok(&["create", "-q", "-f", "qcow2", &img, "16M"]);
    qemu_io("qcow2", &img, &["write -P 1 0 200k", "write -P 2 9M 64k"]);
    assert_eq!(verdicts_agree(&img), 0);
    let (_b, _m, top) = chain(&d);
    let flat = d.p("flat.qcow2");
    ok(&["disk", "convert", &top, &flat]);
    assert_eq!(verdicts_agree(&flat), 0);
    assert_eq!(verdicts_agree(&top), 0);
    let text = ok(&["disk", "check", &img]);
    assert!(text.contains("no errors"), "{text}");

    // Leaked: a cluster past the last one in use counted but unused (what a crash between
    // allocating and using a cluster leaves).
    let leak = d.p("leak.qcow2");
    std::fs::copy(&img, &leak).unwrap();
    let clusters = std::fs::metadata(&leak).unwrap().len().div_ceil(65536);
    set_refcount(&leak, clusters, 1);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&leak)
        .unwrap()
        .set_len((clusters + 1) * 65536)
        .unwrap();
    assert_eq!(verdicts_agree(&leak), 3);
    let r = run(&["disk", "check", &leak]);
    assert!(r.stdout.contains("1 leaked cluster"), "{}", r.stdout);

    // Corrupt: a data cluster's refcount lost (the next allocation would reuse it).
    let bad = d.p("bad.qcow2");
    std::fs::copy(&img, &bad).unwrap();
    let l2 = be64_at(&bad, be64_at(&bad, 40)) & 0x00ff_ffff_ffff_fe00;
    let data = be64_at(&bad, l2) & 0x00ff_ffff_ffff_fe00;
    set_refcount(&bad, data / 65536, 0);
    assert_eq!(verdicts_agree(&bad), 2);
    // And an L2 table's refcount raised: a corruption of the COPIED kind beside a leak.
    let bad2 = d.p("bad2.qcow2");
    std::fs::copy(&img, &bad2).unwrap();
    set_refcount(&bad2, l2 / 65536, 2);
    assert_eq!(verdicts_agree(&bad2), 2);

    // Raw: nothing to check. Not an image vireo can read, or missing: its own code.
    let raw = d.p("r.raw");
    ok(&["disk", "convert", "-O", "raw", &img, &raw]);
    let r = run(&["disk", "check", &raw]);
    assert_eq!(r.status, 0);
    assert!(r.stdout.contains("nothing to check"), "{}", r.stdout);
    let cut = d.p("cut.qcow2");
    std::fs::write(&cut, &std::fs::read(&img).unwrap()[..40]).unwrap();
    for p in [cut.as_str(), &d.p("missing.qcow2")] {
        let r = run(&["disk", "check", p]);
        assert_eq!(r.status, 1, "{p}: {}{}", r.stdout, r.stderr);
        assert!(r.stderr.contains(p), "{}", r.stderr);
    }
}

/// Holds `img` open for writing in qemu-io (as a running VM would) until dropped.
struct Held(std::process::Child);

impl Held {
    fn new(fmt: &str, img: &str) -> Held {
        use std::io::Read;
        let mut child = Command::new("qemu-io")
            .args(["-f", fmt, img])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // qemu-io prompts once it has opened (and locked) the image. Asking vireo whether it
        // is locked instead would race: vireo's own check lock makes qemu-io's open fail.
        let mut out = child.stdout.take().unwrap();
        let mut seen = Vec::new();
        let mut b = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("qemu-io>") {
            let n = out.read(&mut b).unwrap();
            assert!(n > 0, "qemu-io did not open {img}: {:?}", child.wait());
            seen.extend_from_slice(&b[..n]);
        }
        Held(child)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn commit_merges_an_overlay_into_its_base_and_empties_it() {
    let d = Dir::new("commit");
    let (base, mid, top) = chain(&d);
    let expect = d.p("expect.raw");
    qemu_ok(&["convert", "-O", "raw", &top, &expect]);
    let base_before = d.p("base-before.raw");
    qemu_ok(&["convert", "-O", "raw", &base, &base_before]);
    // Refused while the base is in use; nothing changes.
    {
        let _vm = Held::new("qcow2", &mid);
        let r = run(&["disk", "commit", &top]);
        assert_eq!(r.status, VIREO_ERROR);
        assert!(
            r.stderr.contains("in use") && r.stderr.contains(&mid),
            "{}",
            r.stderr
        );
    }
    same(&top, &expect);
    let r = run(&["disk", "commit", &top]);
    assert_eq!(r.status, 0, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains(&mid), "{}", r.stdout);
    // The overlay reads the same, through the updated mid; mid alone now reads as top did;
    // base is untouched; top holds nothing of its own.
    same(&top, &expect);
    same(&mid, &expect);
    same(&base, &base_before);
    clean(&top);
    clean(&mid);
    let m = qemu_img_json(&["map", "--output=json", &top]);
    assert!(
        m.as_array()
            .unwrap()
            .iter()
            .all(|e| e["depth"] != 0 || e["data"] == false),
        "top still holds data: {m}"
    );

    // A raw base, smaller than its overlay (grown after it was made): the base grows.
    let (rb, ov) = (d.p("small.raw"), d.p("ov.qcow2"));
    std::fs::write(&rb, vec![0x41u8; 1 << 20]).unwrap();
    qemu_ok(&[
        "create", "-q", "-f", "qcow2", "-b", &rb, "-F", "raw", &ov, "1M",
    ]);
    ok(&["disk", "resize", &ov, "4M"]);
    qemu_io(
        "qcow2",
        &ov,
        &[
            "write -P 0x42 512k 1M",
            "write -z 0 4k",
            "write -P 0x43 3M 4k",
        ],
    );
    let expect = d.p("ov.raw");
    qemu_ok(&["convert", "-O", "raw", &ov, &expect]);
    ok(&["disk", "commit", &ov]);
    assert_eq!(std::fs::metadata(&rb).unwrap().len(), 4 << 20);
    same(&ov, &expect);
    let o = qemu(&["compare", "-f", "raw", "-F", "raw", &rb, &expect]);
    assert!(o.status.success(), "{o:?}");
    clean(&ov);

    // Not an overlay: refused, named.
    let r = run(&["disk", "commit", &base]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(r.stderr.contains("no backing file"), "{}", r.stderr);
}

#[test]
fn rebase_keeps_the_guests_disk_and_unsafe_rebase_only_renames() {
    let d = Dir::new("rebase");
    let (b1, b2, ov) = (d.p("b1.qcow2"), d.p("b2.raw"), d.p("ov.qcow2"));
    qemu_ok(&["create", "-q", "-f", "qcow2", &b1, "16M"]);
    qemu_io(
        "qcow2",
        &b1,
        &["write -P 0x11 0 4M", "write -P 0x12 8M 64k"],
    );
    // b2 agrees with b1 in part (the first 1M), differs elsewhere, and is shorter.
    qemu_ok(&["create", "-q", "-f", "raw", &b2, "12M"]);
    qemu_io(
        "raw",
        &b2,
        &[
            "write -P 0x11 0 1M",
            "write -P 0x22 2M 1M",
            "write -P 0x23 10M 1M",
        ],
    );
    qemu_ok(&[
        "create", "-q", "-f", "qcow2", "-b", "b1.qcow2", "-F", "qcow2", &ov,
    ]);
    qemu_io(
        "qcow2",
        &ov,
        &["write -P 0x33 3M 64k", "write -P 0x34 15M 64k"],
    );
    let expect = d.p("expect.raw");
    qemu_ok(&["convert", "-O", "raw", &ov, &expect]);

    // Safe, onto b2 (relative to the overlay's directory, as the header will hold it).
    let r = run_in(
        Some(Path::new("/")),
        &["disk", "rebase", &ov, "-b", "b2.raw"],
    );
    assert_eq!(r.status, 0, "{}", r.stderr);
    let i = qemu_img_json(&["info", "--output=json", &ov]);
    assert_eq!(i["backing-filename"], "b2.raw");
    assert_eq!(i["backing-filename-format"], "raw");
    same(&ov, &expect);
    clean(&ov);
    // The overlay copied only what differs: b2's first 1M agrees with b1's, so it is not.
    let m = qemu_img_json(&["map", "--output=json", &ov]);
    let own_at_0 = m
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["start"] == 0 && e["depth"] == 0 && e["data"] == true);
    assert!(!own_at_0, "{m}");

    // Standalone.
    ok(&["disk", "rebase", &ov, "-b", ""]);
    let i = qemu_img_json(&["info", "--output=json", &ov]);
    assert!(i["backing-filename"].is_null(), "{i}");
    same(&ov, &expect);
    clean(&ov);

    // Unsafe: only the name changes, as qemu-img rebase -u changes it (a copy rebased by
    // qemu-img is the referee).
    let (mine, theirs) = (d.p("mine.qcow2"), d.p("theirs.qcow2"));
    qemu_ok(&[
        "create", "-q", "-f", "qcow2", "-b", &b1, "-F", "qcow2", &mine,
    ]);
    qemu_io("qcow2", &mine, &["write -P 0x44 5M 64k"]);
    std::fs::copy(&mine, &theirs).unwrap();
    ok(&["disk", "rebase", "-u", &mine, "-b", &b2]);
    qemu_ok(&["rebase", "-u", "-b", &b2, "-F", "raw", &theirs]);
    same(&mine, &theirs);
    let (a, b) = (
        qemu_img_json(&["info", "--output=json", &mine]),
        qemu_img_json(&["info", "--output=json", &theirs]),
    );
    assert_eq!(a["backing-filename"], b["backing-filename"]);
    assert_eq!(a["backing-filename-format"], b["backing-filename-format"]);
    clean(&mine);
    // -u repairs a chain whose backing file is gone.
    qemu_ok(&[
        "rebase",
        "-u",
        "-b",
        &d.p("gone.qcow2"),
        "-F",
        "qcow2",
        &mine,
    ]);
    ok(&["disk", "rebase", "-u", &mine, "-b", &b1, "-F", "qcow2"]);
    qemu_ok(&["rebase", "-u", "-b", &b1, "-F", "qcow2", &theirs]);
    same(&mine, &theirs);
    assert_eq!(
        qemu_img_json(&["info", "--output=json", &mine])["backing-filename"],
        b1.as_str()
    );

    // Refusals leave the image as it was.
    let before = std::fs::read(&ov).unwrap();
    for (args, says) in [
        (
            vec!["disk", "rebase", ov.as_str(), "-b", &ov],
            "own backing file",
        ),
        (
            vec!["disk", "rebase", ov.as_str(), "-b", &d.p("none.qcow2")],
            "none.qcow2",
        ),
        (vec!["disk", "rebase", ov.as_str()], "--backing"),
    ] {
        let r = run(&args);
        assert_eq!(r.status, VIREO_ERROR, "{args:?}");
        assert!(r.stderr.contains(says), "{args:?}: {}", r.stderr);
    }
    assert!(std::fs::read(&ov).unwrap() == before);
}
