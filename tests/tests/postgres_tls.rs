//! The relay's Postgres connections over TLS, against a dedicated cluster
//! made by each test: `initdb` in a scratch directory (as the `postgres`
//! user when the test runs as root), `ssl = on` with a server certificate
//! from a private CA made here with rcgen, listening on 127.0.0.1 only, and
//! stopped with `pg_ctl` at the end. `hostssl` and `hostnossl` are both
//! allowed so that `disable` can be shown too. The cluster uses the
//! installed extension (same major as `pg_config`).

mod faults_support;
mod tls_support;

use faults_support::free_addr;
use outpost_relay::pg_tls::PgConnect;
use outpost_tests::relay::Relay;
use outpost_tests::TestDb;
use postgres::{Client, NoTls};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use tls_support::{Ca, TempDir};

/// A throwaway Postgres cluster with TLS on.
struct Cluster {
    dir: TempDir,
    bindir: PathBuf,
    port: u16,
    /// The CA that signed the server certificate.
    ca: PathBuf,
    /// A CA that did not.
    rogue_ca: PathBuf,
}

fn bindir() -> PathBuf {
    let pg_config = std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".into());
    let out = Command::new(&pg_config)
        .arg("--bindir")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {pg_config}: {e}"));
    PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
}

/// Whether this major's server was built with SSL. The Postgres 18 wheel
/// was not ("SSL is not supported by this build"), so there the tests say so
/// and check nothing; the Debian build of 15 has it, and there a build
/// without SSL is a failure.
fn ssl_built(test: &str) -> bool {
    let pg_config = std::env::var("PG_CONFIG").unwrap_or_else(|_| "pg_config".into());
    let out = |arg: &str| {
        let o = Command::new(&pg_config)
            .arg(arg)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {pg_config}: {e}"));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let configure = out("--configure");
    if configure.contains("--with-openssl") || configure.contains("--with-ssl=openssl") {
        return true;
    }
    let version = out("--version");
    assert!(
        !version.contains(" 15."),
        "{test}: Postgres 15 ({}) built without SSL",
        version.trim()
    );
    eprintln!(
        "{test}: {} has no SSL support; nothing to check",
        version.trim()
    );
    false
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// Runs a server program as the `postgres` user (Postgres refuses root).
fn as_postgres(program: &Path, args: &[&str]) {
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = cmd.args(args).output().expect("run a Postgres program");
    // pg_ctl's own message says only "examine the log output": add it.
    let log = args
        .iter()
        .position(|a| *a == "-l")
        .and_then(|i| args.get(i + 1))
        .and_then(|l| std::fs::read_to_string(l).ok())
        .unwrap_or_default();
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}\nserver log:\n{log}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    fn start() -> Cluster {
        let dir = TempDir::new("pgtls");
        let ca = Ca::new("Outpost test CA");
        let rogue = Ca::new("Some other CA");
        // The URL's host is 127.0.0.1, so verify-full needs that address in
        // the certificate; `localhost` is there for tests using `host=`.
        let leaf = ca.issue(&["localhost", "127.0.0.1"]);
        let crt = dir.write("server.crt", &leaf.cert_pem);
        let key = dir.write("server.key", &leaf.key_pem);
        let ca_path = dir.write("ca.pem", &ca.pem());
        let rogue_ca = dir.write("rogue-ca.pem", &rogue.pem());
        if is_root() {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(st.success(), "chown to postgres");
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

        let bindir = bindir();
        let data = dir.path().join("data");
        as_postgres(
            &bindir.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let port = free_addr().port();
        let conf = format!(
            "\nlisten_addresses = '127.0.0.1'\nport = {port}\n\
             unix_socket_directories = '{dir}'\nssl = on\n\
             ssl_cert_file = '{crt}'\nssl_key_file = '{key}'\n\
             fsync = off\nshared_buffers = 16MB\nmax_connections = 40\n",
            dir = dir.path().display(),
            crt = crt.display(),
            key = key.display(),
        );
        let mut pgconf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        pgconf.push_str(&conf);
        std::fs::write(data.join("postgresql.conf"), pgconf).unwrap();
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\n\
             hostssl all all 127.0.0.1/32 trust\n\
             hostnossl all all 127.0.0.1/32 trust\n",
        )
        .unwrap();
        let log = dir.path().join("server.log");
        as_postgres(
            &bindir.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        Cluster {
            dir,
            bindir,
            port,
            ca: ca_path,
            rogue_ca,
        }
    }

    /// A key/value URL for `dbname` plus `extra` parameters.
    fn url(&self, dbname: &str, extra: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={dbname} {extra}",
            self.port
        )
    }

    /// A plain-text admin connection (the tests' own view of the server).
    fn admin(&self, dbname: &str) -> Client {
        Client::connect(&self.url(dbname, "sslmode=disable"), NoTls).expect("admin connection")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        as_postgres(
            &self.bindir.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Connects the way the relay does and reports `pg_stat_ssl` for that
/// connection: `Ok((ssl, version))` or the connection error's text.
fn relay_connect(url: &str) -> Result<(bool, Option<String>), String> {
    runtime().block_on(async {
        let target = PgConnect::parse(url).map_err(|e| e.to_string())?;
        let (client, connection) = target.connect().await.map_err(|e| e.to_string())?;
        let driver = tokio::spawn(connection);
        let row = client
            .query_one(
                "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        drop(client);
        let _ = driver.await;
        Ok((row.get(0), row.get(1)))
    })
}

#[test]
fn sslmodes_against_a_tls_server() {
    if !ssl_built("sslmodes_against_a_tls_server") {
        return;
    }
    let pg = Cluster::start();
    let ca = pg.ca.display().to_string();
    let rogue = pg.rogue_ca.display().to_string();

    // verify-full: chain to our CA and the host name; encrypted.
    let (ssl, version) =
        relay_connect(&pg.url("postgres", &format!("sslmode=verify-full sslrootcert={ca}")))
            .expect("verify-full with the signing CA connects");
    assert!(
        ssl,
        "pg_stat_ssl says the verify-full connection is encrypted"
    );
    assert!(version.is_some_and(|v| v.starts_with("TLSv1.")));

    // The same in URI form.
    let uri = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=verify-full&sslrootcert={}",
        pg.port,
        percent(&ca)
    );
    assert!(relay_connect(&uri).expect("URI form").0);

    // A CA that did not sign the certificate is refused, and says so.
    let e = relay_connect(&pg.url(
        "postgres",
        &format!("sslmode=verify-full sslrootcert={rogue}"),
    ))
    .expect_err("a CA that did not sign the certificate must be refused");
    assert!(
        e.contains("Postgres server certificate refused under sslmode=verify-full")
            && e.contains(&format!(
                "not signed by the CA certificates in sslrootcert {rogue}"
            )),
        "unclear error: {e}"
    );
    let e = relay_connect(&pg.url(
        "postgres",
        &format!("sslmode=verify-ca sslrootcert={rogue}"),
    ))
    .expect_err("verify-ca checks the chain too");
    assert!(e.contains("sslmode=verify-ca"), "{e}");
    // As in libpq, `require` with a root certificate checks the chain.
    let e = relay_connect(&pg.url("postgres", &format!("sslmode=require sslrootcert={rogue}")))
        .expect_err("require + sslrootcert checks the chain");
    assert!(e.contains("sslmode=require"), "{e}");
    // The system roots do not know our private CA either.
    let e = relay_connect(&pg.url("postgres", "sslrootcert=system"))
        .expect_err("sslrootcert=system means verify-full against the system roots");
    assert!(e.contains("the system root certificates"), "{e}");

    // verify-ca checks the chain but not the name; verify-full checks both.
    // `hostaddr` is where we connect, `host` what the certificate must name.
    let wrong_name = format!("host=db.invalid hostaddr=127.0.0.1 port={}", pg.port);
    let (ssl, _) = relay_connect(&format!(
        "{wrong_name} user=postgres dbname=postgres sslmode=verify-ca sslrootcert={ca}"
    ))
    .expect("verify-ca ignores the host name");
    assert!(ssl);
    let e = relay_connect(&format!(
        "{wrong_name} user=postgres dbname=postgres sslmode=verify-full sslrootcert={ca}"
    ))
    .expect_err("verify-full checks the host name");
    assert!(e.contains("does not name the host"), "{e}");

    // require (no root certificate): encrypted, certificate not checked.
    assert_eq!(
        relay_connect(&pg.url("postgres", "sslmode=require")).map(|r| r.0),
        Ok(true)
    );
    // prefer (also the default): TLS because the server offers it.
    assert_eq!(
        relay_connect(&pg.url("postgres", "sslmode=prefer")).map(|r| r.0),
        Ok(true)
    );
    assert_eq!(
        relay_connect(&pg.url("postgres", "")).map(|r| r.0),
        Ok(true)
    );
    // disable: plain text still works.
    assert_eq!(
        relay_connect(&pg.url("postgres", "sslmode=disable")).map(|r| r.0),
        Ok(false)
    );
}

/// Enough percent-encoding for a temp-dir path in a URI query.
fn percent(s: &str) -> String {
    s.replace('%', "%25")
        .replace('/', "%2F")
        .replace(' ', "%20")
}

const RULES: &str = "
bucket_definitions:
  global:
    data:
      - SELECT id, name FROM items
";

/// Every data op of the lines, as (object_id, data).
fn rows(lines: &[Value]) -> Vec<(String, Value)> {
    lines
        .iter()
        .filter_map(|l| l.get("data"))
        .flat_map(|d| d["data"].as_array().cloned().unwrap_or_default())
        .filter(|op| op["op"] == "PUT")
        .map(|op| {
            let data = match &op["data"] {
                Value::String(s) => serde_json::from_str(s).unwrap(),
                other => other.clone(),
            };
            (op["object_id"].as_str().unwrap().to_string(), data)
        })
        .collect()
}

#[test]
fn relay_syncs_over_verify_full() {
    if !ssl_built("relay_syncs_over_verify_full") {
        return;
    }
    let pg = Cluster::start();
    let mut admin = pg.admin("postgres");
    admin.batch_execute("CREATE DATABASE app").unwrap();
    let mut app = pg.admin("app");
    app.batch_execute(
        "CREATE EXTENSION outpost;
         CREATE TABLE items (id text PRIMARY KEY, name text NOT NULL);
         INSERT INTO items VALUES ('a', 'first');",
    )
    .expect("CREATE EXTENSION outpost (is the extension installed for this major?)");
    app.query_one("SELECT outpost.deploy_rules($1)", &[&RULES])
        .unwrap();

    let url = pg.url(
        "app",
        &format!(
            "application_name=outpost-tls-relay sslmode=verify-full sslrootcert={}",
            pg.ca.display()
        ),
    );
    // The relay takes only the URL; TestDb is a handle whose drop would
    // clean up on the shared server, which this database is not on.
    let handle = std::mem::ManuallyDrop::new(TestDb {
        name: "app".into(),
        url,
    });
    let relay = Relay::start(&handle);
    let token = relay.token("u1", 600);
    let mut stream = relay.stream(&token, &json!({"buckets": [], "include_checksum": true}));
    let first = stream.until("checkpoint_complete");
    assert_eq!(
        rows(&first),
        vec![("a".into(), json!({"id": "a", "name": "first"}))]
    );

    // A live change: capture, the relay's tick over TLS, its LISTEN
    // connection over TLS, and the stream.
    app.batch_execute("INSERT INTO items VALUES ('b', 'second')")
        .unwrap();
    let next = stream.until("checkpoint_complete");
    assert_eq!(
        rows(&next),
        vec![("b".into(), json!({"id": "b", "name": "second"}))]
    );

    // Every connection of the relay (pool and LISTEN) is encrypted.
    let row = admin
        .query_one(
            "SELECT count(*), count(*) FILTER (WHERE s.ssl)
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.application_name = 'outpost-tls-relay'",
            &[],
        )
        .unwrap();
    let (all, encrypted): (i64, i64) = (row.get(0), row.get(1));
    assert!(
        all >= 2,
        "expected the pool and the LISTEN connection, saw {all}"
    );
    assert_eq!(encrypted, all, "every relay connection must use TLS");
    drop(stream);
    drop(relay);
}
