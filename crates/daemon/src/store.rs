//! The daemon's SQLite database (`<state-dir>/vireo.db`, WAL): VM definitions, their states,
//! the event log, and the storage pools (their volumes are the files in each pool's directory,
//! not rows here). The schema version is SQLite's `user_version`; [`MIGRATIONS`] are applied
//! in order from the file's version up, each in its own transaction, so a database written by an
//! older daemon is upgraded in place and one from a newer daemon is refused.

use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use vireo_spec::VmSpec;

use crate::state::VmState;

/// Schema migrations; migration `i` brings the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: definitions, states, events.
    "CREATE TABLE vms (
         name TEXT PRIMARY KEY NOT NULL,
         spec TEXT NOT NULL,
         created_at REAL NOT NULL
     );
     CREATE TABLE vm_state (
         name TEXT PRIMARY KEY NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
         state TEXT NOT NULL,
         detail TEXT NOT NULL DEFAULT '',
         started_at REAL
     );
     CREATE TABLE events (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         time REAL NOT NULL,
         vm TEXT NOT NULL,
         kind TEXT NOT NULL,
         detail TEXT NOT NULL DEFAULT ''
     );
     CREATE INDEX events_vm ON events(vm, id);",
    // 2: how the last run ended (exit.json, or the crash), kept for `inspect`.
    "ALTER TABLE vm_state ADD COLUMN last_exit TEXT;",
    // 3: storage pools; `made_dir` says the daemon created the directory (and so removes it
    // with the pool when it is empty).
    "CREATE TABLE pools (
         name TEXT PRIMARY KEY NOT NULL,
         path TEXT NOT NULL UNIQUE,
         made_dir INTEGER NOT NULL,
         created_at REAL NOT NULL
     );",
    // 4: snapshots (names are global; the directory is `<state-dir>/snapshots/NAME`), and
    // which VMs were restored from which snapshot (their overlays are on its disk copies).
    "CREATE TABLE snapshots (
         name TEXT PRIMARY KEY NOT NULL,
         vm TEXT NOT NULL,
         dir TEXT NOT NULL,
         kind TEXT NOT NULL CHECK (kind IN ('full', 'diff')),
         parent TEXT REFERENCES snapshots(name),
         created_at REAL NOT NULL,
         memory_bytes INTEGER NOT NULL,
         disk_bytes INTEGER NOT NULL,
         state_id TEXT NOT NULL
     );
     CREATE INDEX snapshots_vm ON snapshots(vm, created_at);
     CREATE TABLE vm_origins (
         vm TEXT PRIMARY KEY NOT NULL REFERENCES vms(name) ON DELETE CASCADE,
         snapshot TEXT NOT NULL REFERENCES snapshots(name)
     );",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A VM of that name is already defined.
    #[error("a VM named '{0}' already exists")]
    Exists(String),
    /// A pool of that name, or on that directory, is already defined.
    #[error("{0}")]
    PoolExists(String),
    /// The database is from a newer vireo.
    #[error("database {path} has schema version {found}; this vireo knows up to {known}: use a newer vireo")]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    /// A stored definition no longer parses.
    #[error("stored definition of '{name}' is unreadable: {message}")]
    BadSpec { name: String, message: String },
    /// A snapshot of that name exists.
    #[error("a snapshot named '{0}' already exists")]
    SnapshotExists(String),
    #[error("database: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// One snapshot as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRecord {
    pub name: String,
    /// The VM it was taken of.
    pub vm: String,
    /// Absolute: `<state-dir>/snapshots/NAME`.
    pub dir: std::path::PathBuf,
    /// `full` or `diff`.
    pub kind: String,
    /// A diff's parent snapshot.
    pub parent: Option<String>,
    pub created_at: f64,
    pub memory_bytes: u64,
    pub disk_bytes: u64,
    /// The state file's id (vireo-state's header).
    pub state_id: String,
}

/// How a VMM's run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ExitInfo {
    /// exit.json's reason (poweroff, failure, reset, killed, error, panic), or "crashed".
    pub reason: String,
    /// exit.json's status; for a crash, the VMM's signal or exit code when known.
    pub status: Option<i32>,
    pub message: String,
    /// Unix seconds.
    pub at: f64,
}

/// One VM as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    pub name: String,
    pub spec: VmSpec,
    pub created_at: f64,
    pub state: VmState,
    pub detail: String,
    pub started_at: Option<f64>,
    pub last_exit: Option<ExitInfo>,
}

/// One row of the event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increasing; `GET /events?since=ID` returns the ones after it.
    pub id: i64,
    /// Unix seconds.
    pub time: f64,
    pub vm: String,
    /// created, deleted, starting, state, guest_ready, start_failed, exited, crashed, ...
    pub kind: String,
    pub detail: String,
}

/// One storage pool as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolRecord {
    pub name: String,
    /// Absolute and canonical.
    pub path: std::path::PathBuf,
    /// The daemon created the directory.
    pub made_dir: bool,
    pub created_at: f64,
}

/// A row of the VM query: name, spec, created_at, state, detail, started_at, last_exit.
type RawRecord = (
    String,
    String,
    f64,
    String,
    String,
    Option<f64>,
    Option<String>,
);

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let conn = Connection::open(path)?;
        // WAL: readers (a CLI's `ls`) never wait for the writer; NORMAL sync is durable enough
        // for a state a restart reconciles anyway.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Store { conn };
        store.migrate(&path.display().to_string())?;
        Ok(store)
    }

    /// An in-memory database, for tests.
    pub fn in_memory() -> Result<Store, StoreError> {
        let conn = Connection::open_in_memory()?;
        conn.pragma_update(None, "foreign_keys", true)?;
        let mut store = Store { conn };
        store.migrate(":memory:")?;
        Ok(store)
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn migrate(&mut self, path: &str) -> Result<(), StoreError> {
        let known = MIGRATIONS.len() as i64;
        let found = self.schema_version()?;
        if found > known {
            return Err(StoreError::TooNew {
                path: path.into(),
                found,
                known,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Defines a VM (state `defined`).
    pub fn insert_vm(&mut self, name: &str, spec: &VmSpec, now: f64) -> Result<(), StoreError> {
        let json = serde_json::to_string(spec).map_err(|e| StoreError::BadSpec {
            name: name.into(),
            message: e.to_string(),
        })?;
        let tx = self.conn.transaction()?;
        let r = tx.execute(
            "INSERT INTO vms (name, spec, created_at) VALUES (?1, ?2, ?3)",
            params![name, json, now],
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                return Err(StoreError::Exists(name.into()))
            }
            r => r?,
        };
        tx.execute(
            "INSERT INTO vm_state (name, state) VALUES (?1, ?2)",
            params![name, VmState::Defined.as_str()],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn delete_vm(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM vms WHERE name = ?1", [name])?
            > 0)
    }

    fn record(row: &rusqlite::Row) -> rusqlite::Result<RawRecord> {
        Ok((
            row.get(0)?,
            row.get(1)?,
            row.get(2)?,
            row.get(3)?,
            row.get(4)?,
            row.get(5)?,
            row.get(6)?,
        ))
    }

    fn to_record(
        (name, spec, created_at, state, detail, started_at, last_exit): RawRecord,
    ) -> Result<VmRecord, StoreError> {
        let spec = serde_json::from_str(&spec).map_err(|e| StoreError::BadSpec {
            name: name.clone(),
            message: e.to_string(),
        })?;
        Ok(VmRecord {
            // A state this daemon does not know (a newer one wrote it) reads as crashed, which
            // can be started again.
            state: VmState::parse(&state).unwrap_or(VmState::Crashed),
            name,
            spec,
            created_at,
            detail,
            started_at,
            last_exit: last_exit.and_then(|j| serde_json::from_str(&j).ok()),
        })
    }

    const SELECT: &'static str =
        "SELECT v.name, v.spec, v.created_at, s.state, s.detail, s.started_at, s.last_exit
         FROM vms v JOIN vm_state s ON s.name = v.name";

    pub fn get_vm(&self, name: &str) -> Result<Option<VmRecord>, StoreError> {
        let row = self
            .conn
            .query_row(
                &format!("{} WHERE v.name = ?1", Self::SELECT),
                [name],
                Self::record,
            )
            .optional()?;
        row.map(Self::to_record).transpose()
    }

    pub fn list_vms(&self) -> Result<Vec<VmRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("{} ORDER BY v.name", Self::SELECT))?;
        let rows = stmt.query_map([], Self::record)?;
        rows.map(|r| Self::to_record(r?)).collect()
    }

    /// Sets a VM's state and its detail; `started_at` is kept unless given.
    pub fn set_state(
        &mut self,
        name: &str,
        state: VmState,
        detail: &str,
        started_at: Option<Option<f64>>,
    ) -> Result<(), StoreError> {
        match started_at {
            Some(t) => self.conn.execute(
                "UPDATE vm_state SET state = ?2, detail = ?3, started_at = ?4 WHERE name = ?1",
                params![name, state.as_str(), detail, t],
            )?,
            None => self.conn.execute(
                "UPDATE vm_state SET state = ?2, detail = ?3 WHERE name = ?1",
                params![name, state.as_str(), detail],
            )?,
        };
        Ok(())
    }

    pub fn set_last_exit(&mut self, name: &str, exit: &ExitInfo) -> Result<(), StoreError> {
        let json = serde_json::to_string(exit).unwrap_or_default();
        self.conn.execute(
            "UPDATE vm_state SET last_exit = ?2 WHERE name = ?1",
            params![name, json],
        )?;
        Ok(())
    }

    pub fn add_event(
        &mut self,
        vm: &str,
        kind: &str,
        detail: &str,
        time: f64,
    ) -> Result<Event, StoreError> {
        self.conn.execute(
            "INSERT INTO events (time, vm, kind, detail) VALUES (?1, ?2, ?3, ?4)",
            params![time, vm, kind, detail],
        )?;
        Ok(Event {
            id: self.conn.last_insert_rowid(),
            time,
            vm: vm.into(),
            kind: kind.into(),
            detail: detail.into(),
        })
    }

    /// Events after `since` (all when `None`), optionally of one VM, oldest first, at most
    /// `limit` (the newest ones when there are more).
    pub fn events(
        &self,
        since: Option<i64>,
        vm: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Event>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, time, vm, kind, detail FROM events
             WHERE id > ?1 AND (?2 IS NULL OR vm = ?2)
             ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![since.unwrap_or(0), vm, limit], |r| {
            Ok(Event {
                id: r.get(0)?,
                time: r.get(1)?,
                vm: r.get(2)?,
                kind: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        let mut v = rows.collect::<Result<Vec<_>, _>>()?;
        v.reverse();
        Ok(v)
    }

    /// Defines a pool; a taken name or directory is [`StoreError::PoolExists`].
    pub fn insert_pool(&mut self, p: &PoolRecord) -> Result<(), StoreError> {
        let path = p.path.to_string_lossy();
        let r = self.conn.execute(
            "INSERT INTO pools (name, path, made_dir, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![p.name, path, p.made_dir, p.created_at],
        );
        match r {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                let holder: Option<String> = self
                    .conn
                    .query_row("SELECT name FROM pools WHERE path = ?1", [&path], |r| {
                        r.get(0)
                    })
                    .optional()?;
                Err(StoreError::PoolExists(match holder {
                    Some(h) if h != p.name => {
                        format!("pool '{h}' is already on {path}")
                    }
                    _ => format!("a pool named '{}' already exists", p.name),
                }))
            }
            r => r.map(drop).map_err(StoreError::from),
        }
    }

    pub fn delete_pool(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM pools WHERE name = ?1", [name])?
            > 0)
    }

    fn pool_row(r: &rusqlite::Row) -> rusqlite::Result<PoolRecord> {
        Ok(PoolRecord {
            name: r.get(0)?,
            path: std::path::PathBuf::from(r.get::<_, String>(1)?),
            made_dir: r.get(2)?,
            created_at: r.get(3)?,
        })
    }

    pub fn get_pool(&self, name: &str) -> Result<Option<PoolRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT name, path, made_dir, created_at FROM pools WHERE name = ?1",
                [name],
                Self::pool_row,
            )
            .optional()?)
    }

    /// Every pool, by name.
    pub fn list_pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name, path, made_dir, created_at FROM pools ORDER BY name")?;
        let rows = stmt.query_map([], Self::pool_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Records a snapshot; a taken name is [`StoreError::SnapshotExists`].
    pub fn insert_snapshot(&mut self, r: &SnapshotRecord) -> Result<(), StoreError> {
        let res = self.conn.execute(
            "INSERT INTO snapshots (name, vm, dir, kind, parent, created_at, memory_bytes,
                                    disk_bytes, state_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                r.name,
                r.vm,
                r.dir.to_string_lossy(),
                r.kind,
                r.parent,
                r.created_at,
                r.memory_bytes as i64,
                r.disk_bytes as i64,
                r.state_id
            ],
        );
        match res {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation
                    && self.get_snapshot(&r.name)?.is_some() =>
            {
                Err(StoreError::SnapshotExists(r.name.clone()))
            }
            r => r.map(drop).map_err(StoreError::from),
        }
    }

    fn snapshot_row(r: &rusqlite::Row) -> rusqlite::Result<SnapshotRecord> {
        Ok(SnapshotRecord {
            name: r.get(0)?,
            vm: r.get(1)?,
            dir: std::path::PathBuf::from(r.get::<_, String>(2)?),
            kind: r.get(3)?,
            parent: r.get(4)?,
            created_at: r.get(5)?,
            memory_bytes: r.get::<_, i64>(6)?.max(0) as u64,
            disk_bytes: r.get::<_, i64>(7)?.max(0) as u64,
            state_id: r.get(8)?,
        })
    }

    const SNAPSHOT_COLUMNS: &'static str =
        "name, vm, dir, kind, parent, created_at, memory_bytes, disk_bytes, state_id";

    pub fn get_snapshot(&self, name: &str) -> Result<Option<SnapshotRecord>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "SELECT {} FROM snapshots WHERE name = ?1",
                    Self::SNAPSHOT_COLUMNS
                ),
                [name],
                Self::snapshot_row,
            )
            .optional()?)
    }

    /// Snapshots, oldest first; only `vm`'s when given.
    pub fn list_snapshots(&self, vm: Option<&str>) -> Result<Vec<SnapshotRecord>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {} FROM snapshots WHERE (?1 IS NULL OR vm = ?1) ORDER BY created_at, name",
            Self::SNAPSHOT_COLUMNS
        ))?;
        let rows = stmt.query_map([vm], Self::snapshot_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    pub fn delete_snapshot(&mut self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM snapshots WHERE name = ?1", [name])?
            > 0)
    }

    /// The diffs whose parent is `name`.
    pub fn snapshot_children(&self, name: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT name FROM snapshots WHERE parent = ?1 ORDER BY name")?;
        let rows = stmt.query_map([name], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Records that `vm` was restored from `snapshot` (forgotten with the VM).
    pub fn set_origin(&mut self, vm: &str, snapshot: &str) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR REPLACE INTO vm_origins (vm, snapshot) VALUES (?1, ?2)",
            params![vm, snapshot],
        )?;
        Ok(())
    }

    /// The snapshot `vm` was restored from.
    pub fn origin(&self, vm: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT snapshot FROM vm_origins WHERE vm = ?1", [vm], |r| {
                r.get(0)
            })
            .optional()?)
    }

    /// The VMs restored from `snapshot`.
    pub fn restored_from(&self, snapshot: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT vm FROM vm_origins WHERE snapshot = ?1 ORDER BY vm")?;
        let rows = stmt.query_map([snapshot], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// The newest event id (0 when there are none).
    pub fn last_event_id(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |r| r.get(0))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec {
            kernel: Some("/k".into()),
            cpus: 2,
            ..Default::default()
        }
    }

    #[test]
    fn define_list_delete() {
        let mut s = Store::in_memory().unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        s.insert_vm("b", &spec(), 1.0).unwrap();
        s.insert_vm("a", &spec(), 2.0).unwrap();
        assert!(matches!(
            s.insert_vm("a", &spec(), 3.0),
            Err(StoreError::Exists(n)) if n == "a"
        ));
        let all = s.list_vms().unwrap();
        assert_eq!(
            all.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        let a = s.get_vm("a").unwrap().unwrap();
        assert_eq!(a.spec, spec());
        assert_eq!(a.state, VmState::Defined);
        assert_eq!(a.created_at, 2.0);
        assert!(s.delete_vm("a").unwrap());
        assert!(!s.delete_vm("a").unwrap());
        assert!(s.get_vm("a").unwrap().is_none());
    }

    #[test]
    fn states_and_exits() {
        let mut s = Store::in_memory().unwrap();
        s.insert_vm("a", &spec(), 1.0).unwrap();
        s.set_state("a", VmState::Running, "", Some(Some(5.0)))
            .unwrap();
        s.set_state("a", VmState::Paused, "by request", None)
            .unwrap();
        let r = s.get_vm("a").unwrap().unwrap();
        assert_eq!(
            (r.state, r.detail.as_str(), r.started_at),
            (VmState::Paused, "by request", Some(5.0))
        );
        let exit = ExitInfo {
            reason: "poweroff".into(),
            status: Some(0),
            message: String::new(),
            at: 9.0,
        };
        s.set_last_exit("a", &exit).unwrap();
        assert_eq!(s.get_vm("a").unwrap().unwrap().last_exit, Some(exit));
    }

    #[test]
    fn events_in_order_and_since() {
        let mut s = Store::in_memory().unwrap();
        let e1 = s.add_event("a", "created", "", 1.0).unwrap();
        let e2 = s.add_event("b", "created", "", 2.0).unwrap();
        let e3 = s.add_event("a", "state", "running", 3.0).unwrap();
        assert_eq!(
            s.events(None, None, 100).unwrap(),
            [e1.clone(), e2.clone(), e3.clone()]
        );
        assert_eq!(
            s.events(Some(e1.id), None, 100).unwrap(),
            [e2.clone(), e3.clone()]
        );
        assert_eq!(s.events(None, Some("a"), 100).unwrap(), [e1, e3.clone()]);
        // The limit keeps the newest.
        assert_eq!(s.events(None, None, 1).unwrap(), std::slice::from_ref(&e3));
        assert_eq!(s.last_event_id().unwrap(), e3.id);
    }

    #[test]
    fn pools_define_list_delete() {
        let mut s = Store::in_memory().unwrap();
        let pool = |name: &str, path: &str| PoolRecord {
            name: name.into(),
            path: path.into(),
            made_dir: name == "b",
            created_at: 1.0,
        };
        s.insert_pool(&pool("b", "/srv/b")).unwrap();
        s.insert_pool(&pool("a", "/srv/a")).unwrap();
        let e = s.insert_pool(&pool("a", "/srv/c")).unwrap_err();
        assert_eq!(e.to_string(), "a pool named 'a' already exists");
        let e = s.insert_pool(&pool("c", "/srv/a")).unwrap_err();
        assert_eq!(e.to_string(), "pool 'a' is already on /srv/a");
        assert_eq!(
            s.list_pools().unwrap(),
            [pool("a", "/srv/a"), pool("b", "/srv/b")]
        );
        assert_eq!(s.get_pool("b").unwrap(), Some(pool("b", "/srv/b")));
        assert!(s.delete_pool("b").unwrap());
        assert!(!s.delete_pool("b").unwrap());
        assert_eq!(s.get_pool("b").unwrap(), None);
    }

    fn snap(name: &str, vm: &str, parent: Option<&str>, at: f64) -> SnapshotRecord {
        SnapshotRecord {
            name: name.into(),
            vm: vm.into(),
            dir: format!("/state/snapshots/{name}").into(),
            kind: if parent.is_some() { "diff" } else { "full" }.into(),
            parent: parent.map(Into::into),
            created_at: at,
            memory_bytes: 4096,
            disk_bytes: 1 << 20,
            state_id: format!("id-{name}"),
        }
    }

    #[test]
    fn snapshots_and_origins() {
        let mut s = Store::in_memory().unwrap();
        s.insert_vm("a", &spec(), 1.0).unwrap();
        s.insert_snapshot(&snap("s1", "a", None, 2.0)).unwrap();
        s.insert_snapshot(&snap("s2", "a", Some("s1"), 3.0))
            .unwrap();
        s.insert_snapshot(&snap("t", "b", None, 1.5)).unwrap();
        let e = s.insert_snapshot(&snap("s1", "b", None, 4.0)).unwrap_err();
        assert_eq!(e.to_string(), "a snapshot named 's1' already exists");
        // A parent that is not a snapshot is refused too (not as a taken name).
        assert!(matches!(
            s.insert_snapshot(&snap("x", "a", Some("nope"), 4.0)),
            Err(StoreError::Sql(_))
        ));
        assert_eq!(
            s.get_snapshot("s2").unwrap(),
            Some(snap("s2", "a", Some("s1"), 3.0))
        );
        let names = |v: Vec<SnapshotRecord>| v.into_iter().map(|r| r.name).collect::<Vec<_>>();
        assert_eq!(names(s.list_snapshots(None).unwrap()), ["t", "s1", "s2"]);
        assert_eq!(names(s.list_snapshots(Some("a")).unwrap()), ["s1", "s2"]);
        assert_eq!(s.snapshot_children("s1").unwrap(), ["s2"]);
        s.set_origin("a", "t").unwrap();
        assert_eq!(s.origin("a").unwrap().as_deref(), Some("t"));
        assert_eq!(s.restored_from("t").unwrap(), ["a"]);
        // The origin goes with the VM.
        assert!(s.delete_vm("a").unwrap());
        assert!(s.restored_from("t").unwrap().is_empty());
        assert!(s.delete_snapshot("s2").unwrap());
        assert!(!s.delete_snapshot("s2").unwrap());
        assert!(s.snapshot_children("s1").unwrap().is_empty());
    }

    #[test]
    fn migrations_upgrade_and_refuse_newer() {
        let dir = std::env::temp_dir().join(format!("vireo-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.db");
        let _ = std::fs::remove_file(&path);
        {
            // A version-1 database, as an older daemon left it.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1).unwrap();
            c.execute("INSERT INTO vms VALUES ('old', '{}', 1.0)", [])
                .unwrap();
            c.execute(
                "INSERT INTO vm_state (name, state) VALUES ('old', 'defined')",
                [],
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(s.get_vm("old").unwrap().unwrap().last_exit, None);
        // Migration 4's tables are there.
        assert!(s.list_snapshots(None).unwrap().is_empty());
        assert_eq!(s.origin("old").unwrap(), None);
        drop(s);
        Connection::open(&path)
            .unwrap()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        let e = Store::open(&path).err().unwrap();
        assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
