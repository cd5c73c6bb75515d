//! The `emu` accelerator: a RISC-V RV64GC full-system emulator with the optional extensions of
//! a current board (see [`isa`]).
//!
//! - [`decode`]: raw encodings to pre-decoded [`decode::Op`]s, cached per physical page.
//! - [`isa`]: which optional extensions a machine has (`--cpu`).
//! - [`hart`]: registers, CSRs, Sv39/Sv48 MMU with ASID-tagged software TLBs, traps, the
//!   executor; [`pmp`]: physical memory protection.
//! - [`sys`]: what harts share (RAM, bus, code cache, CLINT, PLIC outputs, mailboxes).
//! - [`plic`]: the interrupt controller; [`sbi`]: the built-in SBI firmware.
//! - [`board`]: the `virt` machine: memory map, device tree, loader and run loop.

pub mod board;
pub mod csr;
pub mod decode;
pub mod hart;
pub mod isa;
pub mod plic;
pub mod pmp;
pub mod sbi;
pub mod state;
pub mod sys;

pub use board::{EmuControl, EmuError, EmuStateHandle, EmuStats, EmuVm, Layout};
pub use isa::Isa;
pub use sys::Counters;
