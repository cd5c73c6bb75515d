use std::path::PathBuf;
use vireo_devices::ConsoleOutput;
use vireo_machine::BootConfig;
use vireo_riscv::EmuVm;

#[test]
fn debug_profile() {
    let elf = std::env::var("ELF").unwrap();
    let cfg = BootConfig {
        kernel: PathBuf::new(),
        firmware: Some(elf.into()),
        initrd: None,
        cmdline: String::new(),
        cpus: std::env::var("CPUS")
            .map(|c| c.parse().unwrap())
            .unwrap_or(1),
        memory: 64 << 20,
    };
    std::env::set_var("VIREO_PROFILE", "1");
    let console = ConsoleOutput::new();
    let mut vm = EmuVm::new(&cfg, console.clone()).unwrap();
    let sig = vm.exit_signal();
    std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        sig.raise(vireo_machine::GuestExit::Reset);
    });
    let r = vm.run();
    let mut p: Vec<_> = vm
        .profile()
        .unwrap()
        .iter()
        .map(|(a, b)| (*b, *a))
        .collect();
    p.sort();
    p.reverse();
    for (n, pc) in p.iter().take(10) {
        eprintln!("{pc:#x} {n}");
    }
    eprintln!("{r:?} {}", String::from_utf8_lossy(&console.take()));
}
