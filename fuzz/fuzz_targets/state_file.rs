//! The state file parser: any bytes as a `state.vst`, then every section decoded as the types
//! a restore asks for. A hostile or damaged file must give an error, never a panic, a hang or
//! an unbounded allocation.
//!
//! Input: the first byte picks the mode. Even: the rest is the file. Odd: the rest is a list of
//! records `kind: u8, len: u16 LE, payload`, which the target frames with correct checksums and
//! an End record, so the fuzzer gets past the checksums into the payload decoders (kind % 4:
//! header, section, End, an unknown tag).
#![no_main]
use libfuzzer_sys::fuzz_target;
use vireo_state::{DiskRef, MemoryMap, SectionId, StateFile};

fn record(out: &mut Vec<u8>, tag: &[u8; 4], payload: &[u8]) {
    out.extend_from_slice(tag);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn framed(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(b"VIREOSTA");
    out.extend_from_slice(&1u32.to_le_bytes());
    let mut records = 0u64;
    while data.len() >= 3 {
        let kind = data[0];
        let len = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
        let payload = &data[3..3 + len];
        data = &data[3 + len..];
        let tag = match kind % 4 {
            0 => b"HEAD",
            1 => b"SECT",
            2 => b"END\0",
            _ => b"XXXX",
        };
        record(&mut out, tag, payload);
        records += 1;
    }
    let mut end = records.to_le_bytes().to_vec();
    end.extend_from_slice(&crc32fast::hash(&out).to_le_bytes());
    record(&mut out, b"END\0", &end);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        framed(rest)
    };
    // The payload decoders alone, as a section holds them.
    if let Ok(map) = vireo_state::decode::<MemoryMap>(rest) {
        let _ = map.validate();
    }
    let _ = vireo_state::decode::<Vec<DiskRef>>(rest);
    let Ok(state) = StateFile::from_bytes(&bytes) else {
        return;
    };
    let _ = state.check_compatible(vireo_state::Accel::Emu, vireo_state::Arch::Riscv64);
    let ids: Vec<SectionId> = state.sections().cloned().collect();
    for id in &ids {
        let _ = state.get::<Vec<u8>>(id);
        let _ = state.get::<String>(id);
        let _ = state.get::<(u64, u32, bool)>(id);
    }
    if let Ok(Some((_, map))) = state.get::<MemoryMap>(&SectionId::MemoryMap) {
        if map.validate().is_ok() {
            let _ = map.total_pages();
        }
    }
    let _ = state.get::<Vec<DiskRef>>(&SectionId::Disks);
    // What this vireo writes, it reads back, with the same sections.
    let again = StateFile::from_bytes(&state.to_bytes()).expect("re-reading a written state");
    assert!(again.sections().eq(state.sections()));
    assert_eq!(again.header(), state.header());
});
