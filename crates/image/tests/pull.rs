//! Pulls the real `debian-riscv64` image from the host's Debian mirror into a temporary
//! cache. Needs the network and the host's apt tools; it fails, rather than skipping,
//! when they are missing, so a green run always means a real pull worked.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use vireo_image::{Arch, PullOptions, PullOutcome};

struct Entry {
    name: String,
    mode: u32,
    rdev: (u32, u32),
    data: Vec<u8>,
}

/// Reads a newc archive; panics on malformed input, which fails the test.
fn read_cpio(buf: &[u8]) -> Vec<Entry> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let h = &buf[pos..pos + 110];
        assert_eq!(&h[..6], b"070701", "bad magic at {pos}");
        let field = |i: usize| {
            let s = std::str::from_utf8(&h[6 + i * 8..14 + i * 8]).unwrap();
            u32::from_str_radix(s, 16).unwrap() as usize
        };
        let namesize = field(11);
        let name = std::str::from_utf8(&buf[pos + 110..pos + 110 + namesize - 1])
            .unwrap()
            .to_string();
        let data_start = (pos + 110 + namesize).div_ceil(4) * 4;
        let data_end = data_start + field(6);
        if name == "TRAILER!!!" {
            return out;
        }
        out.push(Entry {
            name,
            mode: field(1) as u32,
            rdev: (field(9) as u32, field(10) as u32),
            data: buf[data_start..data_end].to_vec(),
        });
        pos = data_end.div_ceil(4) * 4;
    }
}

fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "this test pulls a real image and needs `{tool}`: install the Debian package `{package}`"
    );
}

#[test]
fn pull_debian_riscv64() {
    require_tool("apt-get", "apt");
    require_tool("dpkg-deb", "dpkg");
    let cache = tempfile::tempdir().unwrap();
    // The only test in this binary, so changing the environment races with nothing.
    std::env::set_var("VIREO_CACHE_DIR", cache.path());

    let opts = PullOptions {
        force: false,
        progress: false,
    };
    let (image, outcome) = vireo_image::pull("debian-riscv64", &opts)
        .unwrap_or_else(|e| panic!("pulling debian-riscv64 (needs the Debian mirror): {e}"));
    assert_eq!(outcome, PullOutcome::Pulled);
    assert_eq!(image.arch, Arch::Riscv64);
    assert!(image.dir.starts_with(cache.path().join("vireo/images")));
    assert!(image.default_cmdline.contains("console=ttyS0"));

    // A RISC-V Linux Image carries the magic "RSC\x05" at offset 0x38.
    let kernel = std::fs::read(&image.kernel).unwrap();
    assert_eq!(
        &kernel[0x38..0x3c],
        b"RSC\x05",
        "kernel is not a RISC-V Image"
    );
    let firmware = image.firmware.as_ref().expect("riscv64 image has firmware");
    assert!(std::fs::metadata(firmware).unwrap().len() > 10_000);

    let gz = std::fs::read(&image.initrd).unwrap();
    // The CLI appends its command archive; the kernel finds it only at a 4-byte boundary.
    assert_eq!(gz.len() % 4, 0, "initrd length must be a multiple of 4");
    let mut archive = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut archive)
        .unwrap();
    let entries = read_cpio(&archive);
    let get = |name: &str| {
        entries
            .iter()
            .find(|e| e.name == name)
            .unwrap_or_else(|| panic!("initramfs lacks {name}"))
    };
    let init = get("init");
    assert!(init.data.starts_with(b"#!/bin/sh"));
    assert_eq!(init.mode & 0o111, 0o111, "init must be executable");
    assert!(get("bin/busybox").data.starts_with(b"\x7fELF"));
    assert_eq!(get("bin/sh").data, b"busybox");
    let console = get("dev/console");
    assert_eq!((console.mode & 0o170000, console.rdev), (0o020000, (5, 1)));

    let kver = &image.kernel_version;
    let mods = format!("lib/modules/{kver}");
    let blk = entries
        .iter()
        .find(|e| e.name.starts_with(&mods) && e.name.ends_with("/virtio_blk.ko"))
        .expect("initramfs has virtio_blk.ko");
    assert!(
        blk.data.starts_with(b"\x7fELF"),
        "modules must be decompressed"
    );
    // Signatures are stripped: apt verified the packages, and re-hashing the modules on an
    // emulated CPU every boot is expensive (see modules::strip_signature).
    assert!(
        !blk.data.ends_with(b"~Module signature appended~\n"),
        "module signatures must be stripped"
    );
    let dep = String::from_utf8(get(&format!("{mods}/modules.dep")).data.clone()).unwrap();
    let ext4 = dep
        .lines()
        .find(|l| l.starts_with("kernel/fs/ext4/ext4.ko:"))
        .expect("modules.dep lists ext4");
    assert!(ext4.contains("kernel/fs/jbd2/jbd2.ko"), "{ext4}");
    for line in dep.lines() {
        let (module, deps) = line.split_once(':').unwrap();
        for path in std::iter::once(module).chain(deps.split_whitespace()) {
            get(&format!("{mods}/{path}"));
        }
    }
    let alias = String::from_utf8(get(&format!("{mods}/modules.alias")).data.clone()).unwrap();
    assert!(alias.contains("alias fs-ext4 ext4"), "{alias}");
    let load = String::from_utf8(get("etc/vireo/modules").data.clone()).unwrap();
    assert!(load.contains("/virtio_blk.ko"), "{load}");
    assert!(
        !load.contains("/ext4.ko"),
        "ext4 is for modprobe, not boot: {load}"
    );

    let listed = vireo_image::list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(&listed[0].kernel_version, kver);
    assert_eq!(vireo_image::open("debian-riscv64").unwrap(), image);

    // Point apt at an address that cannot answer: a second pull must not need it.
    std::env::set_var("VIREO_DEBIAN_MIRROR", "http://127.0.0.1:9/debian");
    let start = Instant::now();
    let (again, outcome) = vireo_image::pull("debian-riscv64", &opts).unwrap();
    let took = start.elapsed();
    assert_eq!(outcome, PullOutcome::AlreadyPresent);
    assert_eq!(again, image);
    assert!(took < Duration::from_secs(5), "no-op pull took {took:?}");

    // A damaged file makes the next pull rebuild, which now fails on the dead mirror
    // instead of returning the damaged image.
    std::fs::write(&image.initrd, b"damaged").unwrap();
    assert!(vireo_image::pull("debian-riscv64", &opts).is_err());
    // The failed pull left the old directory in place and no temporary directories.
    let leftovers: Vec<_> = std::fs::read_dir(cache.path().join("vireo/images"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["debian-riscv64"], "{leftovers:?}");
    assert!(Path::new(&image.kernel).is_file());
}
