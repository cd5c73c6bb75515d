//! Where a thread that handles guest-controlled data enters its sandbox.
//!
//! The crates that start such threads (the emulator's and KVM's run loops, KVM's vCPUs, the
//! virtio devices' workers) call [`enter`] first thing on the new thread, with what kind of
//! thread it is; what entering means (a seccomp filter for that kind, in vireo's VMM) is set
//! once per process with [`set_hook`] by the program that owns the process. Without a hook
//! (unit tests, tools), entering does nothing. The device and CPU crates so stay free of any
//! policy, and every thread that reaches guest data has a place where policy binds it before
//! it does.

use std::sync::{mpsc, Mutex, OnceLock};
use std::thread::JoinHandle;

/// What a thread does, as far as what it may ask of the host goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ThreadKind {
    /// The emulator's run loop: every hart, and the device registers they reach.
    EmuHarts,
    /// The kvm accelerator's run loop: waits for the vCPUs' outcomes, kicks them.
    KvmWait,
    /// A KVM vCPU: KVM_RUN and the exits it handles (port and MMIO accesses of devices).
    Vcpu,
    /// A virtio device's worker: queues, and the host side (files, sockets) it serves them
    /// from.
    Device,
    /// The VMM's main thread once the machine is about to be built (after any jail and the
    /// spawner): it builds each boot's devices and machine and waits for the run. Every
    /// thread it starts from then on carries its filter too, beside its own.
    Main,
    /// The VMM's own threads that serve its sockets (control requests, snapshots among them;
    /// console clients) and relay the console, and every thread they start; in `vireo run`,
    /// the console's and the command's stream threads.
    Control,
}

type Hook = Box<dyn Fn(ThreadKind) + Send + Sync>;

static HOOK: OnceLock<Hook> = OnceLock::new();

/// Sets what [`enter`] does for the rest of the process; false if a hook was set already
/// (the first one stays).
pub fn set_hook(hook: impl Fn(ThreadKind) + Send + Sync + 'static) -> bool {
    HOOK.set(Box::new(hook)).is_ok()
}

type Job = Box<dyn FnOnce() + Send>;
type Request = (String, Job, mpsc::Sender<std::io::Result<JoinHandle<()>>>);

static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();

/// Starts the thread that [`spawn`] asks for new threads: call it from an unconfined thread
/// (the main thread, after any jail: the jail's fork keeps no other thread), before the guest
/// runs. The threads it starts begin with no filter of their creator's, so a confined thread
/// that starts a device worker (the guest's driver activates it from a vCPU) does not need
/// the worker's system calls in its own list.
pub fn start_spawner() -> std::io::Result<()> {
    if SPAWNER.get().is_some() {
        return Ok(());
    }
    let (tx, rx) = mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("vireo-spawner".into())
        .spawn(move || {
            for (name, job, reply) in rx {
                let _ = reply.send(std::thread::Builder::new().name(name).spawn(job));
            }
        })?;
    let _ = SPAWNER.set(Mutex::new(tx));
    Ok(())
}

/// Starts thread `name` running `body`: through the spawner when there is one, else here.
/// `body` should [`enter`] its own sandbox first.
pub fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> std::io::Result<JoinHandle<()>> {
    let Some(tx) = SPAWNER.get() else {
        return std::thread::Builder::new().name(name.into()).spawn(body);
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    let sent = tx.lock().unwrap_or_else(|p| p.into_inner()).send((
        name.to_string(),
        Box::new(body),
        reply_tx,
    ));
    if sent.is_err() {
        return Err(std::io::Error::other("the thread spawner is gone"));
    }
    reply_rx
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("the thread spawner is gone")))
}

/// Enters the calling thread into the sandbox of its `kind`. The hook does not return when it
/// cannot: a thread that should be confined never runs unconfined.
pub fn enter(kind: ThreadKind) {
    if let Some(h) = HOOK.get() {
        h(kind);
    }
}
