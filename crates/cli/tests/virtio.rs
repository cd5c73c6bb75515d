//! End-to-end tests of the virtio devices: `vireo run --disk/--net/--vsock/--rng/--console
//! virtio` boots the pulled Debian riscv64 image and the guest's view is checked against values
//! computed on the host.
//!
//! They need `vireo image pull debian-riscv64`, e2fsprogs (`mkfs.ext4`, `debugfs`, `e2fsck`),
//! passt and `riscv64-linux-gnu-gcc` (scripts/setup.sh installs them all); a missing piece makes
//! a test fail with the instruction rather than skip.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;
use common::{
    compile_vsock_tool, mkfs_ext4, pseudo_random, require_image, run, run_in, tool, TempDir, IMAGE,
    VIREO_ERROR,
};
/// How long host-side helpers (servers, clients) keep trying before they give up.
const HOST_DEADLINE: Duration = Duration::from_secs(150);
const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------- block

/// Files the host put on an ext4 disk read back right in the guest; files the guest wrote
/// survive a second boot, and the host reads the same bytes out of the image.
#[test]
fn ext4_round_trip() {
    require_image();
    let dir = TempDir::new("virtio");
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("docs")).unwrap();
    let host_bin = pseudo_random(1_500_001, 7);
    std::fs::write(src.join("host.bin"), &host_bin).unwrap();
    std::fs::write(src.join("docs/notes.txt"), "written on the host\n").unwrap();
    let img = dir.join("disk.img");
    mkfs_ext4(&img, 64 * MIB, Some(&src));

    let boot1 = run_ok(&[
        "run",
        "--image",
        IMAGE,
        "--disk",
        img.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "set -e
         mount /dev/vda /mnt
         cd /mnt
         sha256sum host.bin docs/notes.txt
         mkdir -p guest/sub
         dd if=/dev/urandom of=guest/rand.bin bs=1024 count=1024 2>/dev/null
         head -c 3000000 /dev/urandom > guest/sub/big.bin
         seq 1 5000 > guest/seq.txt
         echo 'written in boot one' > guest/sub/note.txt
         sha256sum guest/rand.bin guest/sub/big.bin guest/seq.txt guest/sub/note.txt
         cd /
         umount /mnt",
    ]);
    let sums1 = sha256_lines(&boot1);
    // What the host wrote, read by the guest.
    assert_eq!(sums1.get("host.bin"), Some(&sha256(&host_bin)), "{boot1}");
    assert_eq!(
        sums1.get("docs/notes.txt"),
        Some(&sha256(b"written on the host\n")),
        "{boot1}"
    );
    let seq: String = (1..=5000).map(|i| format!("{i}\n")).collect();
    assert_eq!(sums1.get("guest/seq.txt"), Some(&sha256(seq.as_bytes())));
    let guest_files = [
        "guest/rand.bin",
        "guest/sub/big.bin",
        "guest/seq.txt",
        "guest/sub/note.txt",
    ];
    for f in guest_files {
        assert!(sums1.contains_key(f), "no checksum of {f} in:\n{boot1}");
    }

    // The host's own tools see a clean file system holding the guest's bytes.
    e2fsck_clean(&img);
    for f in guest_files {
        let out = dir.join("dumped");
        let _ = std::fs::remove_file(&out);
        let r = Command::new(tool("debugfs"))
            .arg("-R")
            .arg(format!("dump /{f} {}", out.display()))
            .arg(&img)
            .output()
            .unwrap();
        let bytes = std::fs::read(&out).unwrap_or_else(|e| {
            panic!(
                "debugfs could not dump /{f}: {e}: {}",
                String::from_utf8_lossy(&r.stderr)
            )
        });
        assert_eq!(
            Some(&sha256(&bytes)),
            sums1.get(f),
            "/{f} as the host reads it differs from what the guest wrote"
        );
        if f == "guest/sub/big.bin" {
            assert_eq!(bytes.len(), 3_000_000);
        }
    }

    let boot2 = run_ok(&[
        "run",
        "--image",
        IMAGE,
        "--disk",
        img.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "set -e
         mount /dev/vda /mnt
         cd /mnt
         sha256sum host.bin docs/notes.txt guest/rand.bin guest/sub/big.bin guest/seq.txt guest/sub/note.txt
         cat guest/sub/note.txt
         cd /
         umount /mnt",
    ]);
    let sums2 = sha256_lines(&boot2);
    assert_eq!(sums1, sums2, "boot 1:\n{boot1}\nboot 2:\n{boot2}");
    assert!(boot2.contains("written in boot one\n"), "{boot2}");
}

/// fstrim in the guest punches holes in the host's image file.
#[test]
fn fstrim_releases_host_blocks() {
    require_image();
    let dir = TempDir::new("virtio");
    let img = dir.join("trim.img");
    mkfs_ext4(&img, 64 * MIB, None);
    let empty = allocated(&img);

    let out = run_ok(&[
        "run",
        "--image",
        IMAGE,
        "--disk",
        img.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "set -e
         mount /dev/vda /mnt
         dd if=/dev/urandom of=/mnt/fill bs=1048576 count=16 2>/dev/null
         sync
         wc -c < /mnt/fill
         umount /mnt",
    ]);
    assert_eq!(out.trim(), "16777216");
    let written = allocated(&img);
    assert!(
        written >= empty + 15 * MIB,
        "writing 16 MiB allocated only {} KiB on the host ({empty} -> {written} bytes)",
        (written.saturating_sub(empty)) / 1024
    );

    let out = run_ok(&[
        "run",
        "--image",
        IMAGE,
        "--disk",
        img.to_str().unwrap(),
        "--",
        "sh",
        "-c",
        "set -e
         mount /dev/vda /mnt
         rm /mnt/fill
         sync
         fstrim -v /mnt
         umount /mnt",
    ]);
    let trimmed: u64 = out
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'bytes trimmed' in: {out}"));
    assert!(trimmed >= 16 * MIB, "{out}");
    let after = allocated(&img);
    assert!(
        after + 14 * MIB <= written,
        "fstrim freed only {} KiB on the host ({written} -> {after} bytes allocated)",
        written.saturating_sub(after) / 1024
    );
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        64 * MIB,
        "size changed"
    );
    e2fsck_clean(&img);
}

/// Capacity to the sector, the last sector and no further, the serial (up to the full 20
/// bytes), a size that is not a multiple of 512, and a read-only disk nothing can change.
#[test]
fn disk_size_serial_and_readonly() {
    require_image();
    let dir = TempDir::new("virtio");
    let exact = dir.join("exact.img");
    let exact_len = 12345 * 1024; // 512-aligned, not MiB-aligned
    std::fs::File::create(&exact)
        .unwrap()
        .set_len(exact_len)
        .unwrap();
    let ragged = dir.join("ragged.img");
    std::fs::File::create(&ragged)
        .unwrap()
        .set_len(exact_len + 100)
        .unwrap();
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), "read-only hello\n").unwrap();
    let ro = dir.join("ro.img");
    mkfs_ext4(&ro, 16 * MIB, Some(&src));
    let ro_before = std::fs::read(&ro).unwrap();

    let sectors = exact_len / 512;
    let script = format!(
        "for d in vda vdb vdc; do
           echo \"$d size=$(cat /sys/block/$d/size) ro=$(cat /sys/block/$d/ro) serial=$(cat /sys/block/$d/serial)\"
         done
         printf LAST-SECTOR-MARK | dd of=/dev/vda bs=512 seek={last} conv=notrunc 2>/dev/null; echo last=$?
         dd if=/dev/zero of=/dev/vda bs=512 seek={sectors} count=1 conv=notrunc 2>/dev/null; echo past=$?
         echo pastread=$(dd if=/dev/vda bs=512 skip={sectors} count=1 2>/dev/null | wc -c)
         dd if=/dev/zero of=/dev/vdc count=1 2>/dev/null; echo rodd=$?
         dd if=/dev/zero of=/dev/vdc bs=4096 count=1 oflag=direct 2>/dev/null; echo rodirect=$?
         mount /dev/vdc /mnt; echo mount=$?
         cat /mnt/hello.txt
         touch /mnt/new 2>/dev/null; echo touch=$?
         umount /mnt
         sync",
        last = sectors - 1,
    );
    let out = run_ok(&[
        "run",
        "--image",
        IMAGE,
        "--disk",
        &format!("{},serial=abc123", exact.display()),
        "--disk",
        &format!("{},serial=ABCDEFGHIJKLMNOPQRST", ragged.display()),
        "--disk",
        &format!("{},readonly", ro.display()),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let want = [
        format!("vda size={sectors} ro=0 serial=abc123"),
        // The last 100 bytes are not a whole sector: the size rounds down.
        format!("vdb size={sectors} ro=0 serial=ABCDEFGHIJKLMNOPQRST"),
        format!("vdc size={} ro=1 serial=", 16 * MIB / 512),
        "last=0".into(),
        "pastread=0".into(),
        "rodd=1".into(),
        "rodirect=1".into(),
        "mount=0".into(),
        "read-only hello".into(),
        "touch=1".into(),
    ];
    for w in &want {
        assert!(out.lines().any(|l| l == w), "no line {w:?} in:\n{out}");
    }
    assert!(
        out.lines().any(|l| l.starts_with("past=") && l != "past=0"),
        "a write past the capacity succeeded:\n{out}"
    );

    // On the host: the marker landed in the last sector, nothing beyond, no growth.
    let bytes = std::fs::read(&exact).unwrap();
    assert_eq!(bytes.len() as u64, exact_len, "the image changed size");
    let last = &bytes[(exact_len - 512) as usize..];
    assert_eq!(&last[..16], b"LAST-SECTOR-MARK");
    assert!(
        bytes[..(exact_len - 512) as usize].iter().all(|&b| b == 0),
        "bytes before the last sector changed"
    );
    assert_eq!(std::fs::metadata(&ragged).unwrap().len(), exact_len + 100);
    assert!(
        std::fs::read(&ro).unwrap() == ro_before,
        "the read-only image changed on the host"
    );
}

fn qemu_tool(tool: &str, args: &[&str]) -> String {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is needed (apt-get install qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--disk IMAGE,overlay`: the guest writes to a throwaway overlay (reads see its writes),
/// the image is untouched, nothing is left on the host, and two runs can share the base.
#[test]
fn an_overlay_takes_the_writes_and_leaves_the_base_alone() {
    require_image();
    let dir = TempDir::new("virtio");
    let base = dir.join("base.img");
    std::fs::write(&base, vec![0x42u8; 8 << 20]).unwrap();
    let before = std::fs::read(&base).unwrap();
    let spec = format!("{},overlay", base.display());
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("vireo-overlay-"))
            .collect()
    };
    let already = leftovers();
    let out = run_ok(&[
        "run", "--image", IMAGE, "--disk", &spec, "--disk", &spec, "--", "sh", "-c",
        "set -e
         echo before=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | od -An -tx1 | head -1 | tr -d ' ')
         printf 'written-by-the-guest' | dd of=/dev/vda conv=notrunc,fsync 2>/dev/null
         echo after=$(head -c 20 /dev/vda)
         echo other=$(head -c 4 /dev/vdb | od -An -tx1 | tr -d ' ')",
    ]);
    assert!(out.contains("before=42424242"), "{out}");
    assert!(out.contains("after=written-by-the-guest"), "{out}");
    // Each overlay is its own: the second disk still shows the base.
    assert!(out.contains("other=42424242"), "{out}");
    assert!(std::fs::read(&base).unwrap() == before, "the base changed");
    let left: Vec<String> = leftovers()
        .into_iter()
        .filter(|n| !already.contains(n))
        .collect();
    assert!(left.is_empty(), "overlays left behind: {left:?}");
    let r = run(&[
        "run",
        "--image",
        IMAGE,
        "--disk",
        &format!("{spec},readonly"),
        "--",
        "true",
    ]);
    assert_eq!(r.status, VIREO_ERROR);
    assert!(r.stderr.contains("overlay and readonly"), "{}", r.stderr);
    // A base named relative to the current directory (the overlay lives elsewhere).
    let r = run_in(
        Some(&dir),
        &[
            "run",
            "--image",
            IMAGE,
            "--disk",
            "base.img,overlay",
            "--",
            "sh",
            "-c",
            "head -c 4 /dev/vda | od -An -tx1 | tr -d ' '",
        ],
    );
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert!(r.stdout.contains("42424242"), "{}", r.stdout);
}

/// `kill -9` of vireo while the guest writes to a qcow2 disk, three times: `qemu-img check`
/// finds no corruption (leaked clusters at most), and the last write the guest had synced is
/// there, whole.
#[test]
fn a_qcow2_disk_survives_kill_9_in_the_middle_of_writes() {
    require_image();
    let dir = TempDir::new("virtio");
    let disk = dir.join("crash.qcow2");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    qemu_tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &s(&disk), "64M"],
    );
    for round in 0..3 {
        let mut child = common::vireo()
            .args(["run", "--image", IMAGE, "--disk", &s(&disk), "--", "sh", "-c"])
            .arg(
                "i=0
                 while :; do
                   head -c 65536 /dev/urandom > /tmp/c
                   # fsync: a raw block device's data is flushed by fsync, not by sync(1).
                   dd if=/tmp/c of=/dev/vda bs=65536 seek=$(( (i * 37) % 900 )) conv=notrunc,fsync 2>/dev/null
                   echo synced $(( (i * 37) % 900 )) $(sha256sum < /tmp/c | cut -d' ' -f1)
                   # Unsynced writes in between, which the crash may cut.
                   dd if=/dev/urandom of=/dev/vda bs=4096 seek=$(( 15000 + i % 300 )) count=3 conv=notrunc 2>/dev/null
                   i=$((i + 1))
                 done",
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut last = None;
        let t0 = Instant::now();
        let wanted = 5 + round * 4;
        let mut seen = 0;
        while seen < wanted {
            assert!(
                t0.elapsed() < Duration::from_secs(120),
                "the guest did not write"
            );
            match lines.next() {
                Some(Ok(l)) if l.starts_with("synced ") => {
                    last = Some(l);
                    seen += 1;
                }
                Some(Ok(_)) => {}
                _ => panic!("vireo ended before the crash"),
            }
        }
        child.kill().unwrap();
        child.wait().unwrap();
        // Whatever came after the last line we read was cut by the kill.
        let out = Command::new("qemu-img")
            .args(["check", "-f", "qcow2"])
            .arg(&disk)
            .output()
            .unwrap();
        let code = out.status.code();
        // 0: clean; 3: leaked clusters only (an allocation the crash left unused).
        assert!(
            code == Some(0) || code == Some(3),
            "round {round}: qemu-img check: {code:?}\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let last = last.unwrap();
        let mut f = last.split_whitespace().skip(1);
        let block: usize = f.next().unwrap().parse().unwrap();
        let sum = f.next().unwrap().to_string();
        let raw = dir.join("crash.raw");
        qemu_tool("qemu-img", &["convert", "-O", "raw", &s(&disk), &s(&raw)]);
        let bytes = std::fs::read(&raw).unwrap();
        assert_eq!(
            sha256(&bytes[block * 65536..(block + 1) * 65536]),
            sum,
            "round {round}: the last synced write (block {block}) is not there"
        );
    }
}

/// Several request queues: with 2 vCPUs a disk has a queue (and an I/O thread) per vCPU, or
/// the number asked for; both vCPUs write their own half at once, and the image holds both.
#[test]
fn a_disk_has_a_queue_per_vcpu_and_both_carry_writes() {
    require_image();
    let dir = TempDir::new("virtio");
    let (a, b) = (dir.join("a.img"), dir.join("b.img"));
    for p in [&a, &b] {
        std::fs::File::create(p).unwrap().set_len(16 * MIB).unwrap();
    }
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let one = format!("{},queues=1", s(&b));
    let out = run_ok(&[
        "run",
        "--image",
        IMAGE,
        "--cpus",
        "2",
        "--disk",
        &s(&a),
        "--disk",
        &one,
        "--",
        "sh",
        "-c",
        "echo vda=$(ls /sys/block/vda/mq | tr '\\n' ' ')
         echo vdb=$(ls /sys/block/vdb/mq | tr '\\n' ' ')
         for c in 0 1; do
           taskset -c $c sh -c \"yes cpu$c | head -c 4194304 |
             dd of=/dev/vda bs=65536 seek=$((c * 64)) oflag=direct conv=notrunc 2>/dev/null\" &
         done
         wait; sync; echo done",
    ]);
    assert!(
        out.lines().any(|l| l == "vda=0 1"),
        "two queues on vda:\n{out}"
    );
    assert!(
        out.lines().any(|l| l == "vdb=0"),
        "one queue on vdb:\n{out}"
    );
    assert!(out.contains("done"), "{out}");
    let img = std::fs::read(&a).unwrap();
    for c in 0..2usize {
        let want: Vec<u8> = format!("cpu{c}\n").bytes().cycle().take(4 << 20).collect();
        let got = &img[c * (4 << 20)..(c + 1) * (4 << 20)];
        assert!(got == &want[..], "vCPU {c}'s half is not what it wrote");
    }
}

/// A guest reads and writes a qcow2 disk (named like a raw one: detection is by content) and an
/// overlay on a qcow2 base; afterwards `qemu-img check` is clean, qemu-img reads what the guest
/// wrote, and the base is untouched.
#[test]
fn a_guest_reads_and_writes_qcow2_disks_and_qemu_img_agrees() {
    require_image();
    let dir = TempDir::new("virtio");
    let disk = dir.join("disk.img");
    let base = dir.join("base.qcow2");
    let top = dir.join("top.qcow2");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    qemu_tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &s(&disk), "64M"],
    );
    qemu_tool(
        "qemu-img",
        &["create", "-q", "-f", "qcow2", &s(&base), "32M"],
    );
    qemu_tool(
        "qemu-io",
        &["-f", "qcow2", "-c", "write -P 0x42 0 1M", &s(&base)],
    );
    qemu_tool(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &s(&base),
            "-F",
            "qcow2",
            &s(&top),
        ],
    );
    let base_before = std::fs::read(&base).unwrap();
    let out = run_ok(&[
        "run",
        "--image",
        IMAGE,
        "--disk",
        &s(&disk),
        "--disk",
        &s(&top),
        "--",
        "sh",
        "-c",
        "set -e
         echo size=$(cat /sys/block/vda/size) $(cat /sys/block/vdb/size)
         head -c 3000000 /dev/urandom > /tmp/data
         dd if=/tmp/data of=/dev/vda bs=4096 seek=100 conv=notrunc 2>/dev/null
         echo wrote=$(sha256sum < /tmp/data | cut -d' ' -f1)
         echo base=$(dd if=/dev/vdb bs=65536 count=16 2>/dev/null | sha256sum | cut -d' ' -f1)
         dd if=/tmp/data of=/dev/vdb bs=65536 seek=8 count=4 conv=notrunc 2>/dev/null
         sync",
    ]);
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("no {k}= in {out}"))
            .to_string()
    };
    assert_eq!(field("size"), format!("{} {}", 64 * 2048, 32 * 2048));
    for img in [&disk, &top] {
        qemu_tool("qemu-img", &["check", "-q", "-f", "qcow2", &s(img)]);
    }
    let raw = |img: &Path| {
        let r = dir.join("view.raw");
        qemu_tool("qemu-img", &["convert", "-O", "raw", &s(img), &s(&r)]);
        std::fs::read(&r).unwrap()
    };
    let d = raw(&disk);
    assert_eq!(sha256(&d[409_600..409_600 + 3_000_000]), field("wrote"));
    assert_eq!(
        field("base"),
        sha256(&[0x42u8; 1 << 20]),
        "the base's bytes through the overlay"
    );
    let t = raw(&top);
    assert!(t[..512 * 1024].iter().all(|&b| b == 0x42));
    let written = &d[409_600..409_600 + 256 * 1024];
    assert!(
        &t[512 * 1024..768 * 1024] == written,
        "the overlay holds the guest's write"
    );
    assert!(t[768 * 1024..1 << 20].iter().all(|&b| b == 0x42));
    assert!(
        std::fs::read(&base).unwrap() == base_before,
        "the base changed"
    );
}

#[test]
fn a_running_vms_disk_and_socket_are_refused_to_a_second_vm() {
    require_image();
    let dir = TempDir::new("virtio");
    let img = dir.join("shared.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(16 * MIB)
        .unwrap();
    let uds = dir.join("vm1.sock");
    let mut first = common::Background::start(&[
        "run",
        "--image",
        IMAGE,
        "--disk",
        img.to_str().unwrap(),
        "--vsock",
        &format!("cid=3,uds={}", uds.display()),
        "--",
        "sleep",
        "20",
    ]);
    // The disk is locked and the socket bound when the devices are built, before the boot.
    assert!(
        common::wait_for_lock(&img, Duration::from_secs(20)),
        "the first vireo never locked {}",
        img.display()
    );
    let start = Instant::now();
    while !uds.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {}",
            uds.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = std::fs::read(&img).unwrap();

    for extra in ["", ",readonly"] {
        let r = run(&[
            "run",
            "--image",
            IMAGE,
            "--disk",
            &format!("{}{extra}", img.display()),
            "--",
            "true",
        ]);
        assert_eq!(r.status, VIREO_ERROR, "{extra}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains(&format!(
                "disk image {} is in use by another process (locked for writing)",
                img.display()
            )),
            "{}",
            r.stderr
        );
    }
    let other = dir.join("other.img");
    std::fs::File::create(&other).unwrap().set_len(MIB).unwrap();
    let r = run(&[
        "run",
        "--image",
        IMAGE,
        "--disk",
        other.to_str().unwrap(),
        "--vsock",
        &format!("cid=4,uds={}", uds.display()),
        "--",
        "true",
    ]);
    assert_eq!(r.status, VIREO_ERROR, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&uds.display().to_string()) && r.stderr.contains("listening"),
        "{}",
        r.stderr
    );
    // The refused VMs changed nothing: the first still runs, owns its socket (a client is
    // accepted, so it was not replaced) and its disk.
    assert!(first.running(), "the first vireo died");
    assert!(
        UnixStream::connect(&uds).is_ok(),
        "{} was taken over",
        uds.display()
    );
    assert!(std::fs::read(&img).unwrap() == before);
    // The lock went with the refused vireo that had opened the other disk before its vsock
    // was refused.
    assert!(!common::wait_for_lock(&other, Duration::from_millis(200)));
}

// ---------------------------------------------------------------- net

/// `--net user`: the guest gets an address by DHCP, fetches from a host HTTP server through the
/// gateway (the host's loopback), and serves a host client through hostfwd.
#[test]
fn net_user_wget_and_hostfwd() {
    require_image();
    let token = format!("{:x}", seed());
    let text = format!("hello from the host {token}\n");
    let blob = pseudo_random(200_000, seed());
    let blob_sum = sha256(&blob);

    // The HTTP server: /hello is text, /blob binary; it records the request lines.
    let http = TcpListener::bind("127.0.0.1:0").unwrap();
    let http_port = http.local_addr().unwrap().port();
    http.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (stop, text, blob) = (stop.clone(), text.clone(), blob.clone());
        std::thread::spawn(move || {
            let mut requests = Vec::new();
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) && start.elapsed() < HOST_DEADLINE {
                let Ok((mut c, _)) = http.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                c.set_nonblocking(false).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let line = head.lines().next().unwrap_or("").to_string();
                let body: &[u8] = if line.starts_with("GET /blob ") {
                    &blob
                } else if line.starts_with("GET /hello ") {
                    text.as_bytes()
                } else {
                    b"not found\n"
                };
                let _ = write!(
                    c,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = c.write_all(body);
                requests.push(line);
            }
            requests
        })
    };

    // The hostfwd client: retries until the guest's listener answers.
    let fwd_port = free_port();
    let client = std::thread::spawn(move || {
        let start = Instant::now();
        let mut attempts = 0;
        while start.elapsed() < HOST_DEADLINE {
            attempts += 1;
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", fwd_port)) {
                s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                let _ = s.write_all(b"ping-from-host\n");
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got);
                if !got.is_empty() {
                    return (String::from_utf8_lossy(&got).into_owned(), attempts);
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        (String::new(), attempts)
    });

    let script = format!(
        "gw=$(ip route | awk '/^default/ {{print $3}}')
         echo gw=$gw
         ip -4 -o addr show eth0 | grep -q inet && echo has-address
         wget -q -O - http://$gw:{http_port}/hello; echo hello=$?
         wget -q -O /tmp/blob http://$gw:{http_port}/blob; echo blob=$?
         sha256sum /tmp/blob
         i=0
         while [ $i -lt 5 ]; do
           echo guest-reply-{token} | timeout 60 nc -l -p 8080 > /tmp/got
           cat /tmp/got
           grep -q ping-from-host /tmp/got && break
           i=$((i+1))
         done"
    );
    let r = run(&[
        "run",
        "--image",
        IMAGE,
        "--net",
        &format!("user,hostfwd=tcp:{fwd_port}-:8080"),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    stop.store(true, Ordering::Relaxed);
    let requests = server.join().unwrap();
    let (reply, attempts) = client.join().unwrap();
    assert_eq!(r.status, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    let out = &r.stdout;
    assert!(
        out.lines().any(|l| l.starts_with("gw=") && l.len() > 3),
        "no default route:\n{out}"
    );
    assert!(out.contains("has-address\n"), "no address on eth0:\n{out}");
    assert!(
        out.contains(&text),
        "wget /hello did not print {text:?}:\n{out}"
    );
    assert!(
        out.contains("hello=0\n") && out.contains("blob=0\n"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{blob_sum}  /tmp/blob")),
        "the 200 KB download differs (host sha256 {blob_sum}):\n{out}"
    );
    assert!(
        requests.iter().any(|l| l.starts_with("GET /hello "))
            && requests.iter().any(|l| l.starts_with("GET /blob ")),
        "the host server saw {requests:?}"
    );
    // hostfwd, both ways.
    assert!(
        out.contains("ping-from-host\n"),
        "the guest did not receive the host's bytes:\n{out}"
    );
    assert_eq!(
        reply,
        format!("guest-reply-{token}\n"),
        "host client on port {fwd_port} after {attempts} attempts"
    );
}

/// A hostfwd without an address answers on 127.0.0.1 and not on another address of this
/// host; one given that address answers there. Only this machine's own addresses are used.
#[test]
fn hostfwd_without_an_address_is_loopback_only() {
    require_image();
    let other = other_local_address();
    let token = format!("{:x}", seed());
    let (default_port, wide_port) = (free_port(), free_port());
    let other_spec = match other {
        std::net::IpAddr::V4(a) => a.to_string(),
        std::net::IpAddr::V6(a) => format!("[{a}]"),
    };
    // Each host connection gets a fresh guest listener; "done" ends the loop. Bounded (5 x
    // 30 s) so a forward that never delivers fails the test instead of hanging it.
    let script = format!(
        "i=0
         while [ $i -lt 5 ]; do
           echo guest-reply-{token} | timeout 30 nc -l -p 8080 > /tmp/got
           grep -q done /tmp/got && break
           i=$((i+1))
         done
         echo served"
    );
    let client = std::thread::spawn(move || {
        // Connects (the error if refused), sends `line`, returns the guest's answer (empty when
        // nothing answered).
        let ask = |addr: std::net::SocketAddr, line: &str| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            let _ = s.write_all(line.as_bytes());
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut got = String::new();
            let _ = s.read_to_string(&mut got);
            Ok(got)
        };
        let lo = std::net::SocketAddr::from(([127, 0, 0, 1], default_port));
        // Wait for the guest: the forward answers on the loopback.
        let start = Instant::now();
        let first = loop {
            match ask(lo, "ping\n") {
                Ok(got) if !got.is_empty() => break got,
                _ if start.elapsed() > HOST_DEADLINE => break String::new(),
                _ => std::thread::sleep(Duration::from_millis(250)),
            }
        };
        // The same forward on the other address: nothing listens there.
        let elsewhere = ask(std::net::SocketAddr::new(other, default_port), "ping\n");
        // The forward given that address listens there. (What passt makes of a connection
        // from the host's own address, which it also gives the guest, is its business: only
        // the listening socket is checked.)
        let wide = TcpStream::connect_timeout(
            &std::net::SocketAddr::new(other, wide_port),
            Duration::from_secs(5),
        )
        .map(drop);
        // Until the guest has heard it: its listener may be between two connections.
        let start = Instant::now();
        while start.elapsed() < HOST_DEADLINE
            && ask(lo, "done\n").map_or(true, |got| got.is_empty())
        {
            std::thread::sleep(Duration::from_millis(250));
        }
        (first, elsewhere, wide)
    });
    let r = run(&[
        "run",
        "--image",
        IMAGE,
        "--net",
        &format!(
            "user,hostfwd=tcp::{default_port}-:8080,hostfwd=tcp:{other_spec}:{wide_port}-:8080"
        ),
        "--",
        "sh",
        "-c",
        &script,
    ]);
    let (first, elsewhere, wide) = client.join().unwrap();
    assert_eq!(
        first,
        format!("guest-reply-{token}\n"),
        "127.0.0.1:{default_port}; vireo: {}{}",
        r.stdout,
        r.stderr
    );
    match elsewhere {
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "{other}:{default_port}: {e}"
        ),
        Ok(got) => panic!("the default forward answered on {other}:{default_port}: {got:?}"),
    }
    assert!(wide.is_ok(), "{other_spec}:{wide_port}: {wide:?}");
    assert_eq!(r.status, 0, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("served"), "{}", r.stdout);
}

/// passt's socket is gone from the temporary directory as soon as vireo is connected, so even
/// a SIGKILLed vireo leaves none; its passt (--one-off) exits with it.
#[test]
fn passt_socket_is_gone_even_after_sigkill() {
    require_image();
    let dir = TempDir::new("virtio");
    let log = dir.join("console.log");
    let mut vm = common::Background::start(&[
        "run",
        "--image",
        IMAGE,
        "--net",
        "user",
        "--verbose",
        "--console-log",
        log.to_str().unwrap(),
        "--",
        "sleep",
        "30",
    ]);
    let pid = vm.pid();
    // Devices (passt included) are built before the guest runs: kernel log output (hence
    // --verbose) means vireo is connected to passt.
    let start = Instant::now();
    while std::fs::metadata(&log).map_or(0, |m| m.len()) == 0 {
        assert!(vm.running(), "vireo exited early");
        assert!(start.elapsed() < HOST_DEADLINE, "no console output");
        std::thread::sleep(Duration::from_millis(50));
    }
    let passt = children_of(pid);
    assert_eq!(passt.len(), 1, "vireo's children: {passt:?}");
    let sockets = || -> Vec<PathBuf> {
        std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&format!("vireo-passt-{pid}-")))
            })
            .collect()
    };
    assert_eq!(sockets(), Vec::<PathBuf>::new(), "while running");
    vm.kill();
    let start = Instant::now();
    while is_alive(passt[0]) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "passt {} outlived the SIGKILLed vireo",
            passt[0]
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sockets(), Vec::<PathBuf>::new(), "after SIGKILL");
}

// ---------------------------------------------------------------- vsock

/// vsock both ways with a guest tool built from tests/guest/vsock_tool.c: the guest connects to
/// a host Unix listener (`PATH_PORT`) that echoes; a host client `CONNECT`s to a guest listener
/// that echoes. Both carry more than the 256 KiB credit window.
#[test]
fn vsock_both_directions() {
    require_image();
    let dir = TempDir::new("virtio");
    let tool_dir = dir.join("tool");
    std::fs::create_dir_all(&tool_dir).unwrap();
    compile_vsock_tool(&tool_dir.join("vsock_tool"));
    let tool_img = dir.join("tool.img");
    mkfs_ext4(&tool_img, 16 * MIB, Some(&tool_dir));
    let uds = dir.join("v.sock");

    // Guest -> host: an echo server on PATH_5000 that keeps what it received.
    let listener = UnixListener::bind(format!("{}_5000", uds.display())).unwrap();
    listener.set_nonblocking(true).unwrap();
    let echo = std::thread::spawn(move || {
        let start = Instant::now();
        let mut c = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(_) if start.elapsed() < HOST_DEADLINE => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(format!("nobody connected: {e}")),
            }
        };
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    c.write_all(&buf[..n]).map_err(|e| format!("echo: {e}"))?;
                }
                Err(e) => return Err(format!("read after {} bytes: {e}", got.len())),
            }
        }
        Ok(got)
    });

    // Host -> guest: CONNECT 6000 until the guest listens, then send and read the echo.
    let payload = pseudo_random(300_000, seed());
    let client = {
        let (uds, payload) = (uds.clone(), payload.clone());
        std::thread::spawn(move || -> Result<(String, Vec<u8>), String> {
            let start = Instant::now();
            while start.elapsed() < HOST_DEADLINE {
                std::thread::sleep(Duration::from_millis(200));
                let Ok(mut s) = UnixStream::connect(&uds) else {
                    continue;
                };
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                if s.write_all(b"CONNECT 6000\n").is_err() {
                    continue;
                }
                let mut line = String::new();
                let mut r = BufReader::new(s.try_clone().unwrap());
                if r.read_line(&mut line).is_err() || !line.starts_with("OK ") {
                    continue; // nobody listening yet: vireo closes the client
                }
                let mut w = s.try_clone().unwrap();
                let data = payload.clone();
                let writer = std::thread::spawn(move || w.write_all(&data));
                let mut echoed = vec![0u8; payload.len()];
                r.read_exact(&mut echoed)
                    .map_err(|e| format!("reading the echo: {e}"))?;
                writer
                    .join()
                    .unwrap()
                    .map_err(|e| format!("sending: {e}"))?;
                return Ok((line, echoed));
            }
            Err("the guest never accepted CONNECT 6000".into())
        })
    };

    let r = run(&[
        "run",
        "--image",
        IMAGE,
        "--disk",
        tool_img.to_str().unwrap(),
        "--vsock",
        &format!("cid=3,uds={}", uds.display()),
        "--",
        "sh",
        "-c",
        "set -o pipefail
         mount /dev/vda /mnt || exit 10
         head -c 524288 /dev/urandom > /tmp/data
         echo sent $(sha256sum < /tmp/data)
         echo echoed $(/mnt/vsock_tool connect 5000 < /tmp/data | sha256sum); echo connect=$?
         timeout 120 /mnt/vsock_tool listen 6000; echo listen=$?",
    ]);
    let guest_sent = echo.join().unwrap();
    let host_side = client.join().unwrap();
    // The tool reports its peers on stderr.
    let out = &format!("{}{}", r.stdout, r.stderr);
    assert_eq!(r.status, 0, "stdout:\n{out}\nstderr:\n{}", r.stderr);

    // Guest -> host: the host got exactly what the guest sent, and the guest got it back.
    let got = guest_sent.unwrap_or_else(|e| panic!("host echo server: {e}\nguest:\n{out}"));
    assert_eq!(got.len(), 524288, "guest:\n{out}");
    let sum = sha256(&got);
    assert!(
        out.contains(&format!("sent {sum} -")),
        "the host received other bytes than the guest sent (host sha256 {sum}):\n{out}"
    );
    assert!(
        out.contains(&format!("echoed {sum} -")),
        "the guest got back other bytes:\n{out}"
    );
    assert!(out.contains("connect=0\n"), "{out}");

    // Host -> guest.
    let (ok_line, echoed) = host_side.unwrap_or_else(|e| panic!("host client: {e}\nguest:\n{out}"));
    let port: u64 = ok_line["OK ".len()..]
        .trim_end()
        .parse()
        .unwrap_or_else(|_| panic!("bad handshake reply {ok_line:?}"));
    assert!(
        out.contains(&format!("accepted from cid 2 port {port}\n")),
        "the guest saw another peer than OK {port}:\n{out}"
    );
    assert!(echoed == payload, "the echo of 300000 bytes differs");
    assert!(out.contains("echoed 300000 bytes\n"), "{out}");
    assert!(out.contains("listen=0\n"), "{out}");
}

// ---------------------------------------------------------------- console, rng

/// `--console virtio`: the guest's console is hvc0 and a command's output and status come
/// through it.
#[test]
fn virtio_console_is_hvc0() {
    require_image();
    let r = run(&[
        "run",
        "--image",
        IMAGE,
        "--console",
        "virtio",
        "--",
        "sh",
        "-c",
        "cat /proc/consoles; seq 1 2000; echo on-stderr >&2; exit 5",
    ]);
    assert_eq!(r.status, 5, "stdout:\n{}\nstderr:\n{}", r.stdout, r.stderr);
    // The output itself is checked modulo CR (see virtio_console_output_is_raw).
    let out = r.stdout.replace("\r\n", "\n");
    let mut lines = out.lines();
    let first = lines.next().unwrap_or("");
    assert!(
        first.starts_with("hvc0 ") && first.contains('C'),
        "hvc0 is not the preferred console:\n{out}"
    );
    let rest: Vec<&str> = lines.skip_while(|l| !l.starts_with('1')).collect();
    let want: Vec<String> = (1..=2000).map(|i| i.to_string()).collect();
    assert_eq!(rest, want, "{out}");
    // stderr is the command's own stream, whichever console the guest has.
    assert_eq!(r.stderr, "on-stderr\n");
}

/// With `-- CMD` the command's bytes must reach the host unchanged whichever console carries
/// them, as they do on the serial console (boot.rs: `uname -m` prints exactly "riscv64\n").
#[test]
fn virtio_console_output_is_raw() {
    require_image();
    let r = run(&[
        "run",
        "--image",
        IMAGE,
        "--console",
        "virtio",
        "--",
        "printf",
        "a\\nb\\n",
    ]);
    assert_eq!(r.status, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "a\nb\n");
}

/// `--rng`: /dev/hwrng is the virtio device and gives incompressible bytes.
#[test]
fn rng_feeds_hwrng() {
    require_image();
    let out = run_ok(&[
        "run",
        "--image",
        IMAGE,
        "--rng",
        "--",
        "sh",
        "-c",
        "set -o pipefail
         echo current=$(cat /sys/class/misc/hw_random/rng_current)
         head -c 64 /dev/hwrng | od -An -v -tx1
         echo bytes=$(head -c 262144 /dev/hwrng | wc -c)
         echo gzipped=$(head -c 65536 /dev/hwrng | gzip -c | wc -c)",
    ]);
    assert!(
        out.lines().any(|l| l.starts_with("current=virtio_rng")),
        "{out}"
    );
    let bytes: Vec<u8> = out
        .lines()
        .filter(|l| l.starts_with(' '))
        .flat_map(|l| l.split_whitespace())
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    assert_eq!(bytes.len(), 64, "{out}");
    let mut distinct = bytes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    // 64 random bytes have about 56 distinct values; 24 or fewer is (nearly) impossible.
    assert!(distinct.len() > 24, "not random: {bytes:02x?}");
    assert!(out.contains("bytes=262144\n"), "{out}");
    let gz: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("gzipped="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(gz >= 65536, "64 KiB of /dev/hwrng compressed to {gz} bytes");
}

/// A command that finishes at once still gets its output and status out: with a disk, the
/// guest's shutdown used to overtake the serial port's asynchronous start of transmission
/// (three runs in four lost even the start marker). Two runs catch that nearly always.
#[test]
fn quick_command_output_survives_shutdown_with_a_disk() {
    require_image();
    let dir = TempDir::new("virtio");
    let img = dir.join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(MIB).unwrap();
    for _ in 0..2 {
        let out = run_ok(&[
            "run",
            "--image",
            IMAGE,
            "--disk",
            img.to_str().unwrap(),
            "--",
            "printf",
            "ok",
        ]);
        assert_eq!(out, "ok");
    }
}

// ---------------------------------------------------------------- virtio-pci

/// `--virtio-transport pci`: the same devices as PCI functions behind the board's ECAM host
/// bridge, bound by virtio_pci, interrupting on INTx through the PLIC (this board has no MSI
/// controller), and moving real data: a host file read back, a guest file written and checked
/// by the host's e2fsck, random bytes from the rng, a DHCP lease on the NIC.
#[test]
fn pci_transport_carries_disk_net_and_rng() {
    require_image();
    let dir = TempDir::new("virtio");
    let src = dir.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let host_bin = pseudo_random(700_001, 11);
    std::fs::write(src.join("host.bin"), &host_bin).unwrap();
    let img = dir.join("disk.img");
    mkfs_ext4(&img, 32 * MIB, Some(&src));
    let out = run_ok(&[
        "run",
        "--image",
        IMAGE,
        "--virtio-transport",
        "pci",
        "--disk",
        img.to_str().unwrap(),
        "--rng",
        "--net",
        "user",
        "--",
        "sh",
        "-c",
        "set -e
         for d in /sys/bus/pci/devices/*; do
           echo \"pci $(basename $d) $(cat $d/vendor):$(cat $d/device) driver=$(basename $(readlink $d/driver 2>/dev/null) 2>/dev/null)\"
         done
         echo mmio=$(ls /sys/bus/platform/devices | grep -c virtio || true)
         grep -E 'virtio[0-9]' /proc/interrupts | sed 's/^/irq /'
         mount /dev/vda /mnt
         sha256sum /mnt/host.bin
         head -c 1000000 /dev/hwrng > /mnt/guest.bin
         sha256sum /mnt/guest.bin
         umount /mnt
         ip -4 -o addr show eth0 | sed 's/^/addr /'
         head -c 32 /dev/hwrng | od -An -v -tx1 | tr -d ' \n'; echo",
    ]);
    // Host bridge, then the devices in command-line order (block, net, rng), then the
    // command's own channel (virtio-serial).
    for (slot, id) in [
        ("00.0", "0x1b36:0x0008"),
        ("01.0", "0x1af4:0x1042"),
        ("02.0", "0x1af4:0x1041"),
        ("03.0", "0x1af4:0x1044"),
        ("04.0", "0x1af4:0x1043"),
    ] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("pci 0000:00:{slot} ")))
            .unwrap_or_else(|| panic!("no PCI function {slot}:\n{out}"));
        assert!(line.contains(id), "{line}");
        if slot != "00.0" {
            assert!(line.ends_with("driver=virtio-pci"), "{line}");
        }
    }
    assert!(out.contains("mmio=0\n"), "virtio-mmio devices too:\n{out}");
    // Each function's INTA# on its own PLIC source (32 + slot).
    let mut sources: Vec<u32> = out
        .lines()
        .filter(|l| l.starts_with("irq "))
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            let at = w.iter().position(|t| *t == "PLIC")?;
            w.get(at + 1)?.parse().ok()
        })
        .collect();
    sources.sort_unstable();
    assert_eq!(sources, vec![33, 34, 35, 36], "{out}");
    let sums = sha256_lines(&out);
    assert_eq!(sums.get("/mnt/host.bin"), Some(&sha256(&host_bin)), "{out}");
    let guest_sum = sums
        .get("/mnt/guest.bin")
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        out.lines()
            .any(|l| l.starts_with("addr ") && l.contains("inet ")),
        "no DHCP lease on eth0:\n{out}"
    );
    let hex = out.lines().last().unwrap_or_default();
    assert_eq!(hex.len(), 64, "{out}");
    assert_ne!(hex, "0".repeat(64));
    e2fsck_clean(&img);
    // The host reads the guest's file out of the image and gets the guest's checksum.
    let dumped = dir.join("guest.bin");
    let st = Command::new(tool("debugfs"))
        .arg("-R")
        .arg(format!("dump /guest.bin {}", dumped.display()))
        .arg(&img)
        .output()
        .unwrap();
    assert!(st.status.success(), "{st:?}");
    assert_eq!(&sha256(&std::fs::read(&dumped).unwrap()), guest_sum);
}

// ---------------------------------------------------------------- bad input

#[test]
fn bad_device_options_are_usage_errors() {
    require_image();
    let dir = TempDir::new("virtio");
    let disk = dir.join("d.img");
    std::fs::File::create(&disk).unwrap().set_len(MIB).unwrap();
    let disk = disk.to_str().unwrap().to_string();
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port().to_string();
    let uds = format!("{}/v.sock", dir.display());
    let long_serial = format!("{disk},serial=ABCDEFGHIJKLMNOPQRSTU");
    // The same file by another name: a symbolic link, and a path with a `.` in it.
    let link = dir.join("link.img");
    std::os::unix::fs::symlink(&disk, &link).unwrap();
    let link = link.to_str().unwrap().to_string();
    let dotted = format!("{}/./d.img", dir.display());
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--disk", "/nonexistent/disk.img"],
            &["/nonexistent/disk.img"],
        ),
        (&["--disk", dir.to_str().unwrap()], &["directory"]),
        (&["--disk", &format!("{disk},bogus")], &["bogus"]),
        (&["--disk", &long_serial], &["20 bytes"]),
        (
            &["--disk", &format!("{disk},format=qcow2")],
            &["is not a qcow2 image", "format=qcow2"],
        ),
        (
            &["--disk", &format!("{disk},format=vdi")],
            &["'vdi'", "raw or qcow2"],
        ),
        (
            &["--disk", &disk, "--disk", &format!("{link},readonly")],
            &["same file", &link],
        ),
        (
            &["--disk", &format!("{disk},readonly"), "--disk", &dotted],
            &["same file", &dotted],
        ),
        (
            &["--net", &format!("user,hostfwd=tcp:{port}-:80")],
            &[&port, "in use"],
        ),
        (&["--net", "bogus"], &["bogus"]),
        (
            &["--net", "user,hostfwd=sctp:1-:2"],
            &["\"sctp\"", "tcp or udp"],
        ),
        (
            &["--net", "user,hostfwd=tcp:localhost:8080-:80"],
            &["\"localhost\"", "IP address"],
        ),
        (
            &["--net", "user,hostfwd=tcp:203.0.113.7:8080-:80"],
            &["203.0.113.7 is not an address of this host"],
        ),
        (&["--vsock", "cid=1,uds=/tmp/x"], &["cid"]),
        (
            &[
                "--vsock",
                &format!("cid=3,uds={uds}"),
                "--vsock",
                "cid=4,uds=/tmp/y",
            ],
            &["--vsock"],
        ),
        (&["--vsock", "cid=3"], &["uds"]),
        (
            &["--vsock", "cid=3,uds=/nonexistent/dir/v.sock"],
            &["/nonexistent/dir/v.sock"],
        ),
        (&["--console", "bogus"], &["bogus"]),
    ];
    for (opts, words) in cases {
        let mut args = vec!["run", "--image", IMAGE];
        args.extend_from_slice(opts);
        args.extend_from_slice(&["--", "true"]);
        let start = Instant::now();
        let r = run(&args);
        assert_eq!(r.status, VIREO_ERROR, "{opts:?}: {}{}", r.stdout, r.stderr);
        for w in *words {
            assert!(r.stderr.contains(w), "{opts:?}: no {w:?} in: {}", r.stderr);
        }
        assert!(!r.stderr.contains("panicked"), "{opts:?}: {}", r.stderr);
        // Refused before booting, not after.
        assert!(start.elapsed() < Duration::from_secs(3), "{opts:?} booted");
    }
    drop(held);
}

// ---------------------------------------------------------------- helpers

/// Runs vireo, requires status 0, returns stdout.
fn run_ok(args: &[&str]) -> String {
    let r = run(args);
    assert_eq!(
        r.status, 0,
        "vireo {args:?}\nstdout:\n{}\nstderr:\n{}",
        r.stdout, r.stderr
    );
    r.stdout
}

/// A fresh directory, removed when dropped.
fn e2fsck_clean(img: &Path) {
    let out = Command::new(tool("e2fsck"))
        .arg("-fn")
        .arg(img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "e2fsck finds the guest's file system damaged:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes the host has allocated for a file.
fn allocated(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().blocks() * 512
}

/// The host's sha256sum of some bytes, as hex.
fn sha256(bytes: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils) is needed");
    let mut stdin = c.stdin.take().unwrap();
    let data = bytes.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data));
    let out = c.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// `HASH  NAME` lines of sha256sum output, by name.
fn sha256_lines(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once("  "))
        .filter(|(h, _)| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|(h, n)| (n.to_string(), h.to_string()))
        .collect()
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1
}

/// Deterministic bytes from a seed (xorshift64*), different from any simple pattern.
/// An address of this host other than 127.0.0.1: a non-loopback one from `ip -o addr` if
/// there is one (IPv4 first), else 127.0.0.2 (all of 127/8 is this host's, so a forward that
/// listened on every address would answer there too).
fn other_local_address() -> std::net::IpAddr {
    let out = Command::new("ip")
        .args(["-o", "addr", "show", "scope", "global"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let addrs: Vec<std::net::IpAddr> = out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.find(|t| *t == "inet" || *t == "inet6")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .unwrap_or_else(|| {
            eprintln!("no non-loopback address on this host: using 127.0.0.2");
            std::net::IpAddr::from([127, 0, 0, 2])
        })
}

/// Process ids whose parent is `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    // The command name may hold spaces: fields start after the last ')'.
                    let rest = &s[s.rfind(')')? + 2..];
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(pid)
        })
        .collect()
}

/// Whether `pid` is a live process (a zombie no longer counts).
fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s[s.rfind(')')? + 2..].chars().next())
        .is_some_and(|state| state != 'Z' && state != 'X')
}

/// A TCP port on 127.0.0.1 nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
