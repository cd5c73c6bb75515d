//! I/O benchmark: virtio-blk sequential write/read (guest `dd`) and TCP through passt in both
//! directions, under vireo's emu accelerator and QEMU TCG with the same kernel, initramfs,
//! disk image and network backend (passt). Timed inside the guest (the guest clock is the
//! host's), so boot time does not count.
//!
//! The disk tests run on three images, each made fresh for every boot and given to both
//! machines in the same format: a sparse raw file (with the network tests), a fresh qcow2
//! image, and a qcow2 overlay on a qcow2 base holding data, where the second read
//! (`blk-read-base`) goes through to the base.
//!
//! The guest moves the data with `dd` to and from /dev/null (and wget into a tmpfs file), and
//! takes the byte count from dd's own report (whole 1 MiB records out): a pipe into `wc -c` would time busybox's
//! byte-at-a-time counting loop, an emulated-CPU figure, instead of the device.
//!
//! The buffered tests include the guest kernel's copies between the page cache and dd's
//! buffer, which run on the emulated CPU; the `-direct` ones (O_DIRECT) leave those out and
//! time mostly the device path; they move 8 × MIB MiB so /proc/uptime's 10 ms ticks do not
//! set the figure.
//!
//! With `VIREO_BENCH_BASELINE=PATH` (another vireo binary, e.g. an earlier commit's build)
//! that binary runs every test too, in turn with the others, and a last column gives
//! vireo's figure over the baseline's.
//!
//! Usage: `bench/run.sh io [RUNS]`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vireo_bench::{command_initrd, die, run_count, vireo_binary, which};

const MIB: u64 = 32;

/// One run's measurements: test name and MiB/s.
type Run = Vec<(String, f64)>;

fn main() {
    let runs = run_count(3);
    let vireo = vireo_binary();
    let baseline = std::env::var_os("VIREO_BENCH_BASELINE").map(std::path::PathBuf::from);
    let qemu = which("qemu-system-riscv64")
        .unwrap_or_else(|| die("qemu-system-riscv64 is missing: apt-get install qemu-system-misc"));
    let passt = which("passt").unwrap_or_else(|| die("passt is missing: apt-get install passt"));
    let image = vireo_image::open("debian-riscv64").unwrap_or_else(|e| die(&e.to_string()));
    let fw = image
        .firmware
        .clone()
        .unwrap_or_else(|| die("the image has no fw_jump.bin"));
    let dir = std::env::temp_dir().join(format!("vireo-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| die(&e.to_string()));

    // Host ends of the TCP tests: a sink the guest sends to, a source the guest reads from.
    // The guest reaches the host's loopback at the passt gateway address.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| die(&e.to_string()));
    let source = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| die(&e.to_string()));
    let (sink_port, source_port) = (port(&sink), port(&source));
    let received = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let rx = received.clone();
    std::thread::spawn(move || {
        for s in sink.incoming().flatten() {
            let mut s = s;
            let mut buf = vec![0u8; 1 << 16];
            let mut total = 0u64;
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            rx.store(total, std::sync::atomic::Ordering::SeqCst);
        }
    });
    // The source answers any request with an HTTP response of MIB MiB, fetched by wget.
    std::thread::spawn(move || {
        for s in source.incoming().flatten() {
            let mut s = s;
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                MIB << 20
            );
            if s.write_all(head.as_bytes()).is_err() {
                continue;
            }
            let buf = vec![0x5au8; 1 << 16];
            for _ in 0..(MIB << 4) {
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        }
    });

    // Each line: NAME START END BYTES; a transfer that moved fewer bytes than asked is an error,
    // not a fast result.
    let disk_script = format!(
        "t() {{ cut -d' ' -f1 /proc/uptime; }}\n\
         a=$(t); timeout 120 dd if=/dev/zero of=/dev/vda bs=1M count={MIB} 2>/dev/null; sync; b=$(t); echo blk-write $a $b $(({MIB} << 20))\n\
         echo 3 > /proc/sys/vm/drop_caches; a=$(t); n=$(dd if=/dev/vda of=/dev/null bs=1M count={MIB} 2>&1 | awk -F+ '/records out/{{printf \"%d\", $1 * 1048576}}'); b=$(t); echo blk-read $a $b $n\n\
         a=$(t); n=$(dd if=/dev/vda of=/dev/null bs=1M skip={MIB} count={MIB} 2>&1 | awk -F+ '/records out/{{printf \"%d\", $1 * 1048576}}'); b=$(t); echo blk-read-base $a $b $n\n\
         a=$(t); n=$(for i in 1 2 3 4 5 6 7 8; do dd if=/dev/vda of=/dev/null bs=1M count={MIB} iflag=direct 2>&1; done | awk -F+ '/records out/{{s += $1}} END {{printf \"%d\", s * 1048576}}'); b=$(t); echo blk-read-direct $a $b $n\n\
         a=$(t); n=$(for i in 1 2 3 4 5 6 7 8; do dd if=/dev/zero of=/dev/vda bs=1M count={MIB} oflag=direct conv=notrunc 2>&1; done | awk -F+ '/records out/{{s += $1}} END {{printf \"%d\", s * 1048576}}'); b=$(t); echo blk-write-direct $a $b $n\n"
    );
    let net_script = format!(
        "ip -4 addr show eth0 | grep -q inet || echo no-network\n\
         gw=$(ip route | awk '/default/{{print $3}}')\n\
         a=$(t); dd if=/dev/zero bs=64k count={} 2>/dev/null | timeout 120 nc $gw {sink_port}; b=$(t); echo tcp-guest-to-host $a $b $(({MIB} << 20))\n\
         a=$(t); timeout 120 wget -q -O /tmp/dl http://$gw:{source_port}/; b=$(t); n=$(stat -c %s /tmp/dl); rm -f /tmp/dl; echo tcp-host-to-guest $a $b $n\n",
        MIB << 4
    );
    // /init runs the command on virtio-serial ports named vireo.*: vireo adds them (and the
    // command) for `-- CMD`; QEMU gets the same command in an appended archive and four
    // file-backed ports of its own, the guest's stdout going to a file read afterwards.
    let with_net_script = format!("{disk_script}{net_script}");
    let with_net = dir.join("io-net.img");
    command_initrd(&image.initrd, &with_net_script, &with_net);
    let disk_only = dir.join("io-disk.img");
    command_initrd(&image.initrd, &disk_script, &disk_only);
    let qemu_out = dir.join("qemu-stdout.txt");
    let cmdline = format!("{} vireo.exit=0x100000", image.default_cmdline);
    let qemu_img =
        which("qemu-img").unwrap_or_else(|| die("qemu-img is missing: apt-get install qemu-utils"));

    println!(
        "vireo emu vs QEMU TCG, virtio-blk (raw, qcow2, qcow2 overlay) + virtio-net(passt), \
         {MIB} MiB per test, {runs} runs, medians"
    );
    // (disk kind, machine) -> runs.
    let kinds = [Kind::Raw, Kind::Qcow2, Kind::Overlay];
    let mut results: Vec<(Kind, &str, Vec<Run>)> = Vec::new();
    for k in kinds {
        for m in ["vireo", "qemu", "base"] {
            if m == "base" && baseline.is_none() {
                continue;
            }
            results.push((k, m, vec![]));
        }
    }
    for _ in 0..runs {
        for (kind, name, samples) in results.iter_mut() {
            let kind = *kind;
            let net = kind == Kind::Raw;
            let (initrd, script) = if net {
                (&with_net, &with_net_script)
            } else {
                (&disk_only, &disk_script)
            };
            let disk = make_disk(&dir, kind, &qemu_img);
            let format = if kind == Kind::Raw { "raw" } else { "qcow2" };
            let out = if *name != "qemu" {
                let bin = match (*name, &baseline) {
                    ("base", Some(b)) => b,
                    _ => &vireo,
                };
                let mut c = Command::new(bin);
                c.args(["run", "--kernel"])
                    .arg(&image.kernel)
                    .arg("--initrd")
                    .arg(&image.initrd)
                    .args(["--cmdline", &image.default_cmdline, "--memory", "512M"])
                    .arg("--disk")
                    .arg(format!("{},format={format}", disk.display()));
                if net {
                    c.args(["--net", "user"]);
                }
                c.args(["--", "sh", "-c", script]);
                output(c)
            } else {
                // passt drops to `nobody` when started as root: its socket goes straight in the
                // world-writable temp directory, not in ours.
                let sock = std::env::temp_dir()
                    .join(format!("vireo-io-passt-{}.sock", std::process::id()));
                let _ = std::fs::remove_file(&sock);
                let mut p = net.then(|| spawn_passt(&passt, &sock));
                let mut c = Command::new(&qemu);
                c.args([
                    "-M",
                    "virt",
                    "-m",
                    "512",
                    "-nographic",
                    "-no-reboot",
                    "-bios",
                ])
                .arg(&fw)
                .arg("-kernel")
                .arg(&image.kernel)
                .arg("-initrd")
                .arg(initrd)
                .args(["-append", &cmdline])
                .arg("-drive")
                .arg(format!(
                    "file={},if=none,format={format},id=d0",
                    disk.display()
                ))
                .args(["-device", "virtio-blk-device,drive=d0"])
                .args(["-device", "virtio-serial-device"]);
                let _ = std::fs::remove_file(&qemu_out);
                for (i, port) in ["stdin", "stdout", "stderr", "ctl"].iter().enumerate() {
                    let path = if *port == "stdout" {
                        qemu_out.display().to_string()
                    } else {
                        "/dev/null".into()
                    };
                    c.arg("-chardev")
                        .arg(format!("file,id=p{i},path={path}"))
                        .arg("-device")
                        .arg(format!("virtserialport,chardev=p{i},name=vireo.{port}"));
                }
                if net {
                    c.arg("-netdev")
                        .arg(format!(
                            "stream,id=n0,server=off,addr.type=unix,addr.path={}",
                            sock.display()
                        ))
                        .args(["-device", "virtio-net-device,netdev=n0"]);
                }
                let console = output(c);
                // passt may still hold the guest's last bytes for the host's sink.
                if net {
                    wait_received(&received);
                }
                if let Some(p) = p.as_mut() {
                    let _ = p.kill();
                    let _ = p.wait();
                }
                std::fs::read_to_string(&qemu_out).unwrap_or_else(|e| {
                    die(&format!("qemu: no guest output ({e}); console:\n{console}"))
                })
            };
            if net {
                wait_received(&received);
                let got = received.swap(0, std::sync::atomic::Ordering::SeqCst);
                // The yardstick's losses are reported, not fatal: QEMU's stream netdev with
                // passt now and then delivers a little less than the guest sent.
                if got < MIB << 20 && *name == "qemu" {
                    println!(
                        "  note: qemu: the host received {got} of {} bytes the guest sent",
                        MIB << 20
                    );
                } else if got < MIB << 20 {
                    die(&format!(
                        "{name}: the host received {got} bytes from the guest:\n{out}"
                    ));
                }
            }
            if kind != Kind::Raw {
                check_image(&qemu_img, &disk, name);
            }
            samples.push(parse(&out, name, if net { 7 } else { 5 }));
        }
    }
    let base_cols = if baseline.is_some() {
        format!(" {:>12} {:>12}", "base MiB/s", "vireo/base")
    } else {
        String::new()
    };
    println!(
        "  {:<20} {:<14} {:>12} {:>12} {:>14}{base_cols}",
        "test", "disk", "vireo MiB/s", "QEMU MiB/s", "ratio v/QEMU"
    );
    let rows: [(&str, &[Kind]); 7] = [
        ("blk-write", &kinds),
        ("blk-read", &kinds),
        ("blk-read-base", &[Kind::Overlay]),
        ("blk-read-direct", &kinds),
        ("blk-write-direct", &kinds),
        ("tcp-guest-to-host", &[Kind::Raw]),
        ("tcp-host-to-guest", &[Kind::Raw]),
    ];
    for (t, on) in rows {
        for &k in on {
            let med = |name: &str| {
                let s = &results.iter().find(|r| r.0 == k && r.1 == name)?.2;
                let mut v: Vec<f64> = s
                    .iter()
                    .filter_map(|run| run.iter().find(|(n, _)| n == t).map(|(_, rate)| *rate))
                    .collect();
                v.sort_by(f64::total_cmp);
                v.get(v.len() / 2).copied()
            };
            let label = if t.starts_with("tcp") { "-" } else { k.label() };
            match (med("vireo"), med("qemu")) {
                (Some(v), Some(q)) => {
                    let (vr, qr) = (v, q);
                    let base = match med("base") {
                        Some(b) => {
                            let br = b;
                            format!(" {br:>12.1} {:>12.2}", vr / br)
                        }
                        None => String::new(),
                    };
                    println!(
                        "  {t:<20} {label:<14} {vr:>12.1} {qr:>12.1} {:>14.2}{base}",
                        vr / qr
                    );
                }
                _ => println!("  {t:<20} {label:<14} missing measurements"),
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Raw,
    Qcow2,
    /// A qcow2 overlay on a qcow2 base whose second MIB MiB hold data.
    Overlay,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Raw => "raw",
            Kind::Qcow2 => "qcow2",
            Kind::Overlay => "qcow2 overlay",
        }
    }
}

/// Waits (up to 10 s) for the sink to have counted the whole guest-to-host transfer.
fn wait_received(received: &std::sync::atomic::AtomicU64) {
    for _ in 0..1000 {
        if received.load(std::sync::atomic::Ordering::SeqCst) >= MIB << 20 {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn port(l: &TcpListener) -> u16 {
    l.local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| die(&e.to_string()))
}

/// MiB/s per test from the guest's `NAME START END BYTES` lines (/proc/uptime, 10 ms resolution).
fn parse(out: &str, who: &str, expect: usize) -> Run {
    let mut v = Vec::new();
    // QEMU passes /init's start marker through; vireo strips it.
    let marker = String::from_utf8_lossy(vireo_image::START_MARKER).into_owned();
    for line in out.lines() {
        let line = line.rsplit(marker.as_str()).next().unwrap_or(line);
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 4 {
            if let (Ok(a), Ok(b), Ok(n)) = (
                f[1].parse::<f64>(),
                f[2].parse::<f64>(),
                f[3].parse::<u64>(),
            ) {
                if n < MIB << 20 {
                    die(&format!("{who}: {} moved only {n} bytes:\n{out}", f[0]));
                }
                // MiB/s over the bytes the guest moved (the direct tests repeat theirs).
                v.push((
                    f[0].to_string(),
                    n as f64 / (1 << 20) as f64 / (b - a).max(0.01),
                ));
            }
        }
    }
    if out.contains("no-network") || v.len() < expect {
        die(&format!(
            "{who}: the guest reported {} of {expect} measurements:\n{out}",
            v.len()
        ));
    }
    v
}

/// A fresh disk of `kind` (2 × MIB MiB + 8 MiB) in `dir`, made by qemu-img for qcow2 so both
/// machines get an image neither wrote.
fn make_disk(dir: &Path, kind: Kind, qemu_img: &Path) -> std::path::PathBuf {
    let size = format!("{}M", 2 * MIB + 8);
    let img = |args: &[&str]| {
        let ok = Command::new(qemu_img)
            .args(args)
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            die(&format!("qemu-img {args:?} failed"));
        }
    };
    match kind {
        Kind::Raw => {
            let p = dir.join("disk.img");
            let f = std::fs::File::create(&p).unwrap_or_else(|e| die(&e.to_string()));
            f.set_len((2 * MIB + 8) << 20)
                .unwrap_or_else(|e| die(&e.to_string()));
            p
        }
        Kind::Qcow2 => {
            let p = dir.join("disk.qcow2");
            let _ = std::fs::remove_file(&p);
            img(&["create", "-q", "-f", "qcow2", p.to_str().unwrap(), &size]);
            p
        }
        Kind::Overlay => {
            let base = dir.join("base.qcow2");
            let p = dir.join("top.qcow2");
            let _ = std::fs::remove_file(&base);
            let _ = std::fs::remove_file(&p);
            img(&["create", "-q", "-f", "qcow2", base.to_str().unwrap(), &size]);
            let io = Command::new(qemu_img.with_file_name("qemu-io"))
                .args(["-f", "qcow2", "-c"])
                .arg(format!("write -P 0x5a {MIB}M {MIB}M"))
                .arg(&base)
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !io {
                die("qemu-io could not fill the base image");
            }
            img(&[
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                base.to_str().unwrap(),
                "-F",
                "qcow2",
                p.to_str().unwrap(),
            ]);
            p
        }
    }
}

/// A benchmark that leaves a broken image is not a result.
fn check_image(qemu_img: &Path, p: &Path, who: &str) {
    let o = Command::new(qemu_img)
        .args(["check", "-q", "-f", "qcow2"])
        .arg(p)
        .output()
        .unwrap_or_else(|e| die(&e.to_string()));
    if !o.status.success() {
        die(&format!(
            "{who}: qemu-img check {}: {}{}",
            p.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
}

fn spawn_passt(passt: &Path, sock: &Path) -> Child {
    // The same passt options vireo's own backend uses, so both guests get the same network.
    let c = Command::new(passt)
        .args(vireo_virtio::net::passt_args(sock, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| die(&format!("passt: {e}")));
    for _ in 0..200 {
        if sock.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    c
}

fn output(mut c: Command) -> String {
    let o = c
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap_or_else(|e| die(&e.to_string()));
    String::from_utf8_lossy(&o.stdout).into_owned()
}
