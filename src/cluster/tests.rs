use super::*;

fn member(id: &str, name: &str, left: u64) -> Member {
    Member { id: id.into(), name: name.into(), left: Duration::from_secs(left) }
}

fn claim(key: &str, owner: Option<&str>, epoch: i64) -> Claim {
    Claim { key: key.into(), owner: owner.map(Into::into), epoch }
}

/// Keys that rendezvous hashing gives to `name` among `names`, and to another.
fn split(name: &str, names: &[&str]) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let keys = (0..100).map(|i| format!("k{i}"));
    let mine = keys.clone().find(|k| owner_of(k, &names).is_some_and(|n| n == name)).expect("one");
    let other = keys.clone().find(|k| owner_of(k, &names).is_some_and(|n| n != name)).expect("one");
    (mine, other)
}

#[test]
fn unowned_keys_go_to_their_rendezvous_owner_only() {
    let members = [member("a/1", "a", 40), member("b/1", "b", 40)];
    let (mine, theirs) = split("a", &["a", "b"]);
    let plan = plan("a/1", &members, &[], &[&mine, &theirs]);
    assert_eq!(plan.claim, [mine]);
    assert!(plan.keep.is_empty() && plan.hand_over.is_empty());
}

#[test]
fn a_dead_owners_keys_are_claimed_and_a_live_owners_left_alone() {
    let members = [member("a/1", "a", 40)];
    let key = "k0".to_string();
    let dead = plan("a/1", &members, &[claim(&key, Some("b/1"), 3)], &[&key]);
    assert_eq!(dead.claim, std::slice::from_ref(&key), "b/1 is not among the live members");
    let members = [member("a/1", "a", 40), member("b/1", "b", 40)];
    let (_, bs) = split("a", &["a", "b"]);
    let alive = plan("a/1", &members, &[claim(&bs, Some("b/1"), 3)], &[&bs]);
    assert_eq!(alive, Plan::default());
}

#[test]
fn a_key_that_belongs_elsewhere_is_handed_over_and_others_are_kept() {
    let members = [member("a/1", "a", 40), member("b/1", "b", 40)];
    let (mine, theirs) = split("a", &["a", "b"]);
    let claims = [claim(&mine, Some("a/1"), 2), claim(&theirs, Some("a/1"), 5)];
    let plan = plan("a/1", &members, &claims, &[&mine, &theirs]);
    assert_eq!(plan.keep, [(mine, 2)]);
    assert_eq!(plan.hand_over, [(theirs, 5)]);
}

#[test]
fn a_restarted_replica_gets_its_names_share_while_its_old_lease_runs() {
    let members = [member("a/1", "a", 40), member("a/2", "a", 45), member("b/1", "b", 40)];
    let (mine, _) = split("a", &["a", "b"]);
    let claims = [claim(&mine, Some("a/1"), 1)];
    assert_eq!(plan("a/2", &members, &claims, &[&mine]), Plan::default(), "a/1 still holds it");
    assert_eq!(
        plan("a/1", &members, &claims, &[&mine]).hand_over,
        [(mine, 1)],
        "the old incarnation gives way to the new one"
    );
}

#[test]
fn claims_on_deleted_keys_are_forgotten() {
    let members = [member("a/1", "a", 40)];
    let plan = plan("a/1", &members, &[claim("gone", Some("a/1"), 1)], &[]);
    assert_eq!(plan.unknown, ["gone"]);
}

#[test]
fn jobs_survive_their_notification() {
    let jobs = vec![
        ("uid-1".to_string(), JobRef { due_at: 5, job_id: 7, accepted_at: 3, partition: None }),
        (
            "uid-2".to_string(),
            JobRef { due_at: 9, job_id: 8, accepted_at: 9, partition: Some(PartitionKey(-4)) },
        ),
    ];
    let payload = encode_jobs(&jobs);
    assert_eq!(decode_jobs(&payload), jobs);
    let longest = (
        "f".repeat(36),
        JobRef {
            due_at: i64::MAX / 1000,
            job_id: i64::MAX,
            accepted_at: 0,
            partition: Some(PartitionKey(i64::MIN)),
        },
    );
    assert!(encode_jobs(&vec![longest; JOBS_PER_NOTICE]).len() < 8000, "a full notification fits");
    assert!(decode_jobs("garbage\nuid 1 x 3\n").is_empty());
}
