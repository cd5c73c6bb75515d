//! vireo's one versioned state format, for pause, snapshot, restore, clone and migration, on
//! both accelerators (`emu`, the RISC-V emulator; `kvm`, x86-64).
//!
//! A saved machine is a directory of up to three kinds of file:
//!
//! - `state.vst`, the **state file** ([`StateFile`]): a header and one section per part of the
//!   machine (board, each vCPU, each device, the memory map, the disks, the VM definition).
//!   The device and vCPU code owns the serde types inside the sections; this crate frames them.
//! - `memory.bin`, the **memory file** ([`memory`]): guest RAM, page-aligned and sparse.
//! - the disks, **by reference** ([`disk::DiskRef`]): path, format and a fingerprint, checked
//!   before a restore; a writable disk can be frozen into the snapshot with
//!   [`disk::copy_sparse`].
//!
//! # The state file
//!
//! All integers are little-endian; widths are fixed as written.
//!
//! ```text
//! offset  size  field
//! 0       8     magic: "VIREOSTA"
//! 8       4     format_version: u32 (this vireo writes and reads up to 1)
//! 12      ...   records, each:
//!                 tag     u32   "HEAD" (0x44414548), "SECT" (0x54434553) or "END\0" (0x00444e45)
//!                 len     u64   payload bytes, at most 64 MiB
//!                 crc32   u32   CRC-32 (IEEE, as crc32fast computes it) of the payload
//!                 payload len bytes
//! ```
//!
//! The first record is the header (`HEAD`), then any number of sections (`SECT`), then the
//! `END` record, whose 12-byte payload is `records: u64` (how many records precede it,
//! the header included) and `crc32: u32` of every byte of the file before the `END` record.
//! The file ends there: bytes after it are an error. So a truncated file (no `END`, or a
//! record cut short) is reported as truncated, a damaged one as corrupt, and no single-byte
//! change goes unnoticed. At most 65 536 records are read; a record longer than the file, or
//! than 64 MiB, is refused before anything is allocated for it, and [`StateFile::read`] refuses
//! a file over 1 GiB before reading it.
//!
//! Payloads are serde values in [postcard]'s wire format, which is specified and stable
//! (version 1): `u8`/`i8` and `bool` as one byte, wider integers and lengths as varints
//! (LEB128, little-endian groups of 7 bits; zigzag for signed), floats as little-endian IEEE
//! bytes, strings and byte sequences as a length then the bytes, enums as a varint variant
//! index then the variant's fields, structs and tuples as their fields in order without names
//! or lengths, `Option` as a 0/1 byte then the value. No field is self-describing, so the field order of a format type *is* the
//! format: a type changes only with a new version (below). The format types hold no host
//! pointers and no `usize`: every width is explicit.
//!
//! - `HEAD`: a [`Header`] (format version again, vireo version, accelerator, architecture,
//!   id, parent id for a diff, creation time, full or diff).
//! - `SECT`: the postcard encoding of the section's key `(SectionId, version: u16)`, followed
//!   directly by the section's own postcard value. Each section is versioned on its own, so a
//!   device evolves its state without a new file format.
//!
//! [`encode`] and [`decode`] are that encoding; [`decode`] refuses trailing bytes.
//!
//! # Versioning
//!
//! - A vireo reads every `format_version` up to its own ([`FORMAT_VERSION`]; there is only 1
//!   so far) and refuses a newer one, naming both ("state format 2 is newer than this vireo
//!   reads (1); upgrade vireo"). A change to the framing or to [`Header`] needs a new format
//!   version, and the reader for every older one stays.
//! - Each section's `version` belongs to the code that writes it: that code reads every
//!   version up to its own and refuses a newer one with [`expect_version`]. A change to a
//!   section's type bumps that section's version only.
//! - Enum variants of the format types are encoded by position: new variants are appended,
//!   never inserted or reordered.
//! - `tests/fixtures/v1-synthetic.vst` is a file of format 1, checked in: every later vireo
//!   must keep reading it.
//!
//! # The memory file
//!
//! Guest RAM in its own file, described by the [`MemoryMap`] section: each RAM region at a
//! page-aligned offset, all-zero pages left as holes (so the file takes the space of the RAM
//! the guest used), restored by mapping it copy-on-write ([`map_memory`]). A diff holds only
//! the pages of a [`PageSet`]: the pages that differ from what the parent restores to
//! ([`write_memory_changed`]), or any set the caller knows was written; it is applied on top
//! of its parent ([`restore_chain`]).

mod atomic;
pub mod dir;
pub mod disk;
mod error;
pub mod file;
pub mod memory;

pub use disk::{check_disk, copy_sparse, fingerprint, DiskRef};
pub use error::{Result, StateError};
pub use file::{
    expect_version, Accel, Arch, Header, Kind, SectionId, StateFile, FORMAT_VERSION, MAGIC,
    MAX_FILE_LEN, MAX_RECORDS, MAX_RECORD_LEN,
};
pub use memory::{
    apply_diff, map_memory, restore_chain, write_memory, write_memory_changed, MemoryMap,
    MemoryRegion, PageSet,
};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The postcard encoding of `value`.
///
/// # Panics
///
/// Only if `value`'s `Serialize` impl fails: a hand-written impl returning an error, or a
/// sequence of unknown length (postcard writes lengths first). Derived impls over the usual
/// types never do. [`StateFile::put`] reports that case as an error instead.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    postcard::to_allocvec(value)
        .expect("postcard cannot encode this value (its Serialize impl failed)")
}

/// Decodes a postcard value, refusing bytes left over after it.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    decode_as(bytes, "value")
}

pub(crate) fn decode_as<T: DeserializeOwned>(bytes: &[u8], section: &str) -> Result<T> {
    let err = |reason: String| StateError::Decode {
        section: section.to_string(),
        reason,
    };
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| err(e.to_string()))?;
    if !rest.is_empty() {
        return Err(err(format!(
            "{} bytes left over after the value",
            rest.len()
        )));
    }
    Ok(value)
}
