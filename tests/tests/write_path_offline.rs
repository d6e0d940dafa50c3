//! The write path end to end, beyond the happy round trip of `client_e2e.rs`
//! (the harness is in `write_path_support/`):
//! a client whose relay is unreachable keeps writing locally (visible at once,
//! queued in `ps_crud`) while another client and Postgres change other rows;
//! after reconnecting both converge to Postgres, queue empty.

mod write_path_support;

use outpost_tests::client::runtime;
use outpost_tests::client::todo_app::{ALICE_LIST, BOB_LIST, SHARED, WRITE_ROLE};
use outpost_tests::relay::Relay;
use serde_json::json;
use write_path_support::*;

#[test]
fn offline_writes_queue_locally_and_converge_after_reconnect() {
    let (db, mut pg) = setup("wp_offline");
    let relay = Relay::start_with(&db, |a| a.write_role = Some(WRITE_ROLE.to_string()));
    let rt = runtime();
    let proxy = Proxy::start(&rt, relay.addr);
    let alice = start_client(&rt, &relay, &proxy.url, "alice");
    let bob = start_client(&rt, &relay, &relay.url, "bob");
    wait_synced(&rt, &alice);
    wait_synced(&rt, &bob);

    // Online, alice adds two todos to the shared list; both sides agree.
    let (a1, a2) = (uuid(0xa001), uuid(0xa002));
    exec(
        &alice,
        INSERT,
        &[json!(a1), json!(SHARED), json!("alice"), json!("alice one")],
    );
    exec(
        &alice,
        INSERT,
        &[json!(a2), json!(SHARED), json!("alice"), json!("alice two")],
    );
    wait_drained(&rt, &alice, "alice's first uploads");
    wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");
    wait_converged(&rt, &bob, &mut pg, &[BOB_LIST, SHARED], "bob");

    // Alice loses the relay.
    proxy.set_online(false);
    wait_offline(&rt, &alice, "alice to notice the relay is gone");
    let checkpoint_offline = alice.db.status().borrow().last_checkpoint.clone();

    // Offline, alice writes; each write is visible at once and queued.
    let (o1, o2, o3, o4) = (uuid(0xa101), uuid(0xa102), uuid(0xa103), uuid(0xa104));
    let alice_own = pg_ids(&mut pg, ALICE_LIST, "alice", 1).remove(0);
    exec(
        &alice,
        INSERT,
        &[json!(o1), json!(SHARED), json!("alice"), json!("offline 1")],
    );
    exec(
        &alice,
        INSERT,
        &[json!(o2), json!(SHARED), json!("alice"), json!("offline 2")],
    );
    exec(
        &alice,
        INSERT,
        &[
            json!(o3),
            json!(ALICE_LIST),
            json!("alice"),
            json!("offline 3"),
        ],
    );
    exec(
        &alice,
        "UPDATE todos SET description = 'alice edited offline' WHERE id = ?1",
        &[json!(a1)],
    );
    exec(&alice, "DELETE FROM todos WHERE id = ?1", &[json!(a2)]);
    // Two statements, one local transaction.
    alice
        .db
        .execute_batch(&format!(
            "UPDATE todos SET completed = 1 WHERE id = '{alice_own}';
             INSERT INTO todos(id, list_id, owner_id, description, completed, created_at)
               VALUES ('{o4}', '{SHARED}', 'alice', 'offline 4', 0, '2024-05-01T10:00:00Z');"
        ))
        .unwrap();
    for (id, description) in [
        (&o1, "offline 1"),
        (&o2, "offline 2"),
        (&o3, "offline 3"),
        (&o4, "offline 4"),
        (&a1, "alice edited offline"),
    ] {
        assert_eq!(
            local_todo(&alice, id).map(|t| t.0).as_deref(),
            Some(description),
            "alice's offline write to {id} is visible at once"
        );
    }
    assert_eq!(local_todo(&alice, &a2), None);
    assert!(local_todo(&alice, &alice_own).unwrap().1);
    let queued = queue(&alice);
    let ops: Vec<(&str, &str)> = queued
        .iter()
        .map(|(op, id, _)| (op.as_str(), id.as_str()))
        .collect();
    assert_eq!(
        ops,
        [
            ("PUT", o1.as_str()),
            ("PUT", o2.as_str()),
            ("PUT", o3.as_str()),
            ("PATCH", a1.as_str()),
            ("DELETE", a2.as_str()),
            ("PATCH", alice_own.as_str()),
            ("PUT", o4.as_str()),
        ]
    );
    // A PATCH carries only the columns the write changed.
    assert_eq!(queued[3].2, json!({"description": "alice edited offline"}));
    assert_eq!(queued[5].2, json!({"completed": 1}));
    // The uploader keeps trying and failing; nothing leaves the queue.
    let s = wait_status(&rt, &alice, "alice's upload to fail offline", |s| {
        s.last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("upload:"))
    });
    assert_eq!(s.upload_pending, 7, "{s:?}");
    assert!(s.last_rejected.is_none(), "{s:?}");

    // Meanwhile bob and Postgres itself change other rows (and some of alice's
    // rows in other columns).
    let bobs = pg_ids(&mut pg, SHARED, "bob", 2);
    let b1 = uuid(0xb101);
    exec(
        &bob,
        INSERT,
        &[
            json!(b1),
            json!(SHARED),
            json!("bob"),
            json!("bob while alice away"),
        ],
    );
    exec(
        &bob,
        "UPDATE todos SET description = 'bob edited', completed = 1 WHERE id = ?1",
        &[json!(bobs[0])],
    );
    exec(&bob, "DELETE FROM todos WHERE id = ?1", &[json!(bobs[1])]);
    pg.batch_execute(&format!(
        "UPDATE todos SET completed = true WHERE id = '{a1}';
         UPDATE todos SET description = 'postgres edited a2' WHERE id = '{a2}';
         UPDATE todos SET description = 'postgres edited' WHERE id = '{alice_own}';
         INSERT INTO todos(id, list_id, owner_id, description)
           VALUES ('{}', '{SHARED}', 'bob', 'from postgres');",
        uuid(0xc001)
    ))
    .unwrap();
    wait_drained(&rt, &bob, "bob's uploads");
    wait_converged(&rt, &bob, &mut pg, &[BOB_LIST, SHARED], "bob");
    // Alice saw none of it and still holds her queue.
    assert_eq!(
        alice.db.status().borrow().last_checkpoint,
        checkpoint_offline
    );
    assert_eq!(local_todo(&alice, &b1), None);
    assert_eq!(queue(&alice).len(), 7);
    assert!(pg_todo(&mut pg, &o1).is_none());

    // Back online: the queue uploads in order and both converge to Postgres.
    proxy.set_online(true);
    let s = wait_drained(&rt, &alice, "alice's offline queue to upload");
    assert!(s.last_rejected.is_none(), "{s:?}");
    // Server order: alice's writes came after Postgres' and bob's, per field.
    assert_eq!(
        pg_todo(&mut pg, &a1),
        Some(("alice edited offline".into(), true)),
        "alice's PATCH of description keeps Postgres' completed"
    );
    assert_eq!(pg_todo(&mut pg, &a2), None, "alice's delete wins");
    assert_eq!(
        pg_todo(&mut pg, &alice_own),
        Some(("postgres edited".into(), true))
    );
    for (id, d) in [(&o1, "offline 1"), (&o3, "offline 3"), (&o4, "offline 4")] {
        assert_eq!(pg_todo(&mut pg, id), Some((d.to_string(), false)));
    }
    wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");
    wait_converged(&rt, &bob, &mut pg, &[BOB_LIST, SHARED], "bob");
    assert_eq!(count(&alice, "SELECT count(*) AS n FROM ps_crud"), 0);
    assert_eq!(
        count(&alice, "SELECT count(*) AS n FROM ps_crud_rejected"),
        0
    );
    let s = alice.db.status().borrow().clone();
    assert!(
        s.connected && s.upload_pending == 0 && s.last_rejected.is_none(),
        "{s:?}"
    );
}
