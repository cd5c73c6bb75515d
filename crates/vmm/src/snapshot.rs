//! Snapshots of a VM, and VMs restored from them.
//!
//! # A snapshot directory
//!
//! ```text
//! SNAP/state.vst     the state file (vireo-state: header, sections, End record)
//! SNAP/memory.bin    guest RAM, sparse (zero pages are holes); a diff holds only the
//!                    pages written since its parent
//! SNAP/spec.json     the VM definition the snapshot was taken of (also in state.vst)
//! SNAP/disk-ID.FMT   a frozen copy of each writable disk (holes kept)
//! ```
//!
//! Sections of `state.vst` for the emu accelerator: `Machine` (riscv `MachineState`: CLINT,
//! timebase, PLIC, UART, RTC, hart mailboxes), `Vcpu(n)` (riscv `HartState`), `Device("virtio.N")`
//! (virtio `CoreState` of slot N, with the device's own bytes), `Device("virtio-pci.N")` (with
//! `virtio_transport` pci only: that device's PCI function, `PciFunctionState`: configuration
//! space, BAR placements, MSI-X), `Device("vmgenid")` (the VM
//! generation ID's 16 bytes; absent from snapshots taken before the board had it), `MemoryMap`, `Disks`
//! (`DiskRef`s: the copies, plus every read-only file they or the definition depend on, each
//! with a fingerprint), `Spec` (the definition as JSON) and `Device("vmm")` ([`SnapshotMeta`]).
//!
//! # Taking one
//! The VM is paused (vCPUs parked between instructions, devices paused: see
//! [`VmControl::pause`]), its state and memory are written to `SNAP.partial`, the writable
//! disks are copied there, and the directory is renamed to `SNAP`; then a VM that was running
//! runs on. A failure removes `SNAP.partial` and leaves the VM as it was: a snapshot is whole
//! or absent. With the guest's clock in the default mode, the time the snapshot took does not
//! pass for the guest.
//!
//! A **diff** snapshot names a parent: its memory file holds only the pages written since
//! the parent, and restoring it maps the chain's full memory file and applies each diff in
//! order. The pages come from the dirty log (see `vireo_machine::memory`: devices and harts
//! mark it; on kvm, KVM's own log of the vCPUs' writes, turned on at a VM's first snapshot
//! or at a restore, with vm-memory's for the devices') when the log runs from the parent — it is taken, and so restarted, at every
//! snapshot, and starts at a restore — and otherwise from comparing every page with what the
//! parent restores to (mapped before the pause; that covers every writer too, but reads all
//! of RAM while the guest stands still). [`VERIFY_ENV`] makes a log-found diff check itself
//! against the comparison.
//!
//! # Restoring
//! [`load`] reads and checks everything before anything runs: the state file (format, accelerator,
//! architecture), the memory map and files of the whole chain, and every disk's fingerprint
//! (a disk changed since the snapshot is refused unless forced). The memory is mapped
//! copy-on-write (`MAP_PRIVATE`) from the memory file, so N VMs restored from one snapshot
//! share every page none of them wrote, and the file is never written.
//!
//! A snapshot directory can be moved, or copied with its files' modification times (`cp -a`:
//! a disk's fingerprint includes its mtime): its own disk copies are looked for in the
//! directory being restored, and a diff whose parent is not where it was taken finds it
//! beside itself under the same name (a chain moved together). Read-only disks and the bases
//! of copied overlays stay where they were (their fingerprints say whether they changed).

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use vireo_machine::GuestRam;
use vireo_riscv::state::{ClockMode, EmuState, HartState, MachineState, EMU_STATE_VERSION};
use vireo_spec::VmSpec;
use vireo_state::disk::DiskRef;
use vireo_state::memory::MemoryMap;
use vireo_state::{Arch, Header, Kind, SectionId, StateFile};

pub use vireo_state::Accel;

use crate::devices::DiskSource;
use crate::{fail, Error, VmControl};

pub use vireo_state::dir::{MEMORY_FILE, SPEC_FILE, STATE_FILE};

/// Version of [`SnapshotMeta`].
const META_VERSION: u16 = 1;

/// What the VMM itself records about a snapshot (section `Device("vmm")`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotMeta {
    /// The parent snapshot's directory (absolute), for a diff.
    pub parent_dir: Option<String>,
}

/// What [`take`] did.
#[derive(Clone, Debug, Serialize)]
pub struct Taken {
    pub id: String,
    pub dir: PathBuf,
    pub kind: &'static str,
    /// Pages in the memory file (non-zero pages, or the diff's pages).
    pub memory_pages: u64,
    /// Bytes the memory file takes on disk.
    pub memory_bytes: u64,
    /// Data bytes copied for the disks.
    pub disk_bytes: u64,
    /// How a diff's pages were found: `dirty-log` or `contents`.
    pub diff_by: Option<&'static str>,
    /// How long the VM was paused for it, and the whole call.
    pub paused_ms: f64,
    pub total_ms: f64,
}

fn section_meta() -> SectionId {
    SectionId::Device("vmm".into())
}

/// The VM generation ID's 16 bytes (optional: snapshots from before the device lack it).
fn section_vmgenid() -> SectionId {
    SectionId::Device("vmgenid".into())
}

fn section_virtio(slot: usize) -> SectionId {
    SectionId::Device(format!("virtio.{slot}"))
}

/// The kvm accelerator's sections: `Machine` is its `VmWideState` (irqchip, PIT, clock,
/// CMOS), `Vcpu(n)` a `VcpuState`, and COM1 is `Device("uart0")`; their version is the kvm
/// crate's [`vireo_kvm::KVM_STATE_VERSION`].
const KVM_SECTION_VERSION: u16 = vireo_kvm::KVM_STATE_VERSION as u16;

fn section_uart() -> SectionId {
    SectionId::Device("uart0".into())
}

/// The virtio transports' sections (`virtio.N`, and `virtio-pci.N` for PCI functions).
fn put_virtio(
    file: &mut StateFile,
    cores: &[vireo_virtio::state::CoreState],
    pci: &[vireo_virtio::state::PciFunctionState],
    version: u16,
) -> Result<(), Error> {
    for (i, v) in cores.iter().enumerate() {
        file.put(section_virtio(i), version, v).map_err(fail)?;
    }
    for (i, p) in pci.iter().enumerate() {
        file.put(section_virtio_pci(i), version, p).map_err(fail)?;
    }
    Ok(())
}

/// Reads the virtio sections [`put_virtio`] wrote: every `virtio.N` from 0 on, and with
/// `pci` a `virtio-pci.N` for each.
#[allow(clippy::type_complexity)]
fn read_virtio(
    file: &StateFile,
    pci: bool,
    version: u16,
) -> Result<
    (
        Vec<vireo_virtio::state::CoreState>,
        Vec<vireo_virtio::state::PciFunctionState>,
    ),
    Error,
> {
    let mut cores = Vec::new();
    for slot in 0.. {
        let id = section_virtio(slot);
        match file
            .get::<vireo_virtio::state::CoreState>(&id)
            .map_err(fail)?
        {
            Some((v, c)) => {
                vireo_state::expect_version(&id, v, version).map_err(fail)?;
                cores.push(c);
            }
            None => break,
        }
    }
    let mut functions = Vec::new();
    if pci {
        for slot in 0..cores.len() {
            let id = section_virtio_pci(slot);
            let (v, p) = file
                .require::<vireo_virtio::state::PciFunctionState>(&id)
                .map_err(fail)?;
            vireo_state::expect_version(&id, v, version).map_err(fail)?;
            functions.push(p);
        }
    }
    Ok((cores, functions))
}

/// A virtio-pci device's PCI function ([`vireo_virtio::state::PciFunctionState`]), beside its
/// `virtio.N` section; absent with virtio-mmio.
fn section_virtio_pci(slot: usize) -> SectionId {
    SectionId::Device(format!("virtio-pci.{slot}"))
}

/// Takes a snapshot of the VM into `dir` (which must not exist); a diff of `parent` (a
/// snapshot directory of this same VM, the last one taken) when given.
pub fn take(
    vm: &VmControl,
    spec: &VmSpec,
    disks: &[(String, DiskSource)],
    dir: &Path,
    parent: Option<&Path>,
) -> Result<Taken, Error> {
    let t0 = Instant::now();
    if dir.exists() {
        return Err(fail(format!(
            "{} exists: a snapshot is never overwritten",
            dir.display()
        )));
    }
    let partial = vireo_state::dir::partial(dir);
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial)
        .map_err(|e| fail(format!("cannot create {}: {e}", partial.display())))?;
    // A diff takes the pages the dirty log names when the log runs from the parent (it was
    // the last snapshot taken of this RAM, or the one it was restored from); otherwise it
    // compares every page with the parent's memory, mapped before the pause so that only
    // the comparison happens while the guest stands still.
    let log_base = match vm {
        VmControl::Emu { state, .. } => state.dirty_base(),
        VmControl::Kvm(c) => c.dirty_base(),
    };
    let verify = std::env::var_os(VERIFY_ENV).is_some();
    let parent = match parent {
        Some(p) => {
            let file = StateFile::read(p.join(STATE_FILE))
                .map_err(|e| fail(format!("the parent snapshot: {e}")))?;
            let id = file.header().id.clone();
            let by_log = log_base.as_ref() == Some(&id);
            let memory = if by_log && !verify {
                None
            } else {
                let chain = memory_chain(p, &file)?;
                Some(vireo_state::memory::restore_chain(&chain).map_err(fail)?)
            };
            Some(Parent {
                dir: absolute(p),
                id,
                memory,
            })
        }
        None => None,
    };
    let was_paused = vm.is_paused();
    if !was_paused {
        vm.pause().map_err(fail)?;
    }
    let paused_at = Instant::now();
    let r = write_all(vm, spec, disks, dir, &partial, parent.as_ref());
    if !was_paused {
        // Whatever happened, a VM that ran runs on.
        let _ = vm.resume();
    }
    let paused_ms = paused_at.elapsed().as_secs_f64() * 1e3;
    let mut taken = match r {
        Ok(t) => t,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, dir).map_err(|e| {
        let _ = std::fs::remove_dir_all(&partial);
        fail(format!(
            "cannot rename {} to {}: {e}",
            partial.display(),
            dir.display()
        ))
    })?;
    // Whole: the dirty log (taken while paused) now runs from this snapshot. After a
    // failure it runs from nothing known, and the next diff compares contents.
    match vm {
        VmControl::Emu { state, .. } => state.set_dirty_base(Some(taken.id.clone())),
        VmControl::Kvm(c) => c.set_dirty_base(Some(taken.id.clone())),
    }
    taken.paused_ms = paused_ms;
    taken.total_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(taken)
}

/// The snapshot a diff is taken on, and the memory it restores to (when the diff compares
/// contents).
struct Parent {
    dir: PathBuf,
    id: String,
    memory: Option<GuestRam>,
}

/// Set (to anything), a diff found by the dirty log is checked against a comparison of
/// contents, and the snapshot fails if the log missed a page that changed (tests set it).
pub const VERIFY_ENV: &str = "VIREO_SNAPSHOT_VERIFY_DIRTY";

/// Everything of [`take`] that happens while the VM is paused.
fn write_all(
    vm: &VmControl,
    spec: &VmSpec,
    disks: &[(String, DiskSource)],
    dir: &Path,
    partial: &Path,
    parent: Option<&Parent>,
) -> Result<Taken, Error> {
    let header = |accel, arch| match parent {
        Some(p) => Header::diff(accel, arch, p.id.clone()),
        None => Header::new(accel, arch),
    };
    let (mut file, mem, dirty, log_base) = match vm {
        VmControl::Emu { state, mem, .. } => {
            let emu = state.save().map_err(fail)?;
            // From here the log runs from this snapshot (made so once it is whole, in `take`).
            let (dirty, log_base) = state.take_dirty(mem).map_err(fail)?;
            let mut file = StateFile::new(header(Accel::Emu, Arch::Riscv64));
            file.put(SectionId::Machine, EMU_STATE_VERSION, &emu.machine)
                .map_err(fail)?;
            for (i, h) in emu.harts.iter().enumerate() {
                file.put(SectionId::Vcpu(i as u32), EMU_STATE_VERSION, h)
                    .map_err(fail)?;
            }
            put_virtio(&mut file, &emu.virtio, &emu.pci, EMU_STATE_VERSION)?;
            if let Some(id) = &emu.vmgenid {
                file.put(section_vmgenid(), 1, id).map_err(fail)?;
            }
            (file, mem, Some(dirty), log_base)
        }
        VmControl::Kvm(c) => {
            let kvm = c.save_state().map_err(fail)?;
            let devices = c.save_devices().map_err(fail)?;
            let mut file = StateFile::new(header(Accel::Kvm, Arch::X86_64));
            file.put(SectionId::Machine, KVM_SECTION_VERSION, &kvm.vm)
                .map_err(fail)?;
            for (i, v) in kvm.vcpus.iter().enumerate() {
                file.put(SectionId::Vcpu(i as u32), KVM_SECTION_VERSION, v)
                    .map_err(fail)?;
            }
            put_virtio(
                &mut file,
                &devices.virtio,
                &devices.pci,
                KVM_SECTION_VERSION,
            )?;
            file.put(section_uart(), KVM_SECTION_VERSION, &devices.uart)
                .map_err(fail)?;
            if let Some(id) = &devices.vmgenid {
                file.put(section_vmgenid(), 1, id).map_err(fail)?;
            }
            // KVM's log for the vCPUs' writes, vm-memory's for the devices'; the first
            // snapshot of a VM turns KVM's on.
            let (dirty, log_base) = c.take_dirty().map_err(fail)?;
            (file, c.guest_memory(), Some(dirty), log_base)
        }
    };

    // Memory: every non-zero page; or for a diff, the pages the dirty log names (every
    // writer marks it: vm-memory for devices, the harts for their stores), or, when the log
    // does not run from the parent, the pages that differ from what the parent restores to.
    let path = partial.join(MEMORY_FILE);
    let by_log = parent.is_some_and(|p| log_base.as_ref() == Some(&p.id));
    let map = match parent {
        Some(p) if by_log => {
            let dirty = dirty
                .as_ref()
                .ok_or_else(|| fail("a diff by the log without a log"))?;
            let set = vireo_state::memory::page_set_of(mem, dirty);
            if let Some(base) = &p.memory {
                verify_log(partial, mem, base, &set)?;
            }
            vireo_state::memory::write_memory(&path, mem, Some(&set))
        }
        Some(p) => {
            let base = p.memory.as_ref().ok_or_else(|| {
                fail("the dirty log changed base while the snapshot was being prepared")
            })?;
            tracing::info!(
                "diff snapshot by comparing contents: the dirty log does not run from {}",
                p.id
            );
            vireo_state::memory::write_memory_changed(&path, mem, base.memory())
        }
        None => vireo_state::memory::write_memory(&path, mem, None),
    }
    .map_err(fail)?;
    let memory_pages = match &map.diff {
        Some(set) => set.len(),
        None => count_data_pages(&partial.join(MEMORY_FILE)),
    };
    file.put(SectionId::MemoryMap, 1, &map).map_err(fail)?;

    // Disks: writable ones are copied (paused, nothing is in flight); read-only ones and the
    // bases the copies name are referenced with a fingerprint.
    let mut refs: Vec<DiskRef> = Vec::new();
    let mut disk_bytes = 0;
    for (id, d) in disks {
        if d.readonly {
            refs.push(disk_ref(id, &d.path, d.format, true)?);
            continue;
        }
        let name = vireo_state::dir::disk_copy_name(id, d.format);
        // From the device's own descriptor (a throwaway overlay has no name; a jail has no
        // /proc to open it again by): the device's I/O is positioned, so the moves of the
        // file position the copy makes do not disturb it.
        disk_bytes += vireo_state::disk::copy_sparse_from(&d.file, &d.path, partial.join(&name))
            .map_err(|e| fail(format!("disk {id}: {e}")))?;
        let final_path = dir.join(&name);
        let mut r = disk_ref(id, &partial.join(&name), d.format, false)?;
        r.path = final_path.to_string_lossy().into_owned();
        refs.push(r);
        // A copied overlay reads its base: that must not change either.
        for (i, (base, format)) in backing_chain(&partial.join(&name))?.into_iter().enumerate() {
            refs.push(disk_ref(&format!("{id}.base{i}"), &base, &format, true)?);
        }
    }
    file.put(SectionId::Disks, 1, &refs).map_err(fail)?;
    let spec_json = serde_json::to_string_pretty(spec).map_err(fail)?;
    file.put(SectionId::Spec, 1, &spec_json).map_err(fail)?;
    std::fs::write(partial.join(SPEC_FILE), &spec_json).map_err(|e| {
        fail(format!(
            "cannot write {}: {e}",
            partial.join(SPEC_FILE).display()
        ))
    })?;
    let meta = SnapshotMeta {
        parent_dir: parent.map(|p| p.dir.to_string_lossy().into_owned()),
    };
    file.put(section_meta(), META_VERSION, &meta)
        .map_err(fail)?;
    file.write_atomic(partial.join(STATE_FILE)).map_err(fail)?;
    let memory_bytes = allocated_bytes(&partial.join(MEMORY_FILE));
    Ok(Taken {
        id: file.header().id.clone(),
        dir: dir.to_path_buf(),
        kind: if parent.is_some() { "diff" } else { "full" },
        memory_pages,
        memory_bytes,
        disk_bytes,
        diff_by: parent.map(|_| if by_log { "dirty-log" } else { "contents" }),
        paused_ms: 0.0,
        total_ms: 0.0,
    })
}

/// [`VERIFY_ENV`]: every page that differs from the parent's memory must be in `logged`.
fn verify_log(
    partial: &Path,
    mem: &vireo_machine::GuestMemoryMmap,
    base: &GuestRam,
    logged: &vireo_state::memory::PageSet,
) -> Result<(), Error> {
    let scratch = partial.join("verify.bin");
    let changed = vireo_state::memory::write_memory_changed(&scratch, mem, base.memory())
        .map_err(fail)?
        .diff
        .unwrap_or_else(|| vireo_state::memory::PageSet::new(0));
    let _ = std::fs::remove_file(&scratch);
    let missed: Vec<u64> = changed.iter().filter(|&p| !logged.contains(p)).collect();
    if !missed.is_empty() {
        return Err(fail(format!(
            "the dirty log missed {} changed pages (page indexes {:?}...)",
            missed.len(),
            &missed[..missed.len().min(8)]
        )));
    }
    tracing::info!(
        "dirty log verified: {} pages logged, {} changed",
        logged.len(),
        changed.len()
    );
    Ok(())
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn disk_ref(id: &str, path: &Path, format: &str, read_only: bool) -> Result<DiskRef, Error> {
    let meta =
        std::fs::metadata(path).map_err(|e| fail(format!("disk {id}: {}: {e}", path.display())))?;
    Ok(DiskRef {
        id: id.to_string(),
        path: absolute(path).to_string_lossy().into_owned(),
        format: format.to_string(),
        read_only,
        size: meta.len(),
        fingerprint: vireo_state::disk::fingerprint(path).map_err(fail)?,
    })
}

/// The backing files below a qcow2 image with their formats, nearest first (none for raw).
fn backing_chain(path: &Path) -> Result<Vec<(PathBuf, String)>, Error> {
    let info = vireo_virtio::block::image::info(path)
        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let mut out = Vec::new();
    let mut below = info.backing;
    while let Some(b) = below {
        out.push((b.path.clone(), b.format.clone()));
        below = b.backing;
    }
    Ok(out)
}

fn allocated_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

fn count_data_pages(path: &Path) -> u64 {
    allocated_bytes(path) / 4096
}

/// The accelerator's part of a loaded snapshot.
pub enum MachineSnap {
    Emu(EmuState),
    Kvm {
        kvm: vireo_kvm::KvmState,
        devices: vireo_kvm::DevicesState,
    },
}

/// A snapshot read and checked, ready to restore.
pub struct Loaded {
    /// The snapshot's id: the restored RAM's dirty log runs from it.
    pub id: String,
    /// The MAC addresses the guest's NICs had (from the saved definition; empty when it
    /// cannot be read): a restore with others must make the guest bind its NICs again.
    pub macs: Vec<[u8; 6]>,
    pub state: MachineSnap,
    pub ram: GuestRam,
    /// How long reading, checking and mapping took.
    pub load_ms: f64,
}

/// Reads the snapshot in `dir` and everything it depends on (its parents' memory, its disks)
/// and maps its memory; an error names the file and what is wrong, and nothing has run.
/// `force` accepts disks changed since the snapshot.
/// `accel` is the accelerator the definition runs on: a snapshot of the other is refused.
pub fn load(dir: &Path, force: bool, accel: Accel) -> Result<Loaded, Error> {
    let t0 = Instant::now();
    let path = dir.join(STATE_FILE);
    if !path.exists() {
        return Err(fail(format!(
            "{}: no snapshot there (expected its state file {})",
            dir.display(),
            path.display()
        )));
    }
    let file = StateFile::read(&path).map_err(fail)?;
    let arch = match accel {
        Accel::Emu => Arch::Riscv64,
        Accel::Kvm => Arch::X86_64,
    };
    file.check_compatible(accel, arch)
        .map_err(|e| fail(format!("{}: {e}", path.display())))?;
    let state = match accel {
        Accel::Emu => MachineSnap::Emu(read_emu(&file)?),
        Accel::Kvm => read_kvm(&file)?,
    };
    let (_, mut refs) = file
        .require::<Vec<DiskRef>>(&SectionId::Disks)
        .map_err(fail)?;
    // The snapshot's own disk copies are wherever the snapshot is now: a directory may be
    // moved or copied whole, times kept (the path recorded is where it was taken).
    for r in refs.iter_mut() {
        let name = vireo_state::dir::disk_copy_name(&r.id, &r.format);
        if !r.read_only && Path::new(&r.path).file_name() == Some(name.as_ref()) {
            r.path = dir.join(&name).to_string_lossy().into_owned();
        }
    }
    for r in &refs {
        match vireo_state::disk::check_disk(r) {
            Ok(()) => {}
            Err(e @ vireo_state::StateError::DiskChanged { .. }) if force => {
                tracing::warn!("restoring anyway (forced): {e}");
            }
            Err(e) => {
                return Err(fail(format!(
                    "{e}{}",
                    if force {
                        ""
                    } else {
                        " (restore with --force to accept it)"
                    }
                )))
            }
        }
    }
    let chain = memory_chain(dir, &file)?;
    let ram = vireo_state::memory::restore_chain(&chain).map_err(fail)?;
    // What the restore wrote (a diff's pages) is the snapshot's, not the guest's.
    ram.clear_dirty();
    let macs = file
        .get::<String>(&SectionId::Spec)
        .ok()
        .flatten()
        .and_then(|(_, json)| serde_json::from_str::<VmSpec>(&json).ok())
        .and_then(|saved| crate::devices::nic_macs(&saved).ok())
        .unwrap_or_default();
    Ok(Loaded {
        id: file.header().id.clone(),
        macs,
        state,
        ram,
        load_ms: t0.elapsed().as_secs_f64() * 1e3,
    })
}

/// The emulator's sections of `file`.
fn read_emu(file: &StateFile) -> Result<EmuState, Error> {
    let (v, machine) = file
        .require::<MachineState>(&SectionId::Machine)
        .map_err(fail)?;
    vireo_state::expect_version(&SectionId::Machine, v, EMU_STATE_VERSION).map_err(fail)?;
    let mut harts = Vec::new();
    for i in 0..machine.harts {
        let id = SectionId::Vcpu(i);
        let (v, h) = file.require::<HartState>(&id).map_err(fail)?;
        vireo_state::expect_version(&id, v, EMU_STATE_VERSION).map_err(fail)?;
        harts.push(h);
    }
    let (virtio, pci) = read_virtio(file, machine.virtio_transport == "pci", EMU_STATE_VERSION)?;
    let vmgenid = read_vmgenid(file)?;
    Ok(EmuState {
        machine,
        harts,
        virtio,
        pci,
        vmgenid,
    })
}

/// The VM generation ID, if the snapshot has one.
fn read_vmgenid(file: &StateFile) -> Result<Option<[u8; 16]>, Error> {
    Ok(
        match file.get::<[u8; 16]>(&section_vmgenid()).map_err(fail)? {
            Some((v, id)) => {
                vireo_state::expect_version(&section_vmgenid(), v, 1).map_err(fail)?;
                Some(id)
            }
            None => None,
        },
    )
}

/// The kvm accelerator's sections of `file`.
fn read_kvm(file: &StateFile) -> Result<MachineSnap, Error> {
    let (v, vm) = file
        .require::<vireo_kvm::VmWideState>(&SectionId::Machine)
        .map_err(fail)?;
    vireo_state::expect_version(&SectionId::Machine, v, KVM_SECTION_VERSION).map_err(fail)?;
    let mut vcpus = Vec::new();
    for i in 0.. {
        let id = SectionId::Vcpu(i);
        match file.get::<vireo_kvm::VcpuState>(&id).map_err(fail)? {
            Some((v, c)) => {
                vireo_state::expect_version(&id, v, KVM_SECTION_VERSION).map_err(fail)?;
                vcpus.push(c);
            }
            None => break,
        }
    }
    if vcpus.is_empty() {
        return Err(fail(
            "the snapshot holds no vCPU (section vcpu 0 is missing)",
        ));
    }
    let (virtio, pci) = read_virtio(file, true, KVM_SECTION_VERSION)?;
    let (v, uart) = file
        .require::<vireo_devices::UartState>(&section_uart())
        .map_err(fail)?;
    vireo_state::expect_version(&section_uart(), v, KVM_SECTION_VERSION).map_err(fail)?;
    let vmgenid = read_vmgenid(file)?;
    Ok(MachineSnap::Kvm {
        kvm: vireo_kvm::KvmState {
            version: vireo_kvm::KVM_STATE_VERSION,
            vcpus,
            vm,
        },
        devices: vireo_kvm::DevicesState {
            uart,
            vmgenid,
            virtio,
            pci,
        },
    })
}

/// The memory files a restore of the snapshot in `dir` applies, full one first: its own and
/// its parents', each checked to be the snapshot its child was taken on.
fn memory_chain(dir: &Path, top: &StateFile) -> Result<Vec<(PathBuf, MemoryMap)>, Error> {
    let mut chain: Vec<(PathBuf, MemoryMap)> = Vec::new();
    let mut at = dir.to_path_buf();
    let mut parent_file: Option<StateFile> = None;
    loop {
        let file = parent_file.as_ref().unwrap_or(top);
        let (_, map) = file
            .require::<MemoryMap>(&SectionId::MemoryMap)
            .map_err(fail)?;
        chain.push((at.join(MEMORY_FILE), map));
        if file.header().kind == Kind::Full {
            break;
        }
        if chain.len() > 256 {
            return Err(fail("a chain of more than 256 diff snapshots"));
        }
        let (_, meta) = file
            .require::<SnapshotMeta>(&section_meta())
            .map_err(fail)?;
        let Some(parent) = meta.parent_dir else {
            return Err(fail(format!(
                "{}: a diff snapshot without its parent's directory",
                at.display()
            )));
        };
        let mut pdir = PathBuf::from(parent);
        // Moved together with its parent, a diff finds it beside itself under the same name.
        if !pdir.join(STATE_FILE).exists() {
            if let (Some(up), Some(name)) = (at.parent(), pdir.file_name()) {
                if up.join(name).join(STATE_FILE).exists() {
                    pdir = up.join(name);
                }
            }
        }
        let pf = StateFile::read(pdir.join(STATE_FILE))
            .map_err(|e| fail(format!("{}: its parent snapshot: {e}", at.display())))?;
        if Some(&pf.header().id) != file.header().parent.as_ref() {
            return Err(fail(format!(
                "{}: its parent {} is not the snapshot it was taken on (ids differ)",
                at.display(),
                pdir.display()
            )));
        }
        at = pdir;
        parent_file = Some(pf);
    }
    chain.reverse();
    Ok(chain)
}

/// Parses `--clock`.
pub fn clock_mode(s: &str) -> Result<ClockMode, Error> {
    match s {
        "pause" => Ok(ClockMode::Pause),
        "catch-up" => Ok(ClockMode::CatchUp),
        _ => Err(fail(
            "expected pause (the guest's time stands still while it is not running) or catch-up",
        )),
    }
}
