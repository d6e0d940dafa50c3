//! The write path end to end, beyond the happy round trip of `client_e2e.rs`
//! (the harness is in `write_path_support/`):
//! the rejection policy: transient failures (relay unreachable, 401) keep
//! writes queued; a write the relay refuses for good (403 RLS, 422 constraint)
//! moves its whole local transaction to `ps_crud_rejected`, is reported in
//! `SyncStatus::last_rejected`, and later writes keep flowing.

mod write_path_support;

use outpost_client::{Connector, Credentials};
use outpost_tests::client::runtime;
use outpost_tests::client::todo_app::{ALICE_LIST, BOB_LIST, SHARED, WRITE_ROLE};
use outpost_tests::relay::Relay;
use serde_json::json;
use std::sync::{Arc, Mutex};
use write_path_support::*;

#[test]
fn rejected_writes_are_reported_and_set_aside_only_when_refused_for_good() {
    let (db, mut pg) = setup("wp_reject");
    let relay = Relay::start_with(&db, |a| a.write_role = Some(WRITE_ROLE.to_string()));
    let rt = runtime();
    let proxy = Proxy::start(&rt, relay.addr);
    let creds = Arc::new(Mutex::new(None::<Arc<Switchable>>));
    let alice = {
        let slot = creds.clone();
        start_with(&rt, &relay, &proxy.url, "alice", move |c| {
            let s = Arc::new(Switchable(Mutex::new(c)));
            *slot.lock().unwrap() = Some(s.clone());
            SharedConnector(s)
        })
    };
    let switch = creds.lock().unwrap().clone().unwrap();
    wait_synced(&rt, &alice);
    let rejected = |c: &Client| count(c, "SELECT count(*) AS n FROM ps_crud_rejected");

    // 1. Relay unreachable: the write stays queued, nothing is rejected.
    proxy.set_online(false);
    wait_offline(&rt, &alice, "alice offline");
    let w1 = uuid(0xd001);
    exec(
        &alice,
        INSERT,
        &[json!(w1), json!(SHARED), json!("alice"), json!("queued")],
    );
    let s = wait_status(&rt, &alice, "an upload failing offline", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("upload:"))
    });
    assert!(s.last_rejected.is_none() && s.upload_pending == 1, "{s:?}");

    // 2. A bad token (401) is not a refusal either.
    let good = switch.0.lock().unwrap().token.clone();
    switch.0.lock().unwrap().token =
        outpost_relay::auth::dev_token("not-the-relay-secret-0123456789", "alice", 600, None)
            .unwrap();
    proxy.set_online(true);
    let s = wait_status(&rt, &alice, "an upload failing with 401", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("upload:") && e.contains("401"))
    });
    assert!(s.last_rejected.is_none() && s.upload_pending == 1, "{s:?}");
    assert_eq!(rejected(&alice), 0);
    assert_eq!(queue(&alice).len(), 1);
    assert!(pg_todo(&mut pg, &w1).is_none());

    // With a good token again, the write goes through.
    switch.0.lock().unwrap().token = good;
    let s = wait_drained(&rt, &alice, "the queued write to upload");
    assert!(s.last_rejected.is_none(), "{s:?}");
    assert_eq!(pg_todo(&mut pg, &w1), Some(("queued".into(), false)));

    // 3. RLS refuses (403) one entry of a two-entry local transaction: the whole
    //    transaction is set aside, reported, reverted; a later write flows.
    let (ok_in_tx, bad, later) = (uuid(0xd002), uuid(0xd003), uuid(0xd004));
    alice
        .db
        .execute_batch(&format!(
            "INSERT INTO todos(id, list_id, owner_id, description, completed, created_at)
               VALUES ('{ok_in_tx}', '{SHARED}', 'alice', 'fine alone', 0, '2024-05-01T10:00:00Z');
             INSERT INTO todos(id, list_id, owner_id, description, completed, created_at)
               VALUES ('{bad}', '{BOB_LIST}', 'alice', 'not my list', 0, '2024-05-01T10:00:00Z');"
        ))
        .unwrap();
    exec(
        &alice,
        INSERT,
        &[json!(later), json!(SHARED), json!("alice"), json!("later")],
    );
    let s = wait_status(
        &rt,
        &alice,
        "the refused transaction to be set aside",
        |s| s.last_rejected.is_some() && s.upload_pending == 0 && !s.uploading,
    );
    let why = s.last_rejected.unwrap();
    assert!(
        why.contains(&bad) && why.contains("403") && why.starts_with("PUT todos"),
        "{why}"
    );
    let set_aside = query(
        &alice,
        "SELECT json_extract(data, '$.id') AS id, tx_id, status, reason FROM ps_crud_rejected ORDER BY ps_crud_rejected.id",
    );
    assert_eq!(set_aside.len(), 2, "{set_aside:?}");
    assert_eq!(set_aside[0]["id"], json!(ok_in_tx));
    assert_eq!(set_aside[1]["id"], json!(bad));
    assert_eq!(set_aside[0]["tx_id"], set_aside[1]["tx_id"]);
    assert!(set_aside.iter().all(|r| r["status"] == 403));
    assert!(set_aside[1]["reason"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(pg_todo(&mut pg, &ok_in_tx), None, "rolled back whole");
    assert_eq!(pg_todo(&mut pg, &bad), None);
    assert_eq!(pg_todo(&mut pg, &later), Some(("later".into(), false)));
    wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");

    // 4. A constraint refuses (422) a PATCH: set aside, reported, reverted to
    //    Postgres' row; the next write flows.
    exec(
        &alice,
        "UPDATE todos SET description = NULL WHERE id = ?1",
        &[json!(later)],
    );
    exec(
        &alice,
        "UPDATE todos SET completed = 1 WHERE id = ?1",
        &[json!(w1)],
    );
    let s = wait_status(&rt, &alice, "the 422 to be set aside", |s| {
        s.last_rejected
            .as_deref()
            .is_some_and(|r| r.contains("422"))
            && s.upload_pending == 0
            && !s.uploading
    });
    let why = s.last_rejected.unwrap();
    assert!(
        why.starts_with("PATCH todos") && why.contains(&later),
        "{why}"
    );
    assert_eq!(rejected(&alice), 3);
    assert_eq!(pg_todo(&mut pg, &later), Some(("later".into(), false)));
    assert_eq!(pg_todo(&mut pg, &w1), Some(("queued".into(), true)));
    wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");
    assert_eq!(count(&alice, "SELECT count(*) AS n FROM ps_crud"), 0);

    // 5. A refused write with nothing after it is reverted too (the checkpoint
    //    that answers its write checkpoint request restores the server's row).
    let lone = uuid(0xd005);
    exec(
        &alice,
        INSERT,
        &[json!(lone), json!(BOB_LIST), json!("alice"), json!("lone")],
    );
    let s = wait_status(&rt, &alice, "the lone refusals to be set aside", |s| {
        s.last_rejected
            .as_deref()
            .is_some_and(|r| r.contains(&lone))
            && s.upload_pending == 0
            && !s.uploading
    });
    assert!(s.last_rejected.unwrap().contains("403"));
    assert_eq!(rejected(&alice), 4);
    wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");
}

/// [`Switchable`] shared with the test, so it can swap the token.
struct SharedConnector(Arc<Switchable>);

impl Connector for SharedConnector {
    async fn fetch_credentials(&self) -> outpost_client::Result<Credentials> {
        self.0.fetch_credentials().await
    }
}
