//! The primary dies during writes, and pg_auto_failover promotes its synchronous secondary:
//! the service, whose `DATABASE_URL` names both nodes with `target_session_attrs=read-write`,
//! answers 503 with `Retry-After` meanwhile (never 500), writes again by itself once the
//! secondary is promoted, and every write it acknowledged is there afterwards.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adapters_postgres::testing::TestDatabase;
use api_tests::{PrivateFormation, TestApp};
use reqwest::Method;
use serde_json::json;

/// Acknowledged writes to make in all.
const WRITES: usize = 1_000;
/// After how many acknowledged writes the primary is killed.
const KILL_AFTER: usize = 250;
/// Concurrent writers.
const WRITERS: usize = 4;

/// What the writers saw.
#[derive(Default)]
struct Outcomes {
    /// Each acknowledged device: its owner and its token.
    acknowledged: Vec<(String, String)>,
    /// 503s, each with a `Retry-After`.
    unavailable: usize,
    /// Anything else: status and body.
    unexpected: Vec<(u16, String)>,
    /// When each answer arrived, and whether it acknowledged the write.
    answers: Vec<(Instant, bool)>,
}

impl Outcomes {
    /// When the last failed write was answered, and the first acknowledged after it.
    fn outage_end(&self) -> Option<(Instant, Instant)> {
        let last_failure = self.answers.iter().filter(|(_, ok)| !ok).map(|(at, _)| *at).max()?;
        let recovered = self.answers.iter().filter(|(at, ok)| *ok && *at > last_failure).map(|(at, _)| *at).min()?;
        Some((last_failure, recovered))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_primary_is_failed_over_with_503s_meanwhile_and_no_acknowledged_write_lost() {
    let mut formation = PrivateFormation::start().await;
    let db = Arc::new(TestDatabase::create_on(formation.url("postgres")).await.unwrap());
    let name = db.url().rsplit_once('/').unwrap().1.split('?').next().unwrap().to_owned();
    let app = TestApp::spawn_on(Arc::clone(&db), &[("DATABASE_URL", &formation.url(&name))]).await;
    let mut users = Vec::new();
    for index in 0..WRITERS {
        users.push(app.register(&format!("failover{index}@example.com")).await);
    }

    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let acknowledged = || outcomes.lock().unwrap().acknowledged.len();
    let writers: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(writer, user)| {
            let (client, address, user, outcomes) =
                (app.client.clone(), app.address.clone(), user.clone(), Arc::clone(&outcomes));
            tokio::spawn(async move {
                for attempt in 0.. {
                    if outcomes.lock().unwrap().acknowledged.len() >= WRITES {
                        return;
                    }
                    let token = format!("failover-{writer}-{attempt}");
                    let reply = client
                        .post(format!("{address}/api/v1/users/{user}/devices"))
                        .json(&json!({"token": token, "platform": "android"}))
                        .timeout(Duration::from_secs(30))
                        .send()
                        .await;
                    let (status, retry_after, body) = match reply {
                        Ok(reply) => {
                            let status = reply.status().as_u16();
                            let retry_after = reply.headers().contains_key("retry-after");
                            (status, retry_after, reply.text().await.unwrap_or_default())
                        }
                        Err(error) => (0, false, error.to_string()),
                    };
                    {
                        let mut seen = outcomes.lock().unwrap();
                        seen.answers.push((Instant::now(), status == 201));
                        match status {
                            201 => {
                                seen.acknowledged.push((user.clone(), token));
                            }
                            503 if retry_after => {
                                seen.unavailable += 1;
                            }
                            _ => {
                                seen.unexpected.push((status, body));
                            }
                        }
                    }
                    if status != 201 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();

    while acknowledged() < KILL_AFTER {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let old_primary = formation.primary_port().expect("a primary");
    formation.kill_node(old_primary);
    let killed_at = Instant::now();
    for writer in writers {
        tokio::time::timeout(Duration::from_secs(120), writer)
            .await
            .unwrap_or_else(|_| panic!("writes did not resume within 120 s:\n{}", formation.logs()))
            .unwrap();
    }

    let seen = std::mem::take(&mut *outcomes.lock().unwrap());
    assert!(seen.unexpected.is_empty(), "answers other than 201 or 503 with Retry-After: {:?}", seen.unexpected);
    assert!(seen.unavailable > 0, "no write failed: the primary was not killed during the writes");
    let new_primary = formation.primary_port();
    assert!(new_primary.is_some_and(|port| port != old_primary), "no failover: {new_primary:?}\n{}", formation.logs());
    let (last_failure, recovered) = seen.outage_end().expect("writes resumed after the last failure");
    eprintln!(
        "failover: {} writes acknowledged, {} answered 503; the last failed write was answered {:.1} s after the \
         kill, and writes were acknowledged again {:.1} s after it",
        seen.acknowledged.len(),
        seen.unavailable,
        last_failure.duration_since(killed_at).as_secs_f64(),
        recovered.duration_since(killed_at).as_secs_f64(),
    );

    // Every acknowledged device is on the new primary.
    let mut lost = Vec::new();
    for user in &users {
        let reply = app.get(&format!("/api/v1/users/{user}/devices")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let stored: HashSet<&str> =
            reply.body["data"].as_array().unwrap().iter().filter_map(|device| device["token"].as_str()).collect();
        lost.extend(
            seen.acknowledged
                .iter()
                .filter(|(owner, token)| owner == user && !stored.contains(token.as_str()))
                .cloned(),
        );
    }
    assert!(lost.is_empty(), "{} acknowledged writes lost: {:?}", lost.len(), &lost[..lost.len().min(10)]);
    let reply =
        app.send(Method::PUT, &format!("/api/v1/users/{}/preferences", users[0]), &json!({"email": false})).await;
    assert_eq!(reply.status, 200, "a write after the failover: {}", reply.body);
}
