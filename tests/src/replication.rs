//! Throwaway streaming-replication clusters for `tests/faults_replica.rs`
//! and the bench's `replica` section: a
//! primary made with `initdb` and standbys made from it with
//! `pg_basebackup -R` (so they stream from it), all on 127.0.0.1, run as the
//! `postgres` user when the tests run as root, in scratch directories
//! removed at the end. Binaries come from `OUTPOST_REPLICA_PG_BINDIR` (else
//! `pg_config --bindir`), ports from `OUTPOST_REPLICA_PORTS` (default
//! `5450,5451,5452`; `scripts/test-replicas.sh` sets both).

use postgres::{Client, NoTls};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub fn bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("OUTPOST_REPLICA_PG_BINDIR") {
        return PathBuf::from(d);
    }
    let pg_config = std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".into());
    let out = Command::new(&pg_config)
        .arg("--bindir")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {pg_config}: {e}"));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// The ports the clusters may use, in order: primary, standby, …
pub fn ports() -> Vec<u16> {
    std::env::var("OUTPOST_REPLICA_PORTS")
        .unwrap_or_else(|_| "5450,5451,5452".into())
        .split(',')
        .map(|p| p.trim().parse().expect("OUTPOST_REPLICA_PORTS: numbers"))
        .collect()
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Runs a Postgres program as the `postgres` user (Postgres refuses root).
pub fn as_postgres(program: &Path, args: &[&str]) -> Result<String, String> {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd
        .args(args)
        .current_dir("/")
        .output()
        .expect("run a Postgres program");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{} {args:?} failed: {text}", program.display()))
    }
}

/// A scratch directory owned by `postgres`, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "outpost-{label}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&p)
                .status()
                .unwrap();
            assert!(st.success(), "chown to postgres");
        }
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One server of the replication setup.
pub struct Node {
    pub name: &'static str,
    pub port: u16,
    bindir: PathBuf,
    dir: Scratch,
}

fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl Node {
    fn data(&self) -> String {
        self.dir.0.join("data").display().to_string()
    }

    fn log(&self) -> String {
        self.dir.0.join("server.log").display().to_string()
    }

    /// `initdb` and start a primary that standbys can stream from.
    pub fn primary(port: u16) -> Node {
        assert!(
            port_free(port),
            "port {port} is taken (set OUTPOST_REPLICA_PORTS)"
        );
        let node = Node {
            name: "primary",
            port,
            bindir: bindir(),
            dir: Scratch::new("replica-primary"),
        };
        let data = node.data();
        as_postgres(
            &node.bindir.join("initdb"),
            &[
                "-D",
                &data,
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )
        .unwrap();
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{dir}'\n\
             wal_level = replica\nmax_wal_senders = 8\nhot_standby = on\n\
             hot_standby_feedback = on\nwal_keep_size = '256MB'\n\
             shared_preload_libraries = 'pg_stat_statements'\n\
             pg_stat_statements.track = top\n\
             fsync = off\nshared_buffers = 32MB\nmax_connections = 80\n",
            dir = node.dir.0.display()
        );
        append(&Path::new(&data).join("postgresql.conf"), &conf);
        std::fs::write(
            Path::new(&data).join("pg_hba.conf"),
            "local all all trust\n\
             host all all 127.0.0.1/32 trust\n\
             local replication all trust\n\
             host replication all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        node.start();
        node
    }

    /// A hot standby of `primary` on `port`, made with `pg_basebackup -R`
    /// (it streams from the primary), started.
    pub fn standby(primary: &Node, port: u16) -> Node {
        assert!(
            port_free(port),
            "port {port} is taken (set OUTPOST_REPLICA_PORTS)"
        );
        let node = Node {
            name: "standby",
            port,
            bindir: primary.bindir.clone(),
            dir: Scratch::new("replica-standby"),
        };
        let data = node.data();
        as_postgres(
            &node.bindir.join("pg_basebackup"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
                "-D",
                &data,
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ],
        )
        .unwrap();
        // The copied postgresql.conf names the primary's port and socket
        // folder; the last setting wins.
        append(
            &Path::new(&data).join("postgresql.conf"),
            &format!(
                "\nport = {port}\nunix_socket_directories = '{}'\n",
                node.dir.0.display()
            ),
        );
        node.start();
        node
    }

    pub fn start(&self) {
        let (data, log) = (self.data(), self.log());
        as_postgres(
            &self.bindir.join("pg_ctl"),
            &["-D", &data, "-l", &log, "-w", "-t", "60", "start"],
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail()));
    }

    /// `pg_ctl stop -m <mode>` (fast, immediate).
    pub fn stop(&self, mode: &str) {
        let data = self.data();
        as_postgres(
            &self.bindir.join("pg_ctl"),
            &["-D", &data, "-m", mode, "-w", "stop"],
        )
        .unwrap();
    }

    pub fn promote(&self) {
        let data = self.data();
        as_postgres(&self.bindir.join("pg_ctl"), &["-D", &data, "-w", "promote"]).unwrap();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn url(&self, dbname: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname}",
            self.port
        )
    }

    pub fn connect(&self, dbname: &str) -> Client {
        Client::connect(&self.url(dbname), NoTls)
            .unwrap_or_else(|e| panic!("connect to the {} on {}: {e}", self.name, self.port))
    }

    /// Waits (bounded) until `dbname` accepts connections and answers `sql`.
    pub fn wait_ready(&self, dbname: &str, sql: &str, timeout: Duration) -> Client {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(mut c) = Client::connect(&self.url(dbname), NoTls) {
                if c.simple_query(sql).is_ok() {
                    return c;
                }
            }
            assert!(
                Instant::now() < deadline,
                "the {} on {} never answered {sql:?} in {dbname}\n{}",
                self.name,
                self.port,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let data = self.data();
        let _ = as_postgres(
            &self.bindir.join("pg_ctl"),
            &["-D", &data, "-m", "immediate", "-w", "stop"],
        );
    }
}

fn append(path: &Path, text: &str) {
    let mut s = std::fs::read_to_string(path).unwrap();
    s.push_str(text);
    std::fs::write(path, s).unwrap();
}
