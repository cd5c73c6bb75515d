//! Which ISA extensions the emulated hart implements, beyond RV64IMAFDC_Zicsr_Zifencei_Zicntr.
//!
//! One [`Isa`] per machine: the decoder turns encodings of a disabled extension into illegal
//! instructions, the CSR file hides its registers, and the device tree advertises exactly the
//! enabled set (`riscv,isa` and `riscv,isa-extensions`), so a guest sees the same CPU whichever
//! way it probes. `--cpu` selects it: `max` (everything below, the default), `rv64gc` (the 2019
//! baseline), either followed by `,+ext` / `,-ext` edits, as QEMU's `-cpu rv64,zbb=off`.

use std::fmt;

/// An optional extension. The discriminant is its bit in [`Isa`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Ext {
    Zba,
    Zbb,
    Zbc,
    Zbs,
    Zicond,
    Zihintpause,
    Zihintntl,
    Zicbom,
    Zicboz,
    Zicbop,
    Zfa,
    Zkr,
    Sstc,
    Svpbmt,
    Svinval,
    Svnapot,
    Svadu,
}

impl Ext {
    /// Every extension, in the canonical order of the ISA string (Z* by category letter, then
    /// S*), which is also the order the device tree lists them in.
    pub const ALL: [Ext; 17] = [
        Ext::Zicbom,
        Ext::Zicbop,
        Ext::Zicboz,
        Ext::Zicond,
        Ext::Zihintntl,
        Ext::Zihintpause,
        Ext::Zfa,
        Ext::Zba,
        Ext::Zbb,
        Ext::Zbc,
        Ext::Zbs,
        Ext::Zkr,
        Ext::Sstc,
        Ext::Svadu,
        Ext::Svinval,
        Ext::Svnapot,
        Ext::Svpbmt,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Ext::Zba => "zba",
            Ext::Zbb => "zbb",
            Ext::Zbc => "zbc",
            Ext::Zbs => "zbs",
            Ext::Zicond => "zicond",
            Ext::Zihintpause => "zihintpause",
            Ext::Zihintntl => "zihintntl",
            Ext::Zicbom => "zicbom",
            Ext::Zicboz => "zicboz",
            Ext::Zicbop => "zicbop",
            Ext::Zfa => "zfa",
            Ext::Zkr => "zkr",
            Ext::Sstc => "sstc",
            Ext::Svpbmt => "svpbmt",
            Ext::Svinval => "svinval",
            Ext::Svnapot => "svnapot",
            Ext::Svadu => "svadu",
        }
    }

    fn bit(self) -> u32 {
        1 << self as u8
    }
}

/// A set of enabled extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Isa(u32);

/// The cache-block size of Zicbom/Zicboz (the `riscv,cbom-block-size` and
/// `riscv,cboz-block-size` properties; 64 bytes, as QEMU and current cores).
pub const CACHE_BLOCK: u64 = 64;

impl Isa {
    /// RV64GC with nothing optional.
    pub const BASE: Isa = Isa(0);

    /// The extension bits, as a snapshot stores them.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// An ISA from [`Isa::bits`]; bits this build does not know are refused.
    pub fn from_bits(bits: u32) -> Option<Isa> {
        (bits & !Isa::max().0 == 0).then_some(Isa(bits))
    }

    /// Everything this emulator implements.
    pub fn max() -> Isa {
        Ext::ALL.iter().fold(Isa::BASE, |i, &e| i.with(e))
    }

    #[inline(always)]
    pub fn has(self, e: Ext) -> bool {
        self.0 & e.bit() != 0
    }

    pub fn with(self, e: Ext) -> Isa {
        Isa(self.0 | e.bit())
    }

    pub fn without(self, e: Ext) -> Isa {
        Isa(self.0 & !e.bit())
    }

    /// Parses a `--cpu` value: `max` or `rv64gc`, then comma-separated `+ext` / `-ext`.
    pub fn parse(s: &str) -> Result<Isa, String> {
        let mut parts = s.split(',').map(str::trim);
        let base = parts.next().unwrap_or_default();
        let mut isa = match base.to_ascii_lowercase().as_str() {
            "max" | "" => Isa::max(),
            "rv64gc" => Isa::BASE,
            other => {
                return Err(format!(
                    "unknown CPU model '{other}': expected max or rv64gc, optionally followed by \
                     ,+EXT or ,-EXT (extensions: {})",
                    Self::names()
                ))
            }
        };
        for p in parts {
            let (on, name) = match p.as_bytes().first() {
                Some(b'+') => (true, &p[1..]),
                Some(b'-') => (false, &p[1..]),
                _ => {
                    return Err(format!(
                        "invalid CPU feature '{p}': expected +EXT or -EXT (extensions: {})",
                        Self::names()
                    ))
                }
            };
            let lower = name.to_ascii_lowercase();
            let e = Ext::ALL
                .iter()
                .copied()
                .find(|e| e.name() == lower)
                .ok_or_else(|| {
                    format!(
                        "unknown extension '{name}' in CPU features: vireo implements {}",
                        Self::names()
                    )
                })?;
            isa = if on { isa.with(e) } else { isa.without(e) };
        }
        Ok(isa)
    }

    fn names() -> String {
        Ext::ALL.map(Ext::name).join(", ")
    }

    /// The device tree's `riscv,isa-extensions` list.
    pub fn dt_extensions(self) -> Vec<String> {
        let mut v: Vec<String> = ["i", "m", "a", "f", "d", "c", "zicntr", "zicsr", "zifencei"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(
            Ext::ALL
                .iter()
                .filter(|&&e| self.has(e))
                .map(|e| e.name().to_string()),
        );
        v
    }
}

impl Default for Isa {
    fn default() -> Self {
        Isa::max()
    }
}

/// The `riscv,isa` string: `rv64imafdc_zicntr_zicsr_zifencei_...`.
impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rv64imafdc")?;
        // Canonical order puts zicntr/zicsr/zifencei among the other Zi* names.
        let mut names: Vec<&str> = vec!["zicntr", "zicsr", "zifencei"];
        names.extend(Ext::ALL.iter().filter(|&&e| self.has(e)).map(|e| e.name()));
        fn rank(n: &str) -> (u8, &str) {
            let cat = match n.as_bytes().get(1) {
                Some(b'i') if n.starts_with('z') => 0,
                Some(b'f') if n.starts_with('z') => 1,
                Some(b'b') if n.starts_with('z') => 2,
                Some(b'k') if n.starts_with('z') => 3,
                _ if n.starts_with('z') => 4,
                _ => 5,
            };
            (cat, n)
        }
        names.sort_by(|a, b| rank(a).cmp(&rank(b)));
        for n in names {
            write!(f, "_{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_models_and_edits() {
        assert_eq!(Isa::parse("max").unwrap(), Isa::max());
        assert_eq!(Isa::parse("rv64gc").unwrap(), Isa::BASE);
        let i = Isa::parse("max,-sstc,-Zbb").unwrap();
        assert!(!i.has(Ext::Sstc) && !i.has(Ext::Zbb) && i.has(Ext::Zba));
        let i = Isa::parse("rv64gc,+zba").unwrap();
        assert_eq!(i, Isa::BASE.with(Ext::Zba));
        let e = Isa::parse("rv64gc,+zzz").unwrap_err();
        assert!(e.contains("'zzz'") && e.contains("zba"), "{e}");
        assert!(Isa::parse("rv32")
            .unwrap_err()
            .contains("unknown CPU model"));
        assert!(Isa::parse("max,zba").unwrap_err().contains("+EXT"));
    }

    #[test]
    fn isa_string_is_canonical() {
        assert_eq!(Isa::BASE.to_string(), "rv64imafdc_zicntr_zicsr_zifencei");
        assert_eq!(
            Isa::max().to_string(),
            "rv64imafdc_zicbom_zicbop_zicboz_zicntr_zicond_zicsr_zifencei_zihintntl_\
             zihintpause_zfa_zba_zbb_zbc_zbs_zkr_sstc_svadu_svinval_svnapot_svpbmt"
        );
    }
}
