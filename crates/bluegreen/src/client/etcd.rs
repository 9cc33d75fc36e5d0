//! `check` with `[state.etcd]`: whether etcd answers, how big its database
//! is, and whether anything keeps its history bounded (etcd keeps every
//! revision until compacted; its 2 GiB default quota then fills up).

use bluegreen_core::config::EtcdConfig;
use bluegreen_store::EtcdStore;

/// Prints etcd's state; problems are warnings (the config itself is valid:
/// `serve` says so again, and waits for etcd, when it starts).
pub fn report(e: &EtcdConfig) {
    let health = match EtcdStore::health(e) {
        Ok(h) => h,
        Err(err) => {
            eprintln!("warning: state.etcd: {err}; `serve` cannot start until etcd answers");
            return;
        }
    };
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    let s = &health.status;
    let _ = outln!(
        "state.etcd: etcd {} reachable ({}): revision {}, database {:.1} MiB ({:.1} MiB in use)",
        s.version,
        e.endpoints.join(", "),
        s.revision,
        mib(s.db_size),
        mib(s.db_size_in_use)
    );
    match (e.compact_every, health.compacted) {
        (Some(every), _) => {
            let _ = outln!(
                "state.etcd: history compacted by the nodes every {}, keeping {} revisions (all of etcd's keyspace; compact_every = \"off\" when etcd compacts itself)",
                humantime::format_duration(every),
                e.keep_revisions
            );
        }
        (None, true) => {
            let _ = outln!(
                "state.etcd: compact_every = \"off\"; etcd's history is compacted by something else (etcd's --auto-compaction, or an operator)"
            );
        }
        (None, false) => eprintln!(
            "warning: state.etcd: nothing compacts etcd's history (compact_every = \"off\", and revision 1 is still kept): run etcd with --auto-compaction-mode=periodic --auto-compaction-retention=1h, or set state.etcd.compact_every"
        ),
    }
}
