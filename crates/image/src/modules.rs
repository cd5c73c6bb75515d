//! Kernel modules: reading `.modinfo` from module ELF files, finding modules in an
//! extracted kernel package, and ordering them so dependencies load first.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::ImageError;

/// What the initramfs needs from a module's `.modinfo` section.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ModInfo {
    pub name: Option<String>,
    pub depends: Vec<String>,
    /// Modules named in `softdep=pre: ...`: the module works better (or at all) with
    /// them loaded first, but nothing links against them.
    pub softdep_pre: Vec<String>,
    pub aliases: Vec<String>,
}

/// Module names treat `-` and `_` alike; the kernel and modprobe normalise to `_`.
pub(crate) fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

pub(crate) fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    // Entries are NUL-terminated and may be separated by extra NULs for alignment.
    for entry in section.split(|&b| b == 0).filter(|e| !e.is_empty()) {
        let entry = String::from_utf8_lossy(entry);
        let Some((key, value)) = entry.split_once('=') else {
            continue;
        };
        match key {
            "name" => info.name = Some(normalize_name(value)),
            "depends" => info.depends.extend(
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|d| !d.is_empty())
                    .map(normalize_name),
            ),
            "softdep" => {
                let mut in_pre = false;
                for word in value.split_whitespace() {
                    match word {
                        "pre:" => in_pre = true,
                        "post:" => in_pre = false,
                        _ if in_pre => info.softdep_pre.push(word.to_string()),
                        _ => {}
                    }
                }
            }
            "alias" => info.aliases.push(value.to_string()),
            _ => {}
        }
    }
    info
}

/// Returns the bytes of the `.modinfo` section of an ELF object (32 or 64 bit, either
/// byte order), or why it cannot be found.
pub(crate) fn modinfo_section(elf: &[u8]) -> Result<&[u8], String> {
    if elf.len() < 0x34 || &elf[..4] != b"\x7fELF" {
        return Err("expected an ELF file (magic \\x7fELF)".into());
    }
    let is64 = match elf[4] {
        1 => false,
        2 => true,
        c => return Err(format!("expected ELF class 1 or 2, found {c}")),
    };
    let le = match elf[5] {
        1 => true,
        2 => false,
        d => return Err(format!("expected ELF data encoding 1 or 2, found {d}")),
    };
    let rd = Reader { buf: elf, le };
    let (shoff, shentsize, shnum, shstrndx) = if is64 {
        (rd.u64(0x28)?, rd.u16(0x3a)?, rd.u16(0x3c)?, rd.u16(0x3e)?)
    } else {
        (
            u64::from(rd.u32(0x20)?),
            rd.u16(0x2e)?,
            rd.u16(0x30)?,
            rd.u16(0x32)?,
        )
    };
    let min_entsize = if is64 { 0x40 } else { 0x28 };
    if shoff == 0 || u64::from(shentsize) < min_entsize {
        return Err("expected a section header table".into());
    }
    let header = |i: u64| -> Result<Section, String> {
        let base = i
            .checked_mul(u64::from(shentsize))
            .and_then(|o| o.checked_add(shoff))
            .ok_or("section header offset overflows")?;
        if is64 {
            Ok(Section {
                name: rd.u32(base)?,
                kind: rd.u32(base + 4)?,
                offset: rd.u64(base + 0x18)?,
                size: rd.u64(base + 0x20)?,
                link: rd.u32(base + 0x28)?,
            })
        } else {
            Ok(Section {
                name: rd.u32(base)?,
                kind: rd.u32(base + 4)?,
                offset: u64::from(rd.u32(base + 0x10)?),
                size: u64::from(rd.u32(base + 0x14)?),
                link: rd.u32(base + 0x18)?,
            })
        }
    };
    // Objects with very many sections keep the real counts in section 0.
    let count = if shnum == 0 {
        header(0)?.size
    } else {
        u64::from(shnum)
    };
    let strndx = if shstrndx == 0xffff {
        u64::from(header(0)?.link)
    } else {
        u64::from(shstrndx)
    };
    if strndx >= count {
        return Err("section name table index is out of range".into());
    }
    let names = rd.slice(header(strndx)?)?;
    for i in 0..count {
        let sec = header(i)?;
        let start = usize::try_from(sec.name).map_err(|_| "bad section name offset")?;
        let name = names
            .get(start..)
            .and_then(|n| n.split(|&b| b == 0).next())
            .ok_or("section name offset is out of range")?;
        if name == b".modinfo" {
            return rd.slice(sec);
        }
    }
    Err("expected a .modinfo section, found none".into())
}

struct Section {
    name: u32,
    kind: u32,
    offset: u64,
    size: u64,
    link: u32,
}

struct Reader<'a> {
    buf: &'a [u8],
    le: bool,
}

impl<'a> Reader<'a> {
    fn bytes<const N: usize>(&self, off: u64) -> Result<[u8; N], String> {
        usize::try_from(off)
            .ok()
            .and_then(|o| self.buf.get(o..o.checked_add(N)?))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| format!("ELF header field at {off:#x} lies beyond the end of the file"))
    }
    fn u16(&self, off: u64) -> Result<u16, String> {
        let b = self.bytes(off)?;
        Ok(if self.le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        })
    }
    fn u32(&self, off: u64) -> Result<u32, String> {
        let b = self.bytes(off)?;
        Ok(if self.le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        })
    }
    fn u64(&self, off: u64) -> Result<u64, String> {
        let b = self.bytes(off)?;
        Ok(if self.le {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }
    fn slice(&self, sec: Section) -> Result<&'a [u8], String> {
        const SHT_NOBITS: u32 = 8;
        if sec.kind == SHT_NOBITS {
            return Ok(&[]);
        }
        usize::try_from(sec.offset)
            .ok()
            .zip(usize::try_from(sec.size).ok())
            .and_then(|(o, s)| self.buf.get(o..o.checked_add(s)?))
            .ok_or_else(|| "a section lies beyond the end of the file".to_string())
    }
}

/// Orders `roots` and everything they (transitively) need so that each name comes after
/// its dependencies. A dependency cycle cannot be satisfied by any order; the edge that
/// closes it is dropped so the walk still ends.
pub(crate) fn load_order<F>(roots: &[String], mut deps_of: F) -> Result<Vec<String>, ImageError>
where
    F: FnMut(&str) -> Result<Vec<String>, ImageError>,
{
    let mut done: HashSet<String> = HashSet::new();
    let mut active: HashSet<String> = HashSet::new();
    let mut order = Vec::new();
    // An explicit stack because dependency chains come from files we do not control.
    let mut stack: Vec<(String, Vec<String>, usize)> = Vec::new();
    for root in roots {
        if done.contains(root) {
            continue;
        }
        active.insert(root.clone());
        stack.push((root.clone(), deps_of(root)?, 0));
        while let Some((_, deps, next)) = stack.last_mut() {
            if let Some(dep) = deps.get(*next).cloned() {
                *next += 1;
                if done.contains(&dep) || active.contains(&dep) {
                    continue;
                }
                let dep_deps = deps_of(&dep)?;
                active.insert(dep.clone());
                stack.push((dep, dep_deps, 0));
            } else if let Some((name, _, _)) = stack.pop() {
                active.remove(&name);
                done.insert(name.clone());
                order.push(name);
            }
        }
    }
    Ok(order)
}

/// One loadable module found in the kernel package.
#[derive(Debug)]
struct ModuleFile {
    /// Path below the modules directory, as shipped (possibly compressed).
    shipped: PathBuf,
}

/// The modules directory of an extracted kernel package (`.../modules/<version>`).
pub(crate) struct ModuleTree {
    dir: PathBuf,
    files: BTreeMap<String, ModuleFile>,
    builtin: HashSet<String>,
    has_builtin_list: bool,
    loaded: HashMap<String, (Vec<u8>, ModInfo)>,
}

/// A module as it goes into the initramfs: uncompressed, with its path below the
/// modules directory.
#[derive(Debug)]
pub(crate) struct Module {
    pub name: String,
    pub rel_path: String,
    pub data: Vec<u8>,
    pub info: ModInfo,
}

impl ModuleTree {
    pub fn open(dir: &Path) -> Result<Self, ImageError> {
        let mut files = BTreeMap::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            let entries = std::fs::read_dir(&d).map_err(|e| ImageError::io("read", &d, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| ImageError::io("read", &d, e))?;
                let path = entry.path();
                let kind = entry
                    .file_type()
                    .map_err(|e| ImageError::io("inspect", &path, e))?;
                // `build` and `source` are symlinks into headers packages; not modules.
                if kind.is_dir() {
                    pending.push(path);
                    continue;
                }
                let fname = entry.file_name().to_string_lossy().into_owned();
                let Some((stem, _)) = split_module_name(&fname) else {
                    continue;
                };
                let rel = path.strip_prefix(dir).unwrap_or(&path).to_path_buf();
                files
                    .entry(normalize_name(stem))
                    .or_insert(ModuleFile { shipped: rel });
            }
        }
        let builtin_path = dir.join("modules.builtin");
        let (builtin, has_builtin_list) = match std::fs::read_to_string(&builtin_path) {
            Ok(text) => (
                text.lines()
                    .filter_map(|l| l.rsplit('/').next())
                    .filter_map(split_module_name)
                    .map(|(stem, _)| normalize_name(stem))
                    .collect(),
                true,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (HashSet::new(), false),
            Err(e) => return Err(ImageError::io("read", builtin_path, e)),
        };
        Ok(ModuleTree {
            dir: dir.to_path_buf(),
            files,
            builtin,
            has_builtin_list,
            loaded: HashMap::new(),
        })
    }

    #[cfg(test)]
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_name(name))
    }

    #[cfg(test)]
    pub fn has_module(&self, name: &str) -> bool {
        self.files.contains_key(&normalize_name(name))
    }

    /// Every module needed for `roots`, dependencies first. Roots built into the kernel
    /// are skipped; so are roots absent altogether when the package ships no
    /// modules.builtin to tell "built in" from "missing".
    pub fn resolve(&mut self, roots: &[&str]) -> Result<Vec<String>, ImageError> {
        let mut wanted = Vec::new();
        for root in roots {
            let name = normalize_name(root);
            if self.files.contains_key(&name) {
                wanted.push(name);
            } else if self.has_builtin_list && !self.builtin.contains(&name) {
                return Err(ImageError::ModuleNotFound {
                    name,
                    needed_by: "the vireo initramfs".into(),
                });
            }
        }
        load_order(&wanted, |name| self.deps(name))
    }

    /// Decompressed contents and metadata of a module found by [`ModuleTree::resolve`].
    pub fn module(&mut self, name: &str) -> Result<Module, ImageError> {
        self.load(name)?;
        let rel_path = self.rel_path(name)?;
        let (data, info) = self.loaded.get(name).cloned().unwrap_or_default();
        Ok(Module {
            name: name.to_string(),
            rel_path,
            data,
            info,
        })
    }

    fn rel_path(&self, name: &str) -> Result<String, ImageError> {
        let file = self.file(name, "the vireo initramfs")?;
        let rel = file.shipped.to_string_lossy();
        let base = split_module_name(&rel).map_or(rel.as_ref(), |(stem, _)| stem);
        Ok(format!("{base}.ko"))
    }

    fn file(&self, name: &str, needed_by: &str) -> Result<&ModuleFile, ImageError> {
        self.files
            .get(name)
            .ok_or_else(|| ImageError::ModuleNotFound {
                name: name.to_string(),
                needed_by: needed_by.to_string(),
            })
    }

    fn load(&mut self, name: &str) -> Result<&ModInfo, ImageError> {
        if !self.loaded.contains_key(name) {
            let path = self
                .dir
                .join(&self.file(name, "the vireo initramfs")?.shipped);
            let data = strip_signature(decompress(&path)?);
            let info =
                parse_modinfo(
                    modinfo_section(&data).map_err(|reason| ImageError::BadModule {
                        path: path.clone(),
                        reason,
                    })?,
                );
            self.loaded.insert(name.to_string(), (data, info));
        }
        Ok(&self.loaded[name].1)
    }

    fn deps(&mut self, name: &str) -> Result<Vec<String>, ImageError> {
        let info = self.load(name)?.clone();
        let mut out = Vec::new();
        for dep in &info.depends {
            if self.files.contains_key(dep) {
                out.push(dep.clone());
            } else if !self.builtin.contains(dep) {
                self.file(dep, name)?;
            }
        }
        for soft in &info.softdep_pre {
            out.extend(self.soft_candidates(soft)?);
        }
        Ok(out)
    }

    /// Modules that satisfy a soft dependency, which may be a module name or an alias
    /// such as `crypto-crc32c`. Reading every module's aliases would mean decompressing
    /// the whole package, so only modules whose name starts with the alias's subject are
    /// examined; a soft dependency nobody provides is simply left out.
    fn soft_candidates(&mut self, target: &str) -> Result<Vec<String>, ImageError> {
        let name = normalize_name(target);
        if self.files.contains_key(&name) {
            return Ok(vec![name]);
        }
        if self.builtin.contains(&name) {
            return Ok(Vec::new());
        }
        let subject = name.strip_prefix("crypto_").unwrap_or(&name).to_string();
        let prefix = format!("{subject}_");
        let candidates: Vec<String> = self
            .files
            .keys()
            .filter(|k| **k == subject || k.starts_with(&prefix))
            .cloned()
            .collect();
        let mut out = Vec::new();
        for cand in candidates {
            if self.load(&cand)?.aliases.iter().any(|a| a == target) {
                out.push(cand);
            }
        }
        Ok(out)
    }
}

const SIGNATURE_MARKER: &[u8] = b"~Module signature appended~\n";

/// Removes a module's appended signature.
///
/// apt has already verified the packages the modules came from (signed Release file, hashed
/// package), and on an emulated CPU the kernel's own check is costly: hashing ext4.ko alone
/// (7 MB on riscv64, which keeps the local symbols its relocations need) takes over a billion
/// guest instructions, every boot. The kernel loads unsigned modules when signatures are not
/// enforced (Debian's MODULE_SIG_FORCE is off), noting a taint in its log. A module without a
/// well-formed signature block is returned unchanged.
pub(crate) fn strip_signature(mut data: Vec<u8>) -> Vec<u8> {
    // Layout: module | signature | struct module_signature (12 bytes, sig_len big-endian in
    // its last 4) | marker.
    let Some(body) = data.len().checked_sub(SIGNATURE_MARKER.len() + 12) else {
        return data;
    };
    if !data.ends_with(SIGNATURE_MARKER) {
        return data;
    }
    let info = &data[body..body + 12];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    match body.checked_sub(sig_len) {
        Some(end) => {
            data.truncate(end);
            data
        }
        None => data,
    }
}

/// Splits `foo.ko`, `foo.ko.xz`, `foo.ko.gz`, `foo.ko.zst` into stem and suffix.
fn split_module_name(fname: &str) -> Option<(&str, &str)> {
    [".ko", ".ko.xz", ".ko.gz", ".ko.zst"]
        .into_iter()
        .find_map(|suffix| Some((fname.strip_suffix(suffix)?, suffix)))
}

/// Reads a module file, undoing xz or gzip compression. The signature appended to a
/// signed module is inside the compressed stream, so it comes out untouched.
fn decompress(path: &Path) -> Result<Vec<u8>, ImageError> {
    let raw = std::fs::read(path).map_err(|e| ImageError::io("read", path, e))?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    let result = if name.ends_with(".xz") {
        xz2::read::XzDecoder::new(raw.as_slice()).read_to_end(&mut out)
    } else if name.ends_with(".gz") {
        flate2::read::GzDecoder::new(raw.as_slice()).read_to_end(&mut out)
    } else if name.ends_with(".zst") {
        return Err(ImageError::BadModule {
            path: path.to_path_buf(),
            reason: "expected an uncompressed, xz or gzip module; zstd is not supported".into(),
        });
    } else {
        return Ok(raw);
    };
    result.map_err(|e| ImageError::io("decompress", path, e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_stripped_exactly() {
        let module = b"\x7fELF module body".to_vec();
        let sig = vec![0xabu8; 40];
        let mut signed = module.clone();
        signed.extend_from_slice(&sig);
        let mut info = [0u8; 12];
        info[8..].copy_from_slice(&(sig.len() as u32).to_be_bytes());
        signed.extend_from_slice(&info);
        signed.extend_from_slice(SIGNATURE_MARKER);
        assert_eq!(strip_signature(signed), module);
        // Unsigned, truncated or lying blocks are left alone.
        assert_eq!(strip_signature(module.clone()), module);
        let mut lying = b"x".to_vec();
        let mut info = [0u8; 12];
        info[8..].copy_from_slice(&1000u32.to_be_bytes());
        lying.extend_from_slice(&info);
        lying.extend_from_slice(SIGNATURE_MARKER);
        assert_eq!(strip_signature(lying.clone()), lying);
        assert_eq!(
            strip_signature(SIGNATURE_MARKER.to_vec()),
            SIGNATURE_MARKER.to_vec()
        );
    }

    /// A minimal little-endian ELF64 relocatable with sections
    /// [null, .text, .modinfo, .shstrtab], enough for the section walk.
    pub(crate) fn synthetic_elf(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.text\0.modinfo\0.shstrtab\0";
        let text = b"\x13\x00\x00\x00";
        let mut elf = vec![0u8; 0x40];
        elf[..4].copy_from_slice(b"\x7fELF");
        elf[4] = 2; // 64-bit
        elf[5] = 1; // little endian
        elf[6] = 1;
        elf[0x10] = 1; // ET_REL
        let text_off = elf.len() as u64;
        elf.extend_from_slice(text);
        let modinfo_off = elf.len() as u64;
        elf.extend_from_slice(modinfo);
        let str_off = elf.len() as u64;
        elf.extend_from_slice(shstrtab);
        while !elf.len().is_multiple_of(8) {
            elf.push(0);
        }
        let shoff = elf.len() as u64;
        let mut sh = |name: u32, kind: u32, off: u64, size: u64| {
            let mut h = [0u8; 0x40];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&off.to_le_bytes());
            h[0x20..0x28].copy_from_slice(&size.to_le_bytes());
            elf.extend_from_slice(&h);
        };
        sh(0, 0, 0, 0);
        sh(1, 1, text_off, text.len() as u64);
        sh(7, 1, modinfo_off, modinfo.len() as u64);
        sh(16, 3, str_off, shstrtab.len() as u64);
        elf[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&0x40u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&4u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&3u16.to_le_bytes());
        elf
    }

    #[test]
    fn modinfo_from_synthetic_elf() {
        let section = b"license=GPL\0\0\0softdep=pre: crypto-crc32c post: foo\0alias=fs-ext4\0\
            depends=jbd2,mbcache,crc-16\0name=ext4\0";
        let elf = synthetic_elf(section);
        assert_eq!(modinfo_section(&elf).unwrap(), section);
        let info = parse_modinfo(modinfo_section(&elf).unwrap());
        assert_eq!(info.name.as_deref(), Some("ext4"));
        assert_eq!(info.depends, ["jbd2", "mbcache", "crc_16"]);
        assert_eq!(info.softdep_pre, ["crypto-crc32c"]);
        assert_eq!(info.aliases, ["fs-ext4"]);
    }

    #[test]
    fn empty_depends_means_none() {
        let info = parse_modinfo(b"depends=\0name=virtio_blk\0");
        assert!(info.depends.is_empty());
    }

    #[test]
    fn malformed_elf_is_an_error_not_a_panic() {
        let elf = synthetic_elf(b"name=x\0");
        assert!(modinfo_section(b"not an elf").is_err());
        for cut in [0, 4, 0x20, 0x40, elf.len() - 0x20] {
            assert!(modinfo_section(&elf[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = elf.clone();
        bad[0x3e] = 9; // shstrndx out of range
        assert!(modinfo_section(&bad).is_err());
        let mut bad = elf.clone();
        bad[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(modinfo_section(&bad).is_err());
        let mut no_modinfo = elf;
        let pos = no_modinfo
            .windows(8)
            .position(|w| w == b".modinfo")
            .unwrap();
        no_modinfo[pos + 1] = b'X';
        assert!(modinfo_section(&no_modinfo).is_err());
    }

    fn graph(edges: &[(&str, &[&str])]) -> impl FnMut(&str) -> Result<Vec<String>, ImageError> {
        let map: HashMap<String, Vec<String>> = edges
            .iter()
            .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
            .collect();
        move |n| Ok(map.get(n).cloned().unwrap_or_default())
    }

    fn before(order: &[String], a: &str, b: &str) -> bool {
        let pos = |x: &str| order.iter().position(|o| o == x).unwrap();
        pos(a) < pos(b)
    }

    #[test]
    fn dependencies_come_first() {
        let roots = vec!["ext4".to_string(), "virtio_net".to_string()];
        let order = load_order(
            &roots,
            graph(&[
                ("ext4", &["jbd2", "mbcache", "crc16"]),
                ("jbd2", &["crc16"]),
                ("virtio_net", &["net_failover"]),
                ("net_failover", &["failover"]),
            ]),
        )
        .unwrap();
        assert_eq!(order.len(), 7, "{order:?}");
        for (a, b) in [
            ("jbd2", "ext4"),
            ("crc16", "jbd2"),
            ("mbcache", "ext4"),
            ("failover", "net_failover"),
            ("net_failover", "virtio_net"),
        ] {
            assert!(before(&order, a, b), "{a} must precede {b} in {order:?}");
        }
    }

    #[test]
    fn cycles_terminate() {
        let roots = vec!["a".to_string()];
        let order = load_order(
            &roots,
            graph(&[("a", &["b"]), ("b", &["c"]), ("c", &["a", "d"]), ("d", &[])]),
        )
        .unwrap();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, ["a", "b", "c", "d"]);
        assert!(before(&order, "d", "c") && before(&order, "c", "b") && before(&order, "b", "a"));
    }

    #[test]
    fn self_dependency_terminates() {
        let roots = vec!["a".to_string(), "a".to_string()];
        let order = load_order(&roots, graph(&[("a", &["a"])])).unwrap();
        assert_eq!(order, ["a"]);
    }

    #[test]
    fn tree_resolves_names_files_and_builtins() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let put = |rel: &str, info: &[u8]| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let elf = synthetic_elf(info);
            if rel.ends_with(".xz") {
                let mut enc = xz2::read::XzEncoder::new(elf.as_slice(), 6);
                let mut out = Vec::new();
                enc.read_to_end(&mut out).unwrap();
                std::fs::write(path, out).unwrap();
            } else {
                std::fs::write(path, elf).unwrap();
            }
        };
        put(
            "kernel/fs/ext4/ext4.ko.xz",
            b"softdep=pre: crypto-crc32c\0depends=jbd2,crc16\0name=ext4\0",
        );
        put("kernel/fs/jbd2/jbd2.ko.xz", b"depends=\0name=jbd2\0");
        put(
            "kernel/crypto/crc32c_generic.ko",
            b"alias=crypto-crc32c\0depends=\0name=crc32c_generic\0",
        );
        put(
            "kernel/drivers/char/hw_random/virtio-rng.ko.xz",
            b"depends=\0name=virtio_rng\0",
        );
        std::fs::write(
            root.join("modules.builtin"),
            "kernel/lib/crc16.ko\nkernel/drivers/virtio/virtio_pci.ko\n",
        )
        .unwrap();

        let mut tree = ModuleTree::open(root).unwrap();
        assert!(tree.is_builtin("virtio_pci"));
        assert!(tree.has_module("virtio-rng"));
        let order = tree.resolve(&["virtio_pci", "virtio_rng", "ext4"]).unwrap();
        assert_eq!(order, ["virtio_rng", "jbd2", "crc32c_generic", "ext4"]);
        let m = tree.module("virtio_rng").unwrap();
        assert_eq!(m.rel_path, "kernel/drivers/char/hw_random/virtio-rng.ko");
        assert!(
            m.data.starts_with(b"\x7fELF"),
            "module must be decompressed"
        );
        assert!(matches!(
            tree.resolve(&["virtio_mmio"]),
            Err(ImageError::ModuleNotFound { .. })
        ));
    }

    /// Cross-checks the parser against a real Debian module: one from a pulled image in
    /// the cache, and the modules directory named by VIREO_TEST_MODULES_DIR if set.
    #[test]
    fn modinfo_from_real_module() {
        let mut checked = 0;
        let initrd = {
            let _env = crate::tests::ENV_LOCK
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            crate::open("debian-riscv64").ok().map(|img| img.initrd)
        };
        if let Some(initrd) = initrd {
            let gz = std::fs::read(initrd).unwrap();
            let mut archive = Vec::new();
            flate2::read::GzDecoder::new(gz.as_slice())
                .read_to_end(&mut archive)
                .unwrap();
            let entries = crate::cpio::testing::parse(&archive);
            let m = entries
                .iter()
                .find(|e| e.name.ends_with("/virtio_net.ko"))
                .expect("the initramfs has virtio_net.ko");
            let info = parse_modinfo(modinfo_section(&m.data).unwrap());
            assert_eq!(info.name.as_deref(), Some("virtio_net"));
            assert!(info.depends.contains(&"net_failover".to_string()));
            checked += 1;
        }
        if let Some(dir) = std::env::var_os("VIREO_TEST_MODULES_DIR") {
            let mut tree = ModuleTree::open(Path::new(&dir)).unwrap();
            let m = tree.module("virtio_net").unwrap();
            assert_eq!(m.info.name.as_deref(), Some("virtio_net"));
            let order = tree.resolve(&["virtio_net"]).unwrap();
            assert!(before(&order, "net_failover", "virtio_net"), "{order:?}");
            let order = tree.resolve(&["ext4"]).unwrap();
            assert!(before(&order, "jbd2", "ext4"), "{order:?}");
            checked += 1;
        }
        if checked == 0 {
            println!(
                "skipping the real-module check: debian-riscv64 is not pulled into the cache \
                 and VIREO_TEST_MODULES_DIR is not set"
            );
        }
    }
}
