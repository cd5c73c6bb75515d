//! The state file (`state.vst`): a header, sections of serde values, an end record. The layout
//! is documented on the crate ([`crate`]).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Result, StateError};

/// The first eight bytes of every state file.
pub const MAGIC: [u8; 8] = *b"VIREOSTA";
/// The format version this vireo writes, and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
/// The longest record payload accepted (64 MiB). Guest memory is never in the state file, so a
/// real record is far smaller; the cap keeps a damaged length from meaning anything.
pub const MAX_RECORD_LEN: u64 = 64 << 20;
/// The most records (header and sections) a file may hold before its End record.
pub const MAX_RECORDS: u64 = 65_536;
/// The largest state file [`StateFile::read`] loads (1 GiB), checked before reading it.
pub const MAX_FILE_LEN: u64 = 1 << 30;

const TAG_HEADER: u32 = u32::from_le_bytes(*b"HEAD");
const TAG_SECTION: u32 = u32::from_le_bytes(*b"SECT");
const TAG_END: u32 = u32::from_le_bytes(*b"END\0");
/// tag (4) + len (8) + crc32 (4).
const RECORD_HEADER_LEN: u64 = 16;
/// records (8) + crc32 of everything before the End record (4).
const END_PAYLOAD_LEN: u64 = 12;

/// Which accelerator ran the machine. The state of one cannot be restored on the other: their
/// vCPU and interrupt-controller state differ in kind.
///
/// Like every enum of the format, its variants are encoded by position: append, never reorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Accel {
    /// The RISC-V emulator (`vireo-riscv`).
    Emu,
    /// x86-64 on KVM (`vireo-kvm`).
    Kvm,
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Accel::Emu => "emu",
            Accel::Kvm => "kvm",
        })
    }
}

/// The guest architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Arch {
    Riscv64,
    X86_64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::Riscv64 => "riscv64",
            Arch::X86_64 => "x86_64",
        })
    }
}

/// Whether the memory file holds all of RAM or only the pages written since the parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Full,
    Diff,
}

/// The first record of every state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The format the file is written in; equals the version after the magic.
    pub format_version: u32,
    /// The vireo that wrote the file (for people: compatibility goes by the format versions).
    pub vireo_version: String,
    pub accel: Accel,
    pub arch: Arch,
    /// This state's id: 128 random bits as 32 hex digits.
    pub id: String,
    /// The id of the state this one is a diff of (`kind` is `Diff`).
    pub parent: Option<String>,
    /// When the state was saved, milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    pub kind: Kind,
}

impl Header {
    /// A header for a full state of a machine on `accel`, with a new id and the current time.
    pub fn new(accel: Accel, arch: Arch) -> Self {
        Header {
            format_version: FORMAT_VERSION,
            vireo_version: env!("CARGO_PKG_VERSION").to_string(),
            accel,
            arch,
            id: crate::atomic::random_hex(16),
            parent: None,
            created_unix_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            kind: Kind::Full,
        }
    }

    /// A header for a diff on top of the state `parent_id`.
    pub fn diff(accel: Accel, arch: Arch, parent_id: impl Into<String>) -> Self {
        Header {
            parent: Some(parent_id.into()),
            kind: Kind::Diff,
            ..Header::new(accel, arch)
        }
    }
}

/// Which part of the machine a section holds.
///
/// Encoded by position, like every enum of the format: append variants, never reorder.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SectionId {
    /// Board-wide state: clocks, interrupt controllers.
    Machine,
    /// One vCPU (hart), by index.
    Vcpu(u32),
    /// One device, by a stable id such as `"virtio-blk:root"` or `"uart0"`.
    Device(String),
    /// The [`MemoryMap`](crate::memory::MemoryMap) of the memory file.
    MemoryMap,
    /// The disks, as [`DiskRef`](crate::disk::DiskRef)s.
    Disks,
    /// The VM definition (JSON text), so a restore needs nothing but the snapshot.
    Spec,
}

impl fmt::Display for SectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SectionId::Machine => f.write_str("machine"),
            SectionId::Vcpu(n) => write!(f, "vcpu {n}"),
            SectionId::Device(id) => write!(f, "device {id:?}"),
            SectionId::MemoryMap => f.write_str("memory map"),
            SectionId::Disks => f.write_str("disks"),
            SectionId::Spec => f.write_str("spec"),
        }
    }
}

/// Refuses a section written by newer device code: `got` is the section's version in the
/// file, `max` the newest this code reads. Versions up to `max` are the caller's to handle.
pub fn expect_version(id: &SectionId, got: u16, max: u16) -> Result<()> {
    if got > max {
        return Err(StateError::NewerSection {
            section: id.to_string(),
            found: got,
            supported: max,
        });
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct Section {
    id: SectionId,
    version: u16,
    data: Vec<u8>,
}

/// A machine's saved state: a [`Header`] and sections of serde values, each with its own
/// version. Built up with [`put`](Self::put) and written with
/// [`write_atomic`](Self::write_atomic), or read back with [`read`](Self::read).
#[derive(Debug, Clone)]
pub struct StateFile {
    header: Header,
    sections: Vec<Section>,
    /// Where each section is in `sections`.
    index: HashMap<SectionId, usize>,
    /// The file this was read from (or will be written to), for error messages.
    path: PathBuf,
}

impl StateFile {
    /// An empty state with this header.
    pub fn new(header: Header) -> Self {
        StateFile {
            header,
            sections: Vec::new(),
            index: HashMap::new(),
            path: PathBuf::from("(unsaved state)"),
        }
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file this state was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stores `value` as section `id` at `version`, replacing any earlier value of `id`.
    /// Sections are written in the order they were first put.
    pub fn put<T: Serialize + ?Sized>(
        &mut self,
        id: SectionId,
        version: u16,
        value: &T,
    ) -> Result<()> {
        let data = postcard::to_allocvec(value).map_err(|e| StateError::Encode {
            section: id.to_string(),
            reason: e.to_string(),
        })?;
        match self.index.get(&id) {
            Some(&i) => {
                self.sections[i].version = version;
                self.sections[i].data = data;
            }
            None => {
                self.index.insert(id.clone(), self.sections.len());
                self.sections.push(Section { id, version, data });
            }
        }
        Ok(())
    }

    fn section(&self, id: &SectionId) -> Option<&Section> {
        self.index.get(id).map(|&i| &self.sections[i])
    }

    /// Section `id` decoded as `T`, with its version; `None` when the file has no such section.
    pub fn get<T: DeserializeOwned>(&self, id: &SectionId) -> Result<Option<(u16, T)>> {
        let Some(s) = self.section(id) else {
            return Ok(None);
        };
        let value = crate::decode_as(&s.data, &format!("{id} of {}", self.path.display()))?;
        Ok(Some((s.version, value)))
    }

    /// Like [`get`](Self::get), for a section the restore cannot do without.
    pub fn require<T: DeserializeOwned>(&self, id: &SectionId) -> Result<(u16, T)> {
        self.get(id)?.ok_or_else(|| StateError::MissingSection {
            path: self.path.clone(),
            section: id.to_string(),
        })
    }

    /// The version section `id` was written at.
    pub fn version_of(&self, id: &SectionId) -> Option<u16> {
        self.sections
            .iter()
            .find(|s| &s.id == id)
            .map(|s| s.version)
    }

    /// The sections, in file order.
    pub fn sections(&self) -> impl Iterator<Item = &SectionId> + '_ {
        self.sections.iter().map(|s| &s.id)
    }

    /// Refuses a state saved for another accelerator or guest architecture.
    pub fn check_compatible(&self, accel: Accel, arch: Arch) -> Result<()> {
        if self.header.accel != accel {
            return Err(StateError::WrongAccelerator {
                found: self.header.accel,
                expected: accel,
            });
        }
        if self.header.arch != arch {
            return Err(StateError::WrongArch {
                found: self.header.arch,
                expected: arch,
            });
        }
        Ok(())
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.header.format_version.to_le_bytes());
        // A Header holds strings, integers and enums only: postcard cannot fail on it.
        let header = postcard::to_allocvec(&self.header).unwrap_or_default();
        push_record(&mut out, TAG_HEADER, &header);
        for s in &self.sections {
            let mut payload = postcard::to_allocvec(&(&s.id, s.version)).unwrap_or_default();
            payload.extend_from_slice(&s.data);
            push_record(&mut out, TAG_SECTION, &payload);
        }
        let records = 1 + self.sections.len() as u64;
        let mut end = Vec::with_capacity(END_PAYLOAD_LEN as usize);
        end.extend_from_slice(&records.to_le_bytes());
        end.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
        push_record(&mut out, TAG_END, &end);
        out
    }

    /// Writes the file whole or not at all (a temporary file in the same directory, synced,
    /// renamed over `path`, the directory synced).
    pub fn write_atomic(&self, path: impl AsRef<Path>) -> Result<()> {
        use std::io::Write;
        let bytes = self.to_bytes();
        crate::atomic::write_with(path.as_ref(), |mut f, tmp| {
            f.write_all(&bytes).map_err(|e| StateError::io(tmp, e))
        })
    }

    /// Reads and checks a state file: every record's checksum, the End record's count and
    /// checksum, and the format version.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StateError::MissingFile {
                path: path.to_path_buf(),
                what: "state file".into(),
            },
            _ => StateError::io(path, e),
        })?;
        let len = file.metadata().map_err(|e| StateError::io(path, e))?.len();
        if len > MAX_FILE_LEN {
            return Err(StateError::Corrupt {
                path: path.to_path_buf(),
                record: 0,
                reason: format!(
                    "the file is {len} bytes, more than a state file can be ({MAX_FILE_LEN})"
                ),
            });
        }
        let mut bytes = Vec::with_capacity(len as usize);
        use std::io::Read;
        file.take(MAX_FILE_LEN + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| StateError::io(path, e))?;
        parse(&bytes, path)
    }

    /// Parses a state file's bytes (errors name the file as "(bytes)").
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        parse(bytes, Path::new("(bytes)"))
    }
}

fn push_record(out: &mut Vec<u8>, tag: u32, payload: &[u8]) {
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn parse(bytes: &[u8], path: &Path) -> Result<StateFile> {
    let file_len = bytes.len() as u64;
    let truncated = |at: u64, what: String| StateError::Truncated {
        path: path.to_path_buf(),
        at,
        what,
    };
    let corrupt = |record: u64, reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        record,
        reason,
    };
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) {
            truncated(file_len, "inside the magic".into())
        } else {
            StateError::NotAStateFile {
                path: path.to_path_buf(),
            }
        });
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(StateError::NotAStateFile {
            path: path.to_path_buf(),
        });
    }
    if bytes.len() < 12 {
        return Err(truncated(file_len, "inside the format version".into()));
    }
    let version = le_u32(&bytes[8..12]);
    if version > FORMAT_VERSION {
        return Err(StateError::NewerFormat {
            path: path.to_path_buf(),
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    if version == 0 {
        return Err(corrupt(0, "format version 0 does not exist".into()));
    }

    let mut pos: u64 = 12;
    let mut header: Option<Header> = None;
    let mut sections: Vec<Section> = Vec::new();
    let mut ids: HashMap<SectionId, usize> = HashMap::new();
    for index in 0..=MAX_RECORDS {
        let start = pos;
        let avail = file_len - pos;
        if avail < RECORD_HEADER_LEN {
            return Err(truncated(
                file_len,
                format!("record {index} (no End record before the end of the file)"),
            ));
        }
        let at = pos as usize;
        let tag = le_u32(&bytes[at..]);
        let len = le_u64(&bytes[at + 4..]);
        let crc = le_u32(&bytes[at + 12..]);
        if len > MAX_RECORD_LEN {
            return Err(corrupt(
                index,
                format!("its length {len} is over the limit of {MAX_RECORD_LEN} bytes"),
            ));
        }
        if len > avail - RECORD_HEADER_LEN {
            return Err(truncated(
                file_len,
                format!(
                    "record {index} at byte {start} is {len} bytes, the file ends {} bytes into it",
                    avail - RECORD_HEADER_LEN
                ),
            ));
        }
        let payload = &bytes[at + RECORD_HEADER_LEN as usize..][..len as usize];
        pos += RECORD_HEADER_LEN + len;
        let computed = crc32fast::hash(payload);
        if computed != crc {
            return Err(corrupt(
                index,
                format!("checksum mismatch (stored {crc:#010x}, computed {computed:#010x})"),
            ));
        }
        if index == 0 && tag != TAG_HEADER {
            return Err(corrupt(
                index,
                format!("the first record must be the header, not tag {tag:#010x}"),
            ));
        }
        match tag {
            TAG_HEADER => {
                if index != 0 {
                    return Err(corrupt(index, "a second header".into()));
                }
                let h: Header = crate::decode_as(payload, "header")
                    .map_err(|e| corrupt(index, e.to_string()))?;
                if h.format_version != version {
                    return Err(corrupt(
                        index,
                        format!(
                            "the header says format {}, the file format {version}",
                            h.format_version
                        ),
                    ));
                }
                header = Some(h);
            }
            TAG_SECTION => {
                let ((id, version), data): ((SectionId, u16), _) =
                    postcard::take_from_bytes(payload)
                        .map_err(|e| corrupt(index, format!("section key: {e}")))?;
                if ids.insert(id.clone(), sections.len()).is_some() {
                    return Err(corrupt(index, format!("section {id} appears twice")));
                }
                sections.push(Section {
                    id,
                    version,
                    data: data.to_vec(),
                });
            }
            TAG_END => {
                if len != END_PAYLOAD_LEN {
                    return Err(corrupt(
                        index,
                        format!("the End record is {len} bytes, not {END_PAYLOAD_LEN}"),
                    ));
                }
                let count = le_u64(payload);
                let whole = le_u32(&payload[8..]);
                if count != index {
                    return Err(corrupt(
                        index,
                        format!("the End record counts {count} records, the file has {index}"),
                    ));
                }
                let computed = crc32fast::hash(&bytes[..start as usize]);
                if computed != whole {
                    return Err(corrupt(
                        index,
                        format!("whole-file checksum mismatch (stored {whole:#010x}, computed {computed:#010x})"),
                    ));
                }
                if pos != file_len {
                    return Err(corrupt(
                        index,
                        format!("{} bytes after the End record", file_len - pos),
                    ));
                }
                let header = header.ok_or_else(|| corrupt(0, "no header".into()))?;
                return Ok(StateFile {
                    header,
                    sections,
                    index: ids,
                    path: path.to_path_buf(),
                });
            }
            other => return Err(corrupt(index, format!("unknown record tag {other:#010x}"))),
        }
    }
    Err(corrupt(
        MAX_RECORDS,
        format!("more than {MAX_RECORDS} records without an End record"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Uart {
        ier: u8,
        lcr: u8,
        fifo: Vec<u8>,
    }

    fn header() -> Header {
        Header {
            id: "0123456789abcdef0123456789abcdef".into(),
            created_unix_ms: 1_700_000_000_000,
            ..Header::new(Accel::Emu, Arch::Riscv64)
        }
    }

    fn sample() -> StateFile {
        let mut s = StateFile::new(header());
        s.put(SectionId::Machine, 1, &(42u64, true)).unwrap();
        s.put(SectionId::Vcpu(0), 3, &vec![1u64, 2, 3]).unwrap();
        let uart = Uart {
            ier: 1,
            lcr: 3,
            fifo: b"hi".to_vec(),
        };
        s.put(SectionId::Device("uart0".into()), 2, &uart).unwrap();
        s.put(SectionId::Spec, 1, "{\"name\":\"web\"}").unwrap();
        s
    }

    fn parse_err(bytes: &[u8]) -> StateError {
        StateFile::from_bytes(bytes).expect_err("should not parse")
    }

    #[test]
    fn round_trip() {
        let s = sample();
        let bytes = s.to_bytes();
        assert_eq!(&bytes[..8], b"VIREOSTA");
        assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
        let r = StateFile::from_bytes(&bytes).unwrap();
        assert_eq!(r.header(), s.header());
        let ids: Vec<_> = r.sections().cloned().collect();
        assert_eq!(
            ids,
            [
                SectionId::Machine,
                SectionId::Vcpu(0),
                SectionId::Device("uart0".into()),
                SectionId::Spec
            ]
        );
        assert_eq!(
            r.require::<(u64, bool)>(&SectionId::Machine).unwrap(),
            (1, (42, true))
        );
        assert_eq!(
            r.require::<Vec<u64>>(&SectionId::Vcpu(0)).unwrap(),
            (3, vec![1, 2, 3])
        );
        let (v, uart) = r
            .require::<Uart>(&SectionId::Device("uart0".into()))
            .unwrap();
        assert_eq!((v, uart.fifo.as_slice()), (2, &b"hi"[..]));
        assert_eq!(
            r.get::<String>(&SectionId::Spec).unwrap().unwrap().1,
            "{\"name\":\"web\"}"
        );
        assert!(r.get::<u8>(&SectionId::Disks).unwrap().is_none());
        assert_eq!(r.version_of(&SectionId::Vcpu(0)), Some(3));
        // Writing what was read gives the same bytes.
        assert_eq!(r.to_bytes(), bytes);
    }

    #[test]
    fn put_replaces_and_keeps_order() {
        let mut s = sample();
        s.put(SectionId::Machine, 2, &7u32).unwrap();
        assert_eq!(s.sections().next(), Some(&SectionId::Machine));
        assert_eq!(s.require::<u32>(&SectionId::Machine).unwrap(), (2, 7));
        assert_eq!(s.sections().count(), 4);
    }

    #[test]
    fn write_atomic_and_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.vst");
        sample().write_atomic(&path).unwrap();
        // Overwriting is atomic too, and leaves no temporary file behind.
        sample().write_atomic(&path).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.vst"]);
        let r = StateFile::read(&path).unwrap();
        assert_eq!(r.path(), path);
        assert_eq!(r.header(), sample().header());
        let err = StateFile::read(dir.path().join("nope.vst")).unwrap_err();
        assert!(matches!(err, StateError::MissingFile { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("nope.vst: the state file is missing"),
            "{err}"
        );
        // A missing section names itself and the file.
        let err = r.require::<u8>(&SectionId::Vcpu(7)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("{}: no section vcpu 7 in the state file", path.display())
        );
    }

    #[test]
    fn header_defaults() {
        let h = Header::new(Accel::Kvm, Arch::X86_64);
        assert_eq!(h.format_version, FORMAT_VERSION);
        assert_eq!(h.vireo_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(h.id.len(), 32);
        assert!(h.id.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(h.id, Header::new(Accel::Kvm, Arch::X86_64).id);
        assert!(h.created_unix_ms > 1_600_000_000_000);
        let d = Header::diff(Accel::Kvm, Arch::X86_64, h.id.clone());
        assert_eq!(
            (d.kind, d.parent.as_deref()),
            (Kind::Diff, Some(h.id.as_str()))
        );
    }

    #[test]
    fn bad_magic() {
        let mut bytes = sample().to_bytes();
        bytes[0] = b'X';
        assert!(matches!(
            parse_err(&bytes),
            StateError::NotAStateFile { .. }
        ));
        assert!(matches!(
            parse_err(b"#!/bin/sh"),
            StateError::NotAStateFile { .. }
        ));
        assert!(matches!(
            parse_err(b"VIR0"),
            StateError::NotAStateFile { .. }
        ));
        let e = StateFile::from_bytes(b"hello, world").unwrap_err();
        assert_eq!(
            e.to_string(),
            "(bytes): not a vireo state file (it does not start with \"VIREOSTA\")"
        );
    }

    #[test]
    fn truncated_at_every_offset() {
        let bytes = sample().to_bytes();
        for n in 0..bytes.len() {
            match parse_err(&bytes[..n]) {
                StateError::Truncated { at, .. } => assert_eq!(at, n as u64),
                StateError::Corrupt { .. } => {}
                e => panic!("prefix of {n} bytes: {e}"),
            }
        }
    }

    #[test]
    fn flipped_byte_anywhere() {
        let bytes = sample().to_bytes();
        for i in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut b = bytes.clone();
                b[i] ^= bit;
                let e = parse_err(&b);
                let ok = match i {
                    0..8 => matches!(e, StateError::NotAStateFile { .. }),
                    8..12 => matches!(
                        e,
                        StateError::NewerFormat { .. } | StateError::Corrupt { .. }
                    ),
                    _ => matches!(e, StateError::Corrupt { .. } | StateError::Truncated { .. }),
                };
                assert!(ok, "byte {i} ^ {bit:#x}: {e}");
            }
        }
        // A flip inside a payload is a checksum mismatch of that record.
        let mut b = bytes.clone();
        let last = b.len() - 16 - 12 - 1; // the last byte of the last section
        b[last] ^= 0x40;
        let e = parse_err(&b);
        assert!(
            e.to_string()
                .contains("corrupt record 4: checksum mismatch"),
            "{e}"
        );
    }

    #[test]
    fn newer_format_is_refused_naming_both() {
        let mut h = header();
        h.format_version = 2;
        let e = parse_err(&StateFile::new(h).to_bytes());
        assert!(matches!(
            e,
            StateError::NewerFormat {
                found: 2,
                supported: 1,
                ..
            }
        ));
        assert_eq!(
            e.to_string(),
            "(bytes): state format 2 is newer than this vireo reads (1); upgrade vireo"
        );
        let mut bytes = sample().to_bytes();
        bytes[8..12].copy_from_slice(&0u32.to_le_bytes());
        assert!(parse_err(&bytes).to_string().contains("format version 0"));
    }

    #[test]
    fn header_and_file_versions_must_agree() {
        let bytes = sample().to_bytes();
        // A file that says version 1 around a header that says 0: rebuild the framing.
        let mut h = header();
        h.format_version = 0;
        let mut out = Vec::new();
        out.extend_from_slice(&bytes[..12]);
        push_record(&mut out, TAG_HEADER, &postcard::to_allocvec(&h).unwrap());
        let mut end = 1u64.to_le_bytes().to_vec();
        end.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
        push_record(&mut out, TAG_END, &end);
        assert!(parse_err(&out)
            .to_string()
            .contains("the header says format 0"));
    }

    #[test]
    fn wrong_accelerator_and_arch() {
        let s = sample();
        s.check_compatible(Accel::Emu, Arch::Riscv64).unwrap();
        let e = s.check_compatible(Accel::Kvm, Arch::X86_64).unwrap_err();
        assert!(matches!(
            e,
            StateError::WrongAccelerator {
                found: Accel::Emu,
                expected: Accel::Kvm
            }
        ));
        assert_eq!(
            e.to_string(),
            "the state is for the emu accelerator, not kvm"
        );
        let e = s.check_compatible(Accel::Emu, Arch::X86_64).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the state is for a riscv64 guest, not x86_64"
        );
    }

    #[test]
    fn trailing_garbage() {
        let mut bytes = sample().to_bytes();
        bytes.extend_from_slice(b"junk");
        let e = parse_err(&bytes);
        assert!(
            e.to_string().contains("4 bytes after the End record"),
            "{e}"
        );
    }

    fn framed(records: &[(u32, Vec<u8>)], end_count: Option<u64>) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&1u32.to_le_bytes());
        for (tag, p) in records {
            push_record(&mut out, *tag, p);
        }
        let mut end = end_count
            .unwrap_or(records.len() as u64)
            .to_le_bytes()
            .to_vec();
        end.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
        push_record(&mut out, TAG_END, &end);
        out
    }

    fn section(id: SectionId, v: u16, data: &[u8]) -> (u32, Vec<u8>) {
        let mut p = postcard::to_allocvec(&(id, v)).unwrap();
        p.extend_from_slice(data);
        (TAG_SECTION, p)
    }

    #[test]
    fn structural_errors() {
        let head = (TAG_HEADER, postcard::to_allocvec(&header()).unwrap());
        let e = |r: &[(u32, Vec<u8>)], c| parse_err(&framed(r, c)).to_string();
        assert!(e(&[], None).contains("the first record must be the header"));
        assert!(e(&[section(SectionId::Machine, 1, &[])], None).contains("must be the header"));
        assert!(e(&[head.clone(), head.clone()], None).contains("a second header"));
        let s = section(SectionId::Vcpu(1), 1, &[]);
        assert!(
            e(&[head.clone(), s.clone(), s.clone()], None).contains("section vcpu 1 appears twice")
        );
        assert!(
            e(&[head.clone(), (0x1234, vec![])], None).contains("unknown record tag 0x00001234")
        );
        assert!(
            e(std::slice::from_ref(&head), Some(5)).contains("counts 5 records, the file has 1")
        );
        assert!(e(&[head.clone(), (TAG_SECTION, vec![0xff; 3])], None).contains("section key"));
        let mut bad_header = head.1.clone();
        bad_header.push(0);
        assert!(e(&[(TAG_HEADER, bad_header)], None).contains("left over"));
        // The whole-file checksum is checked too: damage it and fix up the End record's own
        // checksum, so only the whole-file check can notice.
        let good = framed(std::slice::from_ref(&head), None);
        let mut b = good.clone();
        let n = b.len();
        b[n - 4] ^= 1;
        let crc = crc32fast::hash(&b[n - 12..]).to_le_bytes();
        b[n - 16..n - 12].copy_from_slice(&crc);
        assert!(parse_err(&b)
            .to_string()
            .contains("whole-file checksum mismatch"));
    }

    #[test]
    fn hostile_lengths_do_not_allocate() {
        for len in [u64::MAX, MAX_RECORD_LEN + 1, 1 << 40] {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend_from_slice(&TAG_HEADER.to_le_bytes());
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&[0; 4]);
            let e = parse_err(&b);
            assert!(e.to_string().contains("over the limit"), "{e}");
        }
        // Under the cap but past the end of the file: truncated, nothing allocated.
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&TAG_HEADER.to_le_bytes());
        b.extend_from_slice(&MAX_RECORD_LEN.to_le_bytes());
        b.extend_from_slice(&[0; 8]);
        let e = parse_err(&b);
        assert!(matches!(e, StateError::Truncated { at: 32, .. }), "{e}");
        // A section's value claiming a huge length decodes to an error, not an allocation.
        let mut s = StateFile::new(header());
        s.put(
            SectionId::Machine,
            1,
            &[0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f][..],
        )
        .unwrap();
        let r = StateFile::from_bytes(&s.to_bytes()).unwrap();
        assert!(r.get::<Vec<u64>>(&SectionId::Machine).is_err());
    }

    #[test]
    fn record_count_is_capped() {
        let mut records = vec![(TAG_HEADER, postcard::to_allocvec(&header()).unwrap())];
        for i in 0..MAX_RECORDS as u32 {
            records.push(section(SectionId::Vcpu(i), 1, &[]));
        }
        let e = parse_err(&framed(&records, None));
        assert!(e.to_string().contains("more than 65536 records"), "{e}");
        records.pop();
        assert_eq!(
            StateFile::from_bytes(&framed(&records, None))
                .unwrap()
                .sections()
                .count(),
            65_535
        );
    }

    #[test]
    fn decode_errors_name_the_section() {
        let s = sample();
        let e = s.get::<u32>(&SectionId::Machine).unwrap_err();
        assert!(matches!(e, StateError::Decode { .. }));
        assert!(
            e.to_string()
                .starts_with("section machine of (unsaved state): cannot decode"),
            "{e}"
        );
        assert!(e.to_string().contains("left over"), "{e}");
        let e = s.get::<Uart>(&SectionId::Vcpu(0)).unwrap_err();
        assert!(e.to_string().contains("vcpu 0"), "{e}");
        assert!(crate::decode::<u32>(&crate::encode(&(1u32, 2u32))).is_err());
        assert_eq!(
            crate::decode::<(u32, u32)>(&crate::encode(&(1u32, 2u32))).unwrap(),
            (1, 2)
        );
    }

    #[test]
    fn section_versions() {
        let id = SectionId::Device("virtio-blk:root".into());
        expect_version(&id, 1, 2).unwrap();
        expect_version(&id, 2, 2).unwrap();
        let e = expect_version(&id, 3, 2).unwrap_err();
        assert_eq!(
            e.to_string(),
            "section device \"virtio-blk:root\": state version 3 is newer than this vireo reads (2); upgrade vireo"
        );
    }

    #[test]
    fn oversized_file_is_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.vst");
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(MAX_FILE_LEN + 1).unwrap(); // sparse: no space used
        let e = StateFile::read(&path).unwrap_err();
        assert!(
            e.to_string().contains("more than a state file can be"),
            "{e}"
        );
    }
}
