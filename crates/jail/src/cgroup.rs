//! One cgroup per VMM process, limiting its memory (guest RAM plus the VMM's overhead) and CPU
//! (as many CPUs' worth of time as the guest has vCPUs). cgroup v2 when the unified hierarchy
//! at /sys/fs/cgroup offers the memory and cpu controllers; else the v1 hierarchies
//! /sys/fs/cgroup/memory and /sys/fs/cgroup/cpu. Where neither can be written (not root, a
//! read-only /sys), the VM runs without limits and says why.

use std::path::{Path, PathBuf};

/// Memory a VMM needs beside guest RAM (its own heap, device buffers, the console ring).
pub const OVERHEAD_BYTES: u64 = 256 << 20;
/// CFS period for the CPU quota (the kernel's default).
const PERIOD_US: u64 = 100_000;

/// The cgroup directories made for one VM.
#[derive(Debug, Clone, PartialEq)]
pub struct Cgroup {
    pub dirs: Vec<PathBuf>,
}

/// Where the cgroup filesystem is, so tests could point elsewhere.
pub struct Hierarchy {
    pub root: PathBuf,
}

impl Default for Hierarchy {
    fn default() -> Self {
        Hierarchy {
            root: PathBuf::from("/sys/fs/cgroup"),
        }
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn mkdir(path: &Path) -> Result<(), String> {
    // A VM stopping at the same time may remove the (empty) parent between its creation and
    // the child's: once more then.
    std::fs::create_dir_all(path)
        .or_else(|_| std::fs::create_dir_all(path))
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

impl Hierarchy {
    fn is_v2(&self) -> bool {
        std::fs::read_to_string(self.root.join("cgroup.controllers")).is_ok_and(|c| {
            let c: Vec<&str> = c.split_whitespace().collect();
            c.contains(&"memory") && c.contains(&"cpu")
        })
    }

    /// The directories VM `name` uses under `parent`.
    pub fn dirs(&self, parent: &str, name: &str) -> Vec<PathBuf> {
        self.dirs_for(self.is_v2(), parent, name)
    }

    fn dirs_for(&self, v2: bool, parent: &str, name: &str) -> Vec<PathBuf> {
        if v2 {
            vec![self.root.join(parent).join(name)]
        } else {
            vec![
                self.root.join("memory").join(parent).join(name),
                self.root.join("cpu").join(parent).join(name),
            ]
        }
    }

    /// Puts `pid` in a fresh cgroup for VM `name` with the limits. On failure whatever was made
    /// is removed and the error says what could not be done.
    pub fn place(
        &self,
        parent: &str,
        name: &str,
        pid: u32,
        guest_ram: u64,
        vcpus: u32,
    ) -> Result<Cgroup, String> {
        let memory = guest_ram.saturating_add(OVERHEAD_BYTES);
        let quota = PERIOD_US * vcpus.max(1) as u64;
        // Decided once: the directories and the files written must be of one version.
        let v2 = self.is_v2();
        let cg = Cgroup {
            dirs: self.dirs_for(v2, parent, name),
        };
        let r = match (v2, cg.dirs.as_slice()) {
            (true, [dir]) => self.place_v2(parent, dir, pid, memory, quota),
            (false, [mem, cpu]) => self.place_v1(mem, cpu, pid, memory, quota),
            _ => Err("cgroup layout mismatch".into()),
        };
        match r {
            Ok(()) => Ok(cg),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }

    fn place_v2(
        &self,
        parent: &str,
        dir: &Path,
        pid: u32,
        memory: u64,
        quota: u64,
    ) -> Result<(), String> {
        let p = self.root.join(parent);
        mkdir(&p)?;
        // Controllers must be enabled in the parent for its children to have their files.
        write(&self.root.join("cgroup.subtree_control"), "+memory +cpu").ok();
        write(&p.join("cgroup.subtree_control"), "+memory +cpu")?;
        mkdir(dir)?;
        write(&dir.join("memory.max"), &memory.to_string())?;
        write(&dir.join("cpu.max"), &format!("{quota} {PERIOD_US}"))?;
        write(&dir.join("cgroup.procs"), &pid.to_string())
    }

    fn place_v1(
        &self,
        mem: &Path,
        cpu: &Path,
        pid: u32,
        memory: u64,
        quota: u64,
    ) -> Result<(), String> {
        if !self.root.join("memory").is_dir() || !self.root.join("cpu").is_dir() {
            return Err(format!(
                "no cgroup v2 memory+cpu controllers and no v1 memory and cpu hierarchies under {}",
                self.root.display()
            ));
        }
        mkdir(mem)?;
        write(&mem.join("memory.limit_in_bytes"), &memory.to_string())?;
        write(&mem.join("cgroup.procs"), &pid.to_string())?;
        mkdir(cpu)?;
        write(&cpu.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
        write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string())?;
        write(&cpu.join("cgroup.procs"), &pid.to_string())
    }

    /// The cgroup of a VMM found running at daemon start, when it is in one.
    pub fn find(&self, parent: &str, name: &str, pid: u32) -> Option<Cgroup> {
        let dirs = self.dirs(parent, name);
        let pid = pid.to_string();
        dirs.iter()
            .all(|d| {
                std::fs::read_to_string(d.join("cgroup.procs"))
                    .is_ok_and(|t| t.lines().any(|l| l.trim() == pid))
            })
            .then_some(Cgroup { dirs })
    }
}

impl Cgroup {
    /// Removes the directories (the VMM has exited, so they are empty). Best effort: a cgroup
    /// left behind costs nothing and the next start reuses it.
    pub fn remove(&self) {
        for d in &self.dirs {
            // A VMM that was not the daemon's child may still be a zombie in the group for a
            // moment after it let go of its lock (its new parent has not reaped it): rmdir
            // says EBUSY until then.
            for _ in 0..50 {
                match std::fs::remove_dir(d) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        std::thread::sleep(std::time::Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
            // The daemon's parent group goes with its last VM (rmdir refuses a group that
            // still has children, another daemon's included), so nothing is left behind.
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }

    /// How `inspect` describes the limits.
    pub fn describe(&self, guest_ram: u64, vcpus: u32) -> String {
        format!(
            "memory {} MiB, cpu {} CPUs ({})",
            guest_ram.saturating_add(OVERHEAD_BYTES) >> 20,
            vcpus.max(1),
            self.dirs
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vireo-cg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn v1_files_are_written() {
        // A plain directory stands in for the hierarchy: the files the kernel would offer are
        // created by our writes, which shows what is written where.
        let root = tmp("v1");
        std::fs::create_dir_all(root.join("memory")).unwrap();
        std::fs::create_dir_all(root.join("cpu")).unwrap();
        let h = Hierarchy { root: root.clone() };
        let cg = h.place("vireo", "a", 42, 512 << 20, 2).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(
            read("memory/vireo/a/memory.limit_in_bytes"),
            (768u64 << 20).to_string()
        );
        assert_eq!(read("cpu/vireo/a/cpu.cfs_quota_us"), "200000");
        assert_eq!(read("cpu/vireo/a/cgroup.procs"), "42");
        assert_eq!(h.find("vireo", "a", 42), Some(cg.clone()));
        assert_eq!(h.find("vireo", "a", 43), None);
        assert!(cg
            .describe(512 << 20, 2)
            .starts_with("memory 768 MiB, cpu 2 CPUs"));
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn v2_when_controllers_are_there() {
        let root = tmp("v2");
        std::fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let h = Hierarchy { root: root.clone() };
        h.place("vireo", "b", 7, 1 << 30, 1).unwrap();
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
        assert_eq!(
            read("vireo/b/memory.max"),
            ((1u64 << 30) + OVERHEAD_BYTES).to_string()
        );
        assert_eq!(read("vireo/b/cpu.max"), "100000 100000");
        assert_eq!(read("vireo/cgroup.subtree_control"), "+memory +cpu");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn no_hierarchy_says_why() {
        let root = tmp("none");
        let h = Hierarchy { root: root.clone() };
        let e = h.place("vireo", "c", 1, 1 << 20, 1).unwrap_err();
        assert!(e.contains("no cgroup v2"), "{e}");
        let _ = std::fs::remove_dir_all(&root);
    }
}
