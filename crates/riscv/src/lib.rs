//! The `emu` accelerator: a RISC-V RV64GC full-system emulator.
//!
//! - [`decode`]: raw encodings to pre-decoded [`decode::Op`]s, cached per physical page.
//! - [`hart`]: registers, CSRs, Sv39/Sv48 MMU with software TLBs, traps, the executor.
//! - [`sys`]: what harts share (RAM, bus, code cache, CLINT, PLIC outputs, mailboxes).
//! - [`plic`]: the interrupt controller; [`sbi`]: the built-in SBI firmware.
//! - [`board`]: the `virt` machine: memory map, device tree, loader and run loop.

pub mod board;
pub mod csr;
pub mod decode;
pub mod hart;
pub mod plic;
pub mod sbi;
pub mod sys;

pub use board::{EmuError, EmuVm, Layout};
