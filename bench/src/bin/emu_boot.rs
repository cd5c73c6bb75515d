//! Boot benchmark: the emu accelerator against QEMU TCG, same kernel, same initramfs, same
//! command line, runs alternated so machine noise hits both alike.
//!
//! Workloads:
//! - `boot`: the guest's /init runs `true` and powers off (boot to userspace and back out);
//! - `cpu`: the same boot plus a CPU-bound command (sha256 of 8 MiB of zeros).
//!
//! Prints, per workload and system, the median wall time and peak RSS, and the ratio
//! vireo/QEMU. QEMU runs OpenSBI fw_jump.bin; vireo runs its built-in SBI (its default) and,
//! as a third line, the same OpenSBI; a fourth line is vireo with Sstc and Zbb taken out of its
//! CPU (`--cpu max,-sstc,-zbb`: the kernel then programs its timer through SBI calls and uses
//! its generic string routines), to show what advertising them is worth.
//!
//! Usage: `bench/run.sh [RUNS]` (default 5 runs per system and workload).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vireo_bench::{command_initrd, die, run_count, vireo_binary, which};

/// The CPU model of the comparison line.
const NO_SSTC_ZBB: &str = "max,-sstc,-zbb";

const CPU_WORK: &str = "dd if=/dev/zero bs=1M count=8 2>/dev/null | sha256sum";

/// Longest one measured run may take (a boot is seconds).
const RUN_DEADLINE: Duration = Duration::from_secs(300);

struct Sample {
    wall: f64,
    rss_kib: u64,
}

fn main() {
    let runs = run_count(5);
    let vireo = vireo_binary();
    let qemu = which("qemu-system-riscv64")
        .unwrap_or_else(|| die("qemu-system-riscv64 is missing: apt-get install qemu-system-misc"));
    let image = vireo_image::open("debian-riscv64").unwrap_or_else(|e| die(&e.to_string()));
    let fw = image
        .firmware
        .clone()
        .unwrap_or_else(|| die("the image has no fw_jump.bin"));
    let dir = std::env::temp_dir().join(format!("vireo-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| die(&e.to_string()));
    // vireo appends the exit-register address itself; QEMU gets the identical string.
    let cmdline = format!("{} vireo.exit=0x100000", image.default_cmdline);

    println!(
        "vireo emu vs QEMU TCG: kernel {}, {runs} runs each, alternated",
        image.kernel_version
    );
    println!("cmdline: {cmdline}");
    for (name, cmd) in [("boot", "true"), ("cpu", CPU_WORK)] {
        // /init runs a command on virtio-serial ports named vireo.*: vireo adds them (and the
        // command, appended to the same initramfs) for `-- CMD`; QEMU gets the command in an
        // appended archive and four ports of its own, so both guests do the same work. QEMU's
        // ports are file chardevs: a null one never reports its host side open, and the
        // guest's writes to it block.
        let initrd = dir.join(format!("{name}.img"));
        command_initrd(&image.initrd, &format!("{cmd}\n"), &initrd);
        let vireo_args = |fw: Option<&Path>, cpu: &str| {
            let mut a = vec![
                "run".to_string(),
                "--kernel".into(),
                image.kernel.display().to_string(),
                "--initrd".into(),
                image.initrd.display().to_string(),
                "--cmdline".into(),
                image.default_cmdline.clone(),
                "--memory".into(),
                "512M".into(),
                "--cpu".into(),
                cpu.into(),
            ];
            if let Some(f) = fw {
                a.push("--firmware".into());
                a.push(f.display().to_string());
            }
            a.extend(["--".into(), "sh".into(), "-c".into(), cmd.into()]);
            a
        };
        let qemu_args = vec![
            "-M".to_string(),
            "virt".into(),
            "-m".into(),
            "512".into(),
            "-nographic".into(),
            "-no-reboot".into(),
            "-bios".into(),
            fw.display().to_string(),
            "-kernel".into(),
            image.kernel.display().to_string(),
            "-initrd".into(),
            initrd.display().to_string(),
            "-append".into(),
            cmdline.clone(),
            "-device".into(),
            "virtio-serial-device".into(),
        ];
        let mut qemu_args = qemu_args;
        for (i, port) in ["stdin", "stdout", "stderr", "ctl"].iter().enumerate() {
            qemu_args.extend([
                "-chardev".into(),
                format!("file,id=p{i},path=/dev/null"),
                "-device".into(),
                format!("virtserialport,chardev=p{i},name=vireo.{port}"),
            ]);
        }
        let mut v = Vec::new();
        let mut vf = Vec::new();
        let mut vn = Vec::new();
        let mut q = Vec::new();
        for i in 0..runs {
            // Alternate which system goes first.
            if i % 2 == 0 {
                v.push(measure(&vireo, &vireo_args(None, "max")));
                q.push(measure(&qemu, &qemu_args));
                vn.push(measure(&vireo, &vireo_args(None, NO_SSTC_ZBB)));
            } else {
                vn.push(measure(&vireo, &vireo_args(None, NO_SSTC_ZBB)));
                q.push(measure(&qemu, &qemu_args));
                v.push(measure(&vireo, &vireo_args(None, "max")));
            }
            vf.push(measure(&vireo, &vireo_args(Some(&fw), "max")));
        }
        let (vw, vr) = medians(&v);
        let (fw_w, fw_r) = medians(&vf);
        let (nw, nr) = medians(&vn);
        let (qw, qr) = medians(&q);
        println!(
            "\n[{name}] {}",
            if name == "boot" {
                "boot to userspace, power off"
            } else {
                CPU_WORK
            }
        );
        println!(
            "  {:<26} {:>9} {:>12}",
            "system", "median s", "peak RSS MiB"
        );
        println!("  {:<26} {:>9.3} {:>12.1}", "vireo (built-in SBI)", vw, vr);
        println!(
            "  {:<26} {:>9.3} {:>12.1}",
            "vireo (OpenSBI fw_jump)", fw_w, fw_r
        );
        println!(
            "  {:<26} {:>9.3} {:>12.1}",
            "vireo --cpu max,-sstc,-zbb", nw, nr
        );
        println!(
            "  {:<26} {:>9.3} {:>12.1}",
            "qemu-system-riscv64 TCG", qw, qr
        );
        println!(
            "  ratio vireo/QEMU: wall {:.2}, RSS {:.2}",
            vw / qw,
            vr / qr
        );
        println!("  ratio vireo+OpenSBI/QEMU: wall {:.2}", fw_w / qw);
        println!(
            "  ratio vireo/vireo without Sstc and Zbb: wall {:.3}",
            vw / nw
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs a command to completion; wall time and the child's peak RSS.
// The child is reaped with wait4, which std's wait cannot do: it also returns the rusage.
#[allow(clippy::zombie_processes)]
fn measure(prog: &Path, args: &[String]) -> Sample {
    // stderr goes to a file, so a failing run can say why.
    let err_path = std::env::temp_dir().join(format!("vireo-bench-stderr-{}", std::process::id()));
    let err_file = std::fs::File::create(&err_path).unwrap_or_else(|e| die(&e.to_string()));
    let start = Instant::now();
    let child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err_file)
        .spawn()
        .unwrap_or_else(|e| die(&format!("{}: {e}", prog.display())));
    let pid = child.id() as libc::pid_t;
    // A guest that stalls must end the bench with a message, not hang it.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = done.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + RUN_DEADLINE;
            while Instant::now() < deadline {
                if done.load(std::sync::atomic::Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // SAFETY: signals our own child, which has not been reaped (done is unset).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        })
    };
    let mut status = 0;
    // SAFETY: rusage is plain data that wait4 fills for the child we spawned.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child; pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = start.elapsed().as_secs_f64();
    done.store(true, std::sync::atomic::Ordering::Release);
    let _ = watchdog.join();
    if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
        die(&format!(
            "{} {} did not finish within {RUN_DEADLINE:?}",
            prog.display(),
            args.join(" ")
        ));
    }
    if r != pid {
        die(&format!("wait4 failed for {}", prog.display()));
    }
    let code = libc::WEXITSTATUS(status);
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    let _ = std::fs::remove_file(&err_path);
    if !libc::WIFEXITED(status) || code != 0 {
        die(&format!(
            "{} {} exited with status {code}: {}",
            prog.display(),
            args.join(" "),
            stderr.trim_end()
        ));
    }
    Sample {
        wall,
        rss_kib: ru.ru_maxrss as u64,
    }
}

fn medians(s: &[Sample]) -> (f64, f64) {
    let mut w: Vec<f64> = s.iter().map(|x| x.wall).collect();
    let mut r: Vec<f64> = s.iter().map(|x| x.rss_kib as f64 / 1024.0).collect();
    w.sort_by(f64::total_cmp);
    r.sort_by(f64::total_cmp);
    (w[w.len() / 2], r[r.len() / 2])
}
