//! The write path end to end, beyond the happy round trip of `client_e2e.rs`
//! (the harness is in `write_path_support/`):
//! concurrent PATCHes of one row from two clients: the server applies them in
//! upload order, last write wins per field, a field only one client changed
//! keeps that client's value, and both clients end with Postgres' row.

mod write_path_support;

use outpost_tests::client::runtime;
use outpost_tests::client::todo_app::{ALICE_LIST, BOB_LIST, SHARED, WRITE_ROLE};
use outpost_tests::relay::Relay;
use serde_json::json;
use write_path_support::*;

#[test]
fn concurrent_patches_merge_per_field_in_server_order() {
    let (db, mut pg) = setup("wp_patch");
    let relay = Relay::start_with(&db, |a| a.write_role = Some(WRITE_ROLE.to_string()));
    let rt = runtime();
    let (pa, pb) = (Proxy::start(&rt, relay.addr), Proxy::start(&rt, relay.addr));
    let alice = start_client(&rt, &relay, &pa.url, "alice");
    let bob = start_client(&rt, &relay, &pb.url, "bob");
    wait_synced(&rt, &alice);
    wait_synced(&rt, &bob);
    let rows = pg_ids(&mut pg, SHARED, "bob", 2);

    // Round 1 uploads alice's PATCH first, round 2 bob's; each on its own row.
    for (round, row) in rows.iter().enumerate() {
        let alice_first = round == 0;
        pa.set_online(false);
        pb.set_online(false);
        wait_offline(&rt, &alice, "alice offline");
        wait_offline(&rt, &bob, "bob offline");

        // Alice sets description and completed, bob only description.
        let (from_alice, from_bob) = (format!("alice says {round}"), format!("bob says {round}"));
        exec(
            &alice,
            "UPDATE todos SET description = ?1, completed = 1 WHERE id = ?2",
            &[json!(from_alice), json!(row)],
        );
        exec(
            &bob,
            "UPDATE todos SET description = ?1 WHERE id = ?2",
            &[json!(from_bob), json!(row)],
        );
        assert_eq!(
            local_todo(&alice, row),
            Some((from_alice.clone(), true)),
            "alice sees her write at once"
        );
        assert_eq!(
            local_todo(&bob, row),
            Some((from_bob.clone(), false)),
            "bob sees his write at once"
        );
        assert_eq!(
            queue(&alice),
            [(
                "PATCH".to_string(),
                row.clone(),
                json!({"description": from_alice, "completed": 1})
            )]
        );
        assert_eq!(
            queue(&bob),
            [(
                "PATCH".to_string(),
                row.clone(),
                json!({"description": from_bob})
            )]
        );

        let (first, first_proxy, first_says, second, second_proxy, second_says) = if alice_first {
            (&alice, &pa, &from_alice, &bob, &pb, &from_bob)
        } else {
            (&bob, &pb, &from_bob, &alice, &pa, &from_alice)
        };
        first_proxy.set_online(true);
        wait_drained(&rt, first, "the first PATCH to upload");
        assert_eq!(
            pg_todo(&mut pg, row).unwrap().0,
            *first_says,
            "the first upload reached Postgres"
        );
        second_proxy.set_online(true);
        wait_drained(&rt, second, "the second PATCH to upload");

        // Last write wins on description; completed, set only by alice, stays set.
        let fin = pg_todo(&mut pg, row).unwrap();
        assert_eq!(fin, (second_says.clone(), true), "round {round}");
        for (c, who) in [(&alice, "alice"), (&bob, "bob")] {
            wait_rows(
                &rt,
                c,
                &format!("SELECT description, completed FROM todos WHERE id = '{row}'"),
                &format!("{who} to show Postgres' row (round {round})"),
                |r| r.len() == 1 && r[0]["description"] == fin.0 && r[0]["completed"] == 1,
            );
        }
        wait_converged(&rt, &alice, &mut pg, &[ALICE_LIST, SHARED], "alice");
        wait_converged(&rt, &bob, &mut pg, &[BOB_LIST, SHARED], "bob");
        for c in [&alice, &bob] {
            let s = c.db.status().borrow().clone();
            assert!(s.last_rejected.is_none(), "{s:?}");
            assert_eq!(count(c, "SELECT count(*) AS n FROM ps_crud"), 0);
        }
    }
}
