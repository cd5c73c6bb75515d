//! I/O benchmark: virtio-blk sequential write/read (guest `dd`) and TCP through passt in both
//! directions, under vireo's emu accelerator and QEMU TCG with the same kernel, initramfs,
//! disk image and network backend (passt). Timed inside the guest (the guest clock is the
//! host's), so boot time does not count.
//!
//! Usage: `bench/run.sh io [RUNS]`.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use vireo_bench::{command_initrd, die, run_count, vireo_binary, which};

const MIB: u64 = 32;

/// One run's measurements: test name and seconds.
type Run = Vec<(String, f64)>;

fn main() {
    let runs = run_count(3);
    let vireo = vireo_binary();
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
    let script = format!(
        "t() {{ cut -d' ' -f1 /proc/uptime; }}\n\
         ip -4 addr show eth0 | grep -q inet || echo no-network\n\
         a=$(t); timeout 120 dd if=/dev/zero of=/dev/vda bs=1M count={MIB} 2>/dev/null; sync; b=$(t); echo blk-write $a $b $(({MIB} << 20))\n\
         echo 3 > /proc/sys/vm/drop_caches; a=$(t); n=$(dd if=/dev/vda bs=1M count={MIB} 2>/dev/null | wc -c); b=$(t); echo blk-read $a $b $n\n\
         gw=$(ip route | awk '/default/{{print $3}}')\n\
         a=$(t); dd if=/dev/zero bs=64k count={} 2>/dev/null | timeout 120 nc $gw {sink_port}; b=$(t); echo tcp-guest-to-host $a $b $(({MIB} << 20))\n\
         a=$(t); n=$(timeout 120 wget -q -O - http://$gw:{source_port}/ | wc -c); b=$(t); echo tcp-host-to-guest $a $b $n\n",
        MIB << 4
    );
    let initrd = dir.join("io.img");
    command_initrd(&image.initrd, &script, &initrd);
    let cmdline = format!("{} vireo.exit=0x100000", image.default_cmdline);

    println!("vireo emu vs QEMU TCG, virtio-blk + virtio-net(passt), {MIB} MiB per test, {runs} runs, medians");
    let mut results: Vec<(&str, Vec<Run>)> = vec![("vireo", vec![]), ("qemu", vec![])];
    for _ in 0..runs {
        for (name, samples) in results.iter_mut() {
            let disk = dir.join("disk.img");
            make_disk(&disk);
            let out = if *name == "vireo" {
                let mut c = Command::new(&vireo);
                c.args(["run", "--kernel"])
                    .arg(&image.kernel)
                    .arg("--initrd")
                    .arg(&initrd)
                    .args([
                        "--cmdline",
                        &image.default_cmdline,
                        "--memory",
                        "512M",
                        "--net",
                        "user",
                    ])
                    .arg("--disk")
                    .arg(&disk);
                output(c)
            } else {
                // passt drops to `nobody` when started as root: its socket goes straight in the
                // world-writable temp directory, not in ours.
                let sock = std::env::temp_dir()
                    .join(format!("vireo-io-passt-{}.sock", std::process::id()));
                let _ = std::fs::remove_file(&sock);
                let mut p = spawn_passt(&passt, &sock);
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
                .arg(&initrd)
                .args(["-append", &cmdline])
                .arg("-drive")
                .arg(format!("file={},if=none,format=raw,id=d0", disk.display()))
                .args(["-device", "virtio-blk-device,drive=d0"])
                .arg("-netdev")
                .arg(format!(
                    "stream,id=n0,server=off,addr.type=unix,addr.path={}",
                    sock.display()
                ))
                .args(["-device", "virtio-net-device,netdev=n0"]);
                let o = output(c);
                let _ = p.kill();
                let _ = p.wait();
                o
            };
            let got = received.swap(0, std::sync::atomic::Ordering::SeqCst);
            if got < MIB << 20 {
                die(&format!(
                    "{name}: the host received {got} bytes from the guest:\n{out}"
                ));
            }
            samples.push(parse(&out, name));
        }
    }
    let tests = [
        "blk-write",
        "blk-read",
        "tcp-guest-to-host",
        "tcp-host-to-guest",
    ];
    println!(
        "  {:<20} {:>12} {:>12} {:>14}",
        "test", "vireo MB/s", "QEMU MB/s", "ratio v/QEMU"
    );
    for t in tests {
        let med = |name: &str| {
            let s = &results.iter().find(|r| r.0 == name).unwrap().1;
            let mut v: Vec<f64> = s
                .iter()
                .filter_map(|run| run.iter().find(|(k, _)| k == t).map(|(_, secs)| *secs))
                .collect();
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied()
        };
        match (med("vireo"), med("qemu")) {
            (Some(v), Some(q)) => {
                let (vr, qr) = (MIB as f64 / v, MIB as f64 / q);
                println!("  {t:<20} {vr:>12.1} {qr:>12.1} {:>14.2}", vr / qr);
            }
            _ => println!("  {t:<20} missing measurements"),
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn port(l: &TcpListener) -> u16 {
    l.local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| die(&e.to_string()))
}

/// Seconds per test from the guest's `NAME START END` lines (/proc/uptime, 10 ms resolution).
fn parse(out: &str, who: &str) -> Run {
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
                v.push((f[0].to_string(), (b - a).max(0.01)));
            }
        }
    }
    if out.contains("no-network") || v.len() < 4 {
        die(&format!(
            "{who}: the guest reported {} of 4 measurements:\n{out}",
            v.len()
        ));
    }
    v
}

fn make_disk(p: &Path) {
    let f = std::fs::File::create(p).unwrap_or_else(|e| die(&e.to_string()));
    f.set_len((MIB + 8) << 20)
        .unwrap_or_else(|e| die(&e.to_string()));
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
