//! The one error type of the state format.

use std::io;
use std::path::PathBuf;

use crate::file::{Accel, Arch};

/// Everything that can go wrong reading, writing or checking saved state. Every message names
/// the file (or section) it is about and what was expected, so it can be shown to a user as is.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file does not start with the state file's magic.
    #[error("{path}: not a vireo state file (it does not start with \"VIREOSTA\")")]
    NotAStateFile { path: PathBuf },
    /// The file was written by a newer vireo, in a format this one cannot read.
    #[error(
        "{path}: state format {found} is newer than this vireo reads ({supported}); upgrade vireo"
    )]
    NewerFormat {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    /// A section was written by a newer version of its device's code.
    #[error("section {section}: state version {found} is newer than this vireo reads ({supported}); upgrade vireo")]
    NewerSection {
        section: String,
        found: u16,
        supported: u16,
    },
    /// The file ends early: a record (or the whole file) is cut off at byte `at`.
    #[error("{path}: truncated at byte {at}: {what}")]
    Truncated {
        path: PathBuf,
        at: u64,
        what: String,
    },
    /// The file is damaged: a checksum does not match, a length or a value is impossible.
    #[error("{path}: corrupt record {record}: {reason}")]
    Corrupt {
        path: PathBuf,
        record: u64,
        reason: String,
    },
    /// The state was saved by the other accelerator.
    #[error("the state is for the {found} accelerator, not {expected}")]
    WrongAccelerator { found: Accel, expected: Accel },
    /// The state was saved for another guest architecture.
    #[error("the state is for a {found} guest, not {expected}")]
    WrongArch { found: Arch, expected: Arch },
    /// A section the restore needs is not in the file.
    #[error("{path}: no section {section} in the state file")]
    MissingSection { path: PathBuf, section: String },
    /// A payload did not decode as the type asked for.
    #[error("section {section}: cannot decode: {reason}")]
    Decode { section: String, reason: String },
    /// A value could not be encoded (a serde `Serialize` impl failed).
    #[error("section {section}: cannot encode: {reason}")]
    Encode { section: String, reason: String },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file the state refers to is not there.
    #[error("{path}: the {what} is missing")]
    MissingFile { path: PathBuf, what: String },
    /// A disk the state refers to was written or replaced since the state was saved.
    #[error("{path}: the disk changed since the state was saved (its fingerprint differs); restoring would corrupt it")]
    DiskChanged { path: PathBuf },
    /// A memory map does not fit the memory or file it is used with.
    #[error("memory map: {reason}")]
    MemoryMap { reason: String },
    /// The guest memory could not be mapped or accessed.
    #[error(transparent)]
    Memory(#[from] vireo_machine::MemoryError),
}

impl StateError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        StateError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Results of this crate.
pub type Result<T, E = StateError> = std::result::Result<T, E>;
