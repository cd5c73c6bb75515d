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
