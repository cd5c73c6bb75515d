//! The RISC-V decoder on any 32-bit word and any halfword, with every extension and with none:
//! no panic, and the facts the executor relies on (length, disabled extensions illegal).
#![no_main]
use libfuzzer_sys::fuzz_target;
use vireo_riscv::decode::{decode16, decode32, insn_len, Kind};
use vireo_riscv::Isa;

fuzz_target!(|data: &[u8]| {
    for c in data.chunks_exact(4) {
        let w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let max = decode32(w, Isa::max());
        let base = decode32(w, Isa::BASE);
        assert_eq!(max.len(), 4);
        // Whatever the baseline decodes, the full ISA decodes the same way (extensions only
        // add encodings), PAUSE being the one hint that gets its own kind.
        if base.kind != Kind::Illegal && max.kind != Kind::Pause {
            assert_eq!(base, max, "{w:#010x}");
        }
        let h = w as u16;
        if insn_len(h) == 2 {
            assert_eq!(decode16(h).len(), 2);
        }
    }
});
