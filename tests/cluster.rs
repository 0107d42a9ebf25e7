//! Several instances as one service (SPEC 7), against a real `redis-server` started on a free port
//! (`tests/common/redis.rs`) and one simulator that every instance shares: the lock and membership
//! scripts on their own; a chart fetched on one instance served by the others without a second
//! upstream fetch; identical requests across instances fetched once; an owner that died taken
//! over when its lock expires; Redis stopped and restarted under traffic; nothing secret in Redis
//! and every key expiring; the permit scripts of the connection budget on their own, a burst on
//! three instances within the budget, and the permits of an instance that stopped renewing
//! returning within their lease; with Redis down, an instance keeping to its share of the budget.
//!
//! Waits are on conditions (stats, the simulator's counters), with deadlines; nothing is timed.

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::join_all;
use redis::AsyncCommands;
use serde_json::Value;
use tokio::time::Instant;

use chartgate::cluster::budget::{self, Grant};
use chartgate::cluster::keys;
use chartgate::cluster::lock::{self, Claim, Finish};
use chartgate::cluster::membership;
use common::app::{TestApp, spawn_app_on, start_simulator};
use common::redis::RedisServer;
use common::serve::ServeProcess;

/// How long a condition may take to hold before the test fails.
const WITHIN: Duration = Duration::from_secs(20);

/// Polls `/api/connections/stats` of `app` until `cond` holds on its `cluster` object.
async fn wait_cluster(app: &TestApp, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WITHIN;
    let token = app.settings.server.api_token.expose();
    let path = format!("/api/connections/stats?access_token={token}");
    loop {
        let (status, stats) = app.get_json(&path).await;
        assert_eq!(status, 200, "{stats}");
        if cond(&stats["cluster"]) {
            return stats;
        }
        assert!(Instant::now() < deadline, "{what}: {stats}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Three (or `n`) instances on `sim` sharing `redis`, each told apart by its instance id.
async fn instances(
    n: usize,
    sim: &chartgate_simulator::Simulator,
    redis_url: &str,
    configure: impl Fn(&mut chartgate::config::Settings),
) -> Vec<TestApp> {
    let mut apps = Vec::new();
    for i in 0..n {
        apps.push(
            spawn_app_on(sim, |s| {
                s.cluster.redis_url = chartgate::config::Secret::new(redis_url);
                s.cluster.instance_id = format!("test-{}", (b'a' + i as u8) as char);
                s.manager.reconnect_backoff_ms = 50;
                configure(s);
            })
            .await,
        );
    }
    for app in &apps {
        wait_cluster(app, "the instance joined", |c| {
            c["redis"] == "ok" && c["instances"] == n as u64
        })
        .await;
    }
    apps
}

/// A real Redis, a simulator set up by `sim`, and `n` instances on both set up by `configure`;
/// `None` (the test then passes with a notice) when `redis-server` is not installed and neither
/// `CI` nor `CHARTGATE_REQUIRE_REDIS` asks for it.
async fn cluster(
    n: usize,
    sim: impl FnOnce(&mut chartgate_simulator::SimulatorSettings),
    configure: impl Fn(&mut chartgate::config::Settings),
) -> Option<(RedisServer, chartgate_simulator::Simulator, Vec<TestApp>)> {
    let redis = RedisServer::start()?;
    let sim = start_simulator(sim).await;
    let apps = instances(n, &sim, &redis.url(), configure).await;
    Some((redis, sim, apps))
}

/// Stops every instance gracefully (each gives back its permits and leaves the membership).
async fn stop_all(apps: Vec<TestApp>) {
    for app in apps {
        app.stopper.stop().await;
    }
}

/// `/api/chart-data` of `query` on `app`: the status and body.
async fn chart(app: &TestApp, query: &str) -> (u16, Value) {
    app.get_json(&format!("/api/chart-data?{query}")).await
}

#[actix_web::test]
async fn lock_scripts_are_owner_checked_and_expire() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut conn = redis.connect().await;
    let ttl = Duration::from_secs(30);
    let key = "chartgate:lock:{NSE:TCS:1D:300}";
    let (a, b) = (lock::new_token("a"), lock::new_token("b"));
    assert_ne!(a, b, "tokens are unique");

    assert_eq!(
        lock::acquire(&mut conn, key, &a, ttl).await.unwrap(),
        Claim::Owner
    );
    match lock::acquire(&mut conn, key, &b, ttl).await.unwrap() {
        Claim::Held { expires_in } => assert!(expires_in <= ttl && expires_in > Duration::ZERO),
        other => panic!("the second claim should see the lock held: {other:?}"),
    }
    // Only the owner renews or releases.
    assert!(!lock::renew(&mut conn, key, &b, ttl).await.unwrap());
    assert!(!lock::release(&mut conn, key, &b).await.unwrap());
    let holder: String = conn.get(key).await.unwrap();
    assert_eq!(holder, a, "a stranger's release left the lock alone");
    assert!(lock::renew(&mut conn, key, &a, ttl).await.unwrap());
    let pttl: i64 = conn.pttl(key).await.unwrap();
    assert!(pttl > 0 && pttl <= 30_000, "{pttl}");
    assert!(lock::release(&mut conn, key, &a).await.unwrap());
    assert!(!conn.exists::<_, bool>(key).await.unwrap());

    // An owner that dies stops renewing: its lock expires and another takes over.
    assert_eq!(
        lock::acquire(&mut conn, key, &a, Duration::from_millis(100))
            .await
            .unwrap(),
        Claim::Owner
    );
    let deadline = Instant::now() + WITHIN;
    loop {
        match lock::acquire(&mut conn, key, &b, ttl).await.unwrap() {
            Claim::Owner => break,
            Claim::Held { expires_in } => {
                assert!(expires_in <= Duration::from_millis(100));
                assert!(Instant::now() < deadline, "the dead owner's lock expired");
                tokio::time::sleep(expires_in).await;
            }
            Claim::Vanished => {}
        }
    }
    // A lock set by hand without an expiry is given one rather than blocking the chart forever.
    let stray = "chartgate:lock:{NSE:STRAY:1D:300}";
    let _: () = conn.set(stray, "by-hand").await.unwrap();
    assert!(matches!(
        lock::acquire(&mut conn, stray, &a, ttl).await.unwrap(),
        Claim::Held { .. }
    ));
    let pttl: i64 = conn.pttl(stray).await.unwrap();
    assert!(pttl > 0, "{pttl}");
    // ... and the late owner can no longer touch it.
    assert!(!lock::renew(&mut conn, key, &a, ttl).await.unwrap());
    assert!(!lock::release(&mut conn, key, &a).await.unwrap());

    // finish: caches both formats with the TTL, releases an owned lock, publishes after that.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.psubscribe("chartgate:done:*").await.unwrap();
    let mut notices = pubsub.into_on_message();
    let channel = "chartgate:done:{NSE:TCS:1D:300}";
    let (objects, columns) = (
        "chartgate:chart:{NSE:TCS:1D:300}:objects",
        "chartgate:chart:{NSE:TCS:1D:300}:columns",
    );
    let owned = lock::finish(
        &mut conn,
        Finish {
            lock_key: key,
            token: &b,
            chart: Some([(objects, b"\"bars\":[]"), (columns, b"\"bars\":{}")]),
            ttl: Duration::from_secs(60),
            channel,
            message: "ok",
        },
    )
    .await
    .unwrap();
    assert!(owned);
    assert!(!conn.exists::<_, bool>(key).await.unwrap(), "released");
    let notice = tokio::time::timeout(WITHIN, notices.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(notice.get_channel_name(), channel);
    assert_eq!(notice.get_payload::<String>().unwrap(), "ok");
    for k in [objects, columns] {
        let pttl: i64 = conn.pttl(k).await.unwrap();
        assert!(pttl > 0 && pttl <= 60_000, "{k}: {pttl}");
    }
    // A finish by a token that no longer owns the lock leaves the new owner's lock.
    assert_eq!(
        lock::acquire(&mut conn, key, &a, ttl).await.unwrap(),
        Claim::Owner
    );
    let owned = lock::finish(
        &mut conn,
        Finish {
            lock_key: key,
            token: &b,
            chart: None,
            ttl: Duration::from_secs(60),
            channel,
            message: "{\"code\":\"unknown_symbol\",\"message\":\"m\"}",
        },
    )
    .await
    .unwrap();
    assert!(!owned);
    let holder: String = conn.get(key).await.unwrap();
    assert_eq!(holder, a);
}

#[actix_web::test]
async fn membership_counts_live_announcements_only() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut conn = redis.connect().await;
    let long = Duration::from_secs(30);
    assert_eq!(membership::announce(&mut conn, "a", long).await.unwrap(), 1);
    assert_eq!(membership::announce(&mut conn, "b", long).await.unwrap(), 2);
    // Renewing is not joining twice.
    assert_eq!(membership::announce(&mut conn, "a", long).await.unwrap(), 2);
    membership::leave(&mut conn, "b").await.unwrap();
    assert_eq!(membership::count(&mut conn).await.unwrap(), 1);
    // An instance that stops renewing drops out once its announcement expires.
    membership::announce(&mut conn, "c", Duration::from_millis(50))
        .await
        .unwrap();
    let deadline = Instant::now() + WITHIN;
    while membership::count(&mut conn).await.unwrap() != 1 {
        assert!(Instant::now() < deadline, "c's announcement expired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pttl: i64 = conn.pttl("chartgate:instances").await.unwrap();
    assert!(pttl > 0, "the member set itself expires: {pttl}");
}

#[actix_web::test]
async fn a_chart_fetched_on_one_instance_is_served_by_the_others_without_a_fetch() {
    let Some((redis, sim, apps)) = cluster(3, |_| {}, |_| {}).await else {
        return;
    };

    for format in ["objects", "columns"] {
        let query = format!("symbol=NSE:TCS&resolution=1D&bars=120&barsFormat={format}");
        let (status, first) = chart(&apps[0], &query).await;
        assert_eq!(status, 200, "{first}");
        let served = sim.stats().series_served;
        for app in &apps[1..] {
            let (status, other) = chart(app, &query).await;
            assert_eq!(status, 200, "{other}");
            assert_eq!(other["cached"], true, "from the shared cache");
            assert_eq!(other["bars"], first["bars"], "the same bars");
            assert_eq!(other["metadata"], first["metadata"]);
        }
        assert_eq!(
            sim.stats().series_served,
            served,
            "no second upstream fetch"
        );
    }
    assert_eq!(sim.stats().series_served, 1, "one fetch for both formats");
    // Each instance counts what it did: one miss on the first, hits on the others.
    let misses: Vec<u64> = join_all(apps.iter().map(|a| a.conn_stats()))
        .await
        .iter()
        .map(|s| s["cache"]["misses"].as_u64().unwrap())
        .collect();
    assert_eq!(misses, [1, 0, 0]);

    // Formula stock lists too.
    let (status, list) = apps[1]
        .get_json("/api/formula-results?formula=breakouts")
        .await;
    assert_eq!(status, 200);
    let mut conn = redis.connect().await;
    let stored: Option<String> = conn.get("chartgate:formula:breakouts").await.unwrap();
    let stored: Value = serde_json::from_str(&stored.expect("the list is shared")).unwrap();
    assert_eq!(stored, list);
    let (_, again) = apps[2]
        .get_json("/api/formula-results?formula=breakouts")
        .await;
    assert_eq!(again, list);

    let stats = apps[2].conn_stats().await;
    assert_eq!(stats["cluster"]["instanceId"], "test-c");
    assert_eq!(stats["cluster"]["instances"], 3);
    assert_eq!(stats["cluster"]["budget"], 10, "pool.max_connections");
    assert_eq!(stats["cluster"]["redis"], "ok");
    assert!(stats["cluster"]["upstreamConnections"].is_u64());
    stop_all(apps).await;
}

#[actix_web::test]
async fn identical_requests_across_three_instances_are_fetched_once() {
    // Slow answers, so the nine requests overlap.
    let Some((redis, sim, apps)) = cluster(3, |s| s.faults.latency_ms = 400, |_| {}).await else {
        return;
    };
    let query = "symbol=NSE:INFY&resolution=1W&bars=200";
    let answers = join_all((0..9).map(|n| chart(&apps[n % 3], query))).await;
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["bars"], answers[0].1["bars"]);
    }
    assert_eq!(sim.stats().series_served, 1, "fetched once in the cluster");
    let stats = join_all(apps.iter().map(|a| a.conn_stats())).await;
    let sum = |field: &str| -> u64 {
        stats
            .iter()
            .map(|s| s["cache"][field].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum("misses"), 1, "{stats:?}");
    // The other eight joined a fetch in flight (here or on another instance) or found it done.
    assert_eq!(sum("joined") + sum("hits"), 8, "{stats:?}");
    // No lock is left behind.
    let mut conn = redis.connect().await;
    let locks: Vec<String> = conn.keys("chartgate:lock:*").await.unwrap();
    assert!(locks.is_empty(), "{locks:?}");
    stop_all(apps).await;
}

#[actix_web::test]
async fn a_lock_whose_owner_died_is_taken_over_when_it_expires() {
    let Some((redis, sim, apps)) = cluster(
        2,
        |_| {},
        |s| {
            s.upstream.request_timeout_ms = 1500;
        },
    )
    .await
    else {
        return;
    };
    // An owner that took the lock and died: nobody renews it, nobody announces its end.
    let mut conn = redis.connect().await;
    let _: () = redis::cmd("SET")
        .arg("chartgate:lock:{NSE:SBIN:1D:300}")
        .arg("dead-instance:0")
        .arg("PX")
        .arg(1500)
        .query_async(&mut conn)
        .await
        .unwrap();
    let (status, body) = chart(&apps[1], "symbol=NSE:SBIN").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.stats().series_served, 1, "taken over and fetched");
    let (status, body) = chart(&apps[0], "symbol=NSE:SBIN").await;
    assert_eq!((status, &body["cached"]), (200, &Value::Bool(true)));
    assert_eq!(sim.stats().series_served, 1);
    stop_all(apps).await;
}

#[actix_web::test]
async fn redis_stopped_mid_traffic_fails_no_request_and_is_rejoined_without_a_restart() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let sim = start_simulator(|_| {}).await;
    let apps = instances(2, &sim, &redis.url(), |_| {}).await;
    let symbols = [
        "NSE:TCS",
        "NSE:INFY",
        "NSE:WIPRO",
        "NSE:HDFCBANK",
        "NSE:ITC",
        "NSE:SBIN",
    ];

    // Traffic on both instances while Redis goes away.
    let traffic = join_all(symbols.iter().enumerate().map(|(n, s)| {
        let app = &apps[n % 2];
        async move { chart(app, &format!("symbol={s}&bars=50")).await }
    }));
    let (answers, ()) = tokio::join!(traffic, async { redis.stop() });
    for (status, body) in answers {
        assert_eq!(status, 200, "{body}");
    }
    for app in &apps {
        wait_cluster(app, "stats say down", |c| c["redis"] == "down").await;
    }
    // Down: each serves from its own state; nothing fails.
    for (n, s) in symbols.iter().enumerate() {
        let (status, body) = chart(&apps[(n + 1) % 2], &format!("symbol={s}&bars=60")).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, _) = apps[0]
        .get_json("/api/formula-results?formula=momentum")
        .await;
    assert_eq!(status, 200);

    redis.restart();
    for app in &apps {
        wait_cluster(app, "stats say ok again", |c| c["redis"] == "ok").await;
    }
    // Shared again: fetched on one, served by the other.
    let before = sim.stats().series_served;
    let (status, _) = chart(&apps[0], "symbol=NSE:LT&bars=70").await;
    assert_eq!(status, 200);
    let (status, body) = chart(&apps[1], "symbol=NSE:LT&bars=70").await;
    assert_eq!((status, &body["cached"]), (200, &Value::Bool(true)));
    assert_eq!(sim.stats().series_served, before + 1);
    stop_all(apps).await;
}

#[actix_web::test]
async fn nothing_secret_goes_to_redis_and_every_key_expires() {
    const PASSWORD: &str = "redis-pw-5f1c";
    const API_TOKEN: &str = "api-token-9e2d";
    let Some(redis) = RedisServer::start_with_password(PASSWORD) else {
        return;
    };
    let sim = start_simulator(|_| {}).await;
    let apps = instances(2, &sim, &redis.url(), |s| {
        s.server.api_token = chartgate::config::Secret::new(API_TOKEN);
    })
    .await;
    let auth = |path: &str| format!("{path}&access_token={API_TOKEN}");
    let stream = apps[0]
        .stream(&auth(
            "/api/formula-results-with-charts?formula=breakouts&resolutions=1D",
        ))
        .await;
    assert_eq!(stream.status, 200);
    let (status, _) = apps[1]
        .get_json(&auth("/api/chart-data?symbol=NSE:TCS&barsFormat=columns"))
        .await;
    assert_eq!(status, 200);
    // A live series owned by one instance and relayed by the other: its lock and stream too.
    let live_path =
        auth("/api/formula-results-with-charts?symbols=NSE:TCS&resolutions=1D&live=true");
    let mut followers = Vec::new();
    for app in &apps {
        let mut follower = common::live::LiveStream::open(app.get(&live_path)).await;
        follower.read_history().await;
        followers.push(follower);
    }
    // Either may own it: the first to claim does.
    common::live::wait_until(WITHIN, "the series is shared", || async {
        let s = (live_sources(&apps[0]).await, live_sources(&apps[1]).await);
        (matches!(s, ((1, 0), (0, 1)) | ((0, 1), (1, 0))), s)
    })
    .await;
    let (_, stats) = apps[1]
        .get_json(&format!("/api/connections/stats?access_token={API_TOKEN}"))
        .await;
    assert!(!stats.to_string().contains(PASSWORD), "{stats}");

    let mut conn = redis.connect().await;
    let keys: Vec<String> = conn.keys("*").await.unwrap();
    assert!(
        keys.len() > 2,
        "charts, a formula and the members: {keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.starts_with("chartgate:live:stream:")),
        "the live series' stream: {keys:?}"
    );
    for key in &keys {
        assert!(key.starts_with("chartgate:"), "{key}");
        let ttl: i64 = conn.ttl(key).await.unwrap();
        assert!(ttl > 0, "{key} expires (TTL {ttl})");
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let value: String = match kind.as_str() {
            "string" => conn.get(key).await.unwrap(),
            "zset" => {
                let members: Vec<String> = conn.zrange(key, 0, -1).await.unwrap();
                members.join(",")
            }
            "stream" => {
                let entries: redis::streams::StreamRangeReply = conn.xrange_all(key).await.unwrap();
                format!("{:?}", entries.ids)
            }
            other => panic!("{key}: unexpected type {other}"),
        };
        for secret in [PASSWORD, API_TOKEN, "a1b2c3d4e5f60718"] {
            assert!(!value.contains(secret), "{key} holds a secret");
        }
    }
    stop_all(apps).await;
}

#[test]
fn the_binary_with_a_redis_password_never_logs_it_and_says_down_and_back_once() {
    const PASSWORD: &str = "pw-for-the-log-test-77";
    let Some(mut redis) = RedisServer::start_with_password(PASSWORD) else {
        return;
    };
    // Debug logging is plentiful: the helper reads it all along, so the process never blocks.
    let serve = ServeProcess::start(
        "proc-a",
        [
            ("RUST_LOG", "debug".to_string()),
            ("CHARTGATE__CLUSTER__REDIS_URL", redis.url()),
            ("CHARTGATE__CLUSTER__INSTANCE_ID", "proc-a".to_string()),
            ("CHARTGATE__MANAGER__RECONNECT_BACKOFF_MS", "50".to_string()),
        ],
    );

    serve.wait_redis_state("ok");
    let (status, body) = serve.get("/api/chart-data?symbol=NSE:TCS");
    assert!(status.contains("200"), "{status} {body}");
    redis.stop();
    serve.wait_redis_state("down");
    let (status, _) = serve.get("/api/chart-data?symbol=NSE:INFY");
    assert!(status.contains("200"), "served with Redis down: {status}");
    redis.restart();
    serve.wait_redis_state("ok");
    let (_, stats) = serve.get("/api/connections/stats");
    assert!(!stats.contains(PASSWORD));

    let stderr = serve.stop();
    assert!(
        !stderr.contains(PASSWORD),
        "the password was logged:\n{stderr}"
    );
    let url = format!("redis://:***@127.0.0.1:{}", redis.port);
    assert!(
        stderr.contains(&url),
        "the redacted URL is shown:\n{stderr}"
    );
    assert_eq!(stderr.matches("is down").count(), 1, "said once:\n{stderr}");
    assert_eq!(stderr.matches("is back after").count(), 1, "{stderr}");
    assert!(
        stderr.contains("instance proc-a left the cluster"),
        "{stderr}"
    );
}

#[actix_web::test]
async fn an_abandoned_fetch_releases_its_lock_for_another_instance_at_once() {
    // A's fetch would take a minute; B's, once the feed is fast again, none. Locks too would
    // outlive the client's patience (20 s) if they were left to expire.
    let Some((redis, sim, apps)) = cluster(
        2,
        |s| s.faults.latency_ms = 60_000,
        |s| {
            s.upstream.request_timeout_ms = 60_000;
            s.stream.keep_alive_secs = 1;
        },
    )
    .await
    else {
        return;
    };
    let lock_key = "chartgate:lock:{NSE:ITC:1D:300}";
    let mut conn = redis.connect().await;
    // A's stream starts the fetch and takes the lock...
    let a = apps[0]
        .get("/api/formula-results-with-charts?symbols=NSE:ITC&resolutions=1D")
        .send()
        .await
        .expect("open A's stream");
    let deadline = Instant::now() + WITHIN;
    while !conn.exists::<_, bool>(lock_key).await.unwrap() {
        assert!(Instant::now() < deadline, "A took the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sim.set_faults(chartgate_simulator::Faults::default());
    // ... B asks for the same chart and waits on A's lock; A's client goes away.
    let b = chart(&apps[1], "symbol=NSE:ITC");
    let (b, ()) = tokio::join!(b, async { drop(a) });
    assert_eq!(b.0, 200, "B took over once A let go: {}", b.1);
    let stats = apps[1].conn_stats().await;
    assert_eq!(
        (&stats["cache"]["misses"], &stats["cache"]["joined"]),
        (&Value::from(1), &Value::from(0)),
        "B fetched it itself rather than waiting for A's fetch: {stats}"
    );
    stop_all(apps).await;
}

#[actix_web::test]
async fn the_link_stays_up_across_membership_renewals() {
    // Announcements live 3 s and are renewed every second.
    let Some((redis, _sim, apps)) = cluster(1, |_| {}, |s| s.manager.stale_after_secs = 3).await
    else {
        return;
    };
    let mut conn = redis.connect().await;
    let score = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        async move {
            let s: Option<f64> = conn.zscore("chartgate:instances", "test-a").await.unwrap();
            s.expect("test-a is a member")
        }
    };
    let mut last = score(&mut conn).await;
    let deadline = Instant::now() + WITHIN;
    for renewal in 0..2 {
        loop {
            let now = score(&mut conn).await;
            if now > last {
                last = now;
                break;
            }
            assert!(Instant::now() < deadline, "renewal {renewal} came");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let stats = apps[0].conn_stats().await;
    assert_eq!(
        stats["cluster"]["redis"], "ok",
        "renewals keep it up: {stats}"
    );
    assert_eq!(stats["cluster"]["instances"], 1);
    let metrics = apps[0].metrics().await;
    assert!(
        metrics.contains("chartgate_cluster_redis_down_total 0"),
        "never went down: {metrics}"
    );
    assert!(
        metrics.contains("chartgate_cluster_redis_up 1"),
        "{metrics}"
    );
    stop_all(apps).await;
}

#[actix_web::test]
async fn the_budget_is_the_setting_else_the_tokens_claim_else_the_pool_size() {
    // The token page issues JWTs whose max_connections claim is 4.
    let Some((redis, sim, apps)) = cluster(
        2,
        |s| s.faults.max_connections = 4,
        |s| {
            s.upstream.session_id = chartgate::config::Secret::new("sid");
            s.upstream.session_sign = chartgate::config::Secret::new("sign");
        },
    )
    .await
    else {
        return;
    };
    let (status, body) = chart(&apps[0], "symbol=NSE:TCS").await;
    assert_eq!(status, 200, "{body}");
    let stats = apps[0].conn_stats().await;
    assert_eq!(stats["cluster"]["budget"], 4, "the claim: {stats}");
    assert_eq!(stats["cluster"]["upstreamConnections"], 1, "{stats}");
    let configured = spawn_app_on(&sim, |s| {
        s.cluster.redis_url = chartgate::config::Secret::new(redis.url());
        s.cluster.max_upstream_connections = 7;
    })
    .await;
    let stats = wait_cluster(&configured, "joined", |c| c["instances"] == 3).await;
    assert_eq!(stats["cluster"]["budget"], 7, "the setting: {stats}");
    configured.stopper.stop().await;
    stop_all(apps).await;
}

/// A formula stream cut on one instance resumes on another by its last event id: no second
/// `formula-results`, no batch sent again, every chart exactly once in the whole stream, and a
/// `complete` describing all of it (the stock list comes from the shared cache, the rest from the
/// id).
#[actix_web::test]
async fn a_stream_cut_on_one_instance_resumes_on_another_with_every_chart_once() {
    let Some((_redis, _sim, apps)) = cluster(2, |_| {}, |s| s.stream.batch_size = 5).await else {
        return;
    };
    let token = apps[0].settings.server.api_token.expose().to_string();
    let path = format!(
        "/api/formula-results-with-charts?formula=breakouts&resolutions=1D&bars=20&access_token={token}"
    );
    // On the first instance, until two batches are in.
    let mut batches = 0;
    let first = common::app::read_stream_until(apps[0].get(&path), |e| {
        batches += usize::from(e.event == "chart-batch");
        batches == 2
    })
    .await;
    let last_id = first.last_id().expect("an event id").to_string();
    // On the second, from there.
    let rest =
        common::app::read_stream(apps[1].get(&path).insert_header(("Last-Event-ID", last_id)))
            .await;
    assert_eq!(rest.status, 200);
    assert!(
        !rest.names().contains(&"formula-results"),
        "{:?}",
        rest.names()
    );
    assert_eq!(rest.names().last(), Some(&"complete"));
    let mut seen: Vec<String> = Vec::new();
    for batch in first
        .data_of("chart-batch")
        .iter()
        .chain(&rest.data_of("chart-batch"))
    {
        for symbol in batch["data"]["symbols"].as_array().expect("symbols") {
            seen.push(symbol.as_str().expect("a symbol").to_string());
        }
    }
    let stocks = first.data_of("formula-results")[0]["data"]["stocks"]
        .as_array()
        .expect("stocks")
        .len();
    let mut unique = seen.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        (seen.len(), unique.len()),
        (stocks, stocks),
        "every stock once"
    );
    let complete = &rest.data_of("complete")[0]["data"];
    assert_eq!(complete["totalCharts"], stocks as u64, "{complete}");
    stop_all(apps).await;
}

/// A live stream cut on one instance resumes live on another by a live event's id: no history
/// again, and each chart's bars changed since (at least its last bar) before anything else.
#[actix_web::test]
async fn a_live_stream_cut_on_one_instance_resumes_live_on_another() {
    let Some((_redis, _sim, apps)) = cluster(2, |s| s.faults.tick_ms = 50, |_| {}).await else {
        return;
    };
    let token = apps[0].settings.server.api_token.expose().to_string();
    let path = format!(
        "/api/formula-results-with-charts?symbols=NSE:TCS,NSE:INFY&resolutions=1D&bars=10&live=true&access_token={token}"
    );
    let mut bars = 0;
    let first = common::app::read_stream_until(apps[0].get(&path), |e| {
        bars += usize::from(e.event == "bar");
        bars == 4
    })
    .await;
    let last_id = first.last_id().expect("an event id").to_string();
    assert!(last_id.contains(".live."), "{last_id}");
    let mut charts = std::collections::BTreeSet::new();
    let rest = common::app::read_stream_until(
        apps[1].get(&path).insert_header(("Last-Event-ID", last_id)),
        |e| {
            if e.event == "bar" {
                let data: Value = serde_json::from_str(&e.data).expect("JSON");
                charts.insert(data["data"]["symbol"].as_str().unwrap_or("").to_string());
            }
            charts.len() == 2
        },
    )
    .await;
    assert_eq!(rest.status, 200);
    assert!(
        rest.names().iter().all(|n| *n == "bar"),
        "only bars: {:?}",
        rest.names()
    );
    stop_all(apps).await;
}

#[actix_web::test]
async fn permit_scripts_grant_up_to_the_limit_reclaim_lapsed_permits_and_announce_releases() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut conn = redis.connect().await;
    let key = keys::PERMITS;
    let long = Duration::from_secs(30);
    for id in ["a:1", "b:1"] {
        let grant = budget::acquire(&mut conn, key, id, 2, long).await.unwrap();
        assert!(matches!(grant, Grant::Granted { .. }), "{id}: {grant:?}");
    }
    // Beyond the limit: refused, told when the earliest permit lapses.
    match budget::acquire(&mut conn, key, "c:1", 2, long)
        .await
        .unwrap()
    {
        Grant::Refused { retry_in } => assert!(retry_in <= long, "{retry_in:?}"),
        other => panic!("c:1 beyond the limit: {other:?}"),
    }
    // A permit already held is renewed, not counted twice.
    assert_eq!(
        budget::acquire(&mut conn, key, "a:1", 2, long)
            .await
            .unwrap(),
        Grant::Granted { live: 2 }
    );
    assert_eq!(budget::count(&mut conn, key).await.unwrap(), 2);
    let pttl: i64 = conn.pttl(key).await.unwrap();
    assert!(pttl > 0, "the permit set expires: {pttl}");

    // A release is announced to whoever waits for a permit.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(keys::PERMITS_FREED).await.unwrap();
    let freed = budget::release(&mut conn, key, keys::PERMITS_FREED, &["a:1".to_string()])
        .await
        .unwrap();
    assert_eq!(freed, 1);
    let msg = tokio::time::timeout(WITHIN, pubsub.on_message().next())
        .await
        .expect("the release was announced")
        .expect("a message");
    assert_eq!(msg.get_channel_name(), keys::PERMITS_FREED);
    // Releasing what is not held frees nothing.
    let freed = budget::release(&mut conn, key, keys::PERMITS_FREED, &["a:1".to_string()])
        .await
        .unwrap();
    assert_eq!(freed, 0);
    assert!(matches!(
        budget::acquire(&mut conn, key, "c:1", 2, long)
            .await
            .unwrap(),
        Grant::Granted { live: 2 }
    ));

    // Permits nobody renews lapse and are reclaimed; renewed ones stay.
    let short = Duration::from_millis(200);
    budget::renew(&mut conn, key, &["c:1".to_string()], long)
        .await
        .unwrap();
    budget::renew(&mut conn, key, &["b:1".to_string()], short)
        .await
        .unwrap();
    let deadline = Instant::now() + WITHIN;
    loop {
        match budget::acquire(&mut conn, key, "d:1", 2, long)
            .await
            .unwrap()
        {
            Grant::Granted { live } => {
                assert_eq!(live, 2, "b:1 lapsed, c:1 and d:1 live");
                break;
            }
            Grant::Refused { retry_in } => {
                assert!(Instant::now() < deadline, "b:1's permit lapsed");
                tokio::time::sleep(retry_in).await;
            }
        }
    }
}

#[actix_web::test]
async fn a_burst_on_three_instances_never_opens_more_upstream_connections_than_the_budget() {
    let Some((_redis, sim, apps)) = cluster(
        3,
        |s| s.faults.latency_ms = 150,
        |s| {
            s.cluster.max_upstream_connections = 2;
            s.pool.max_connections = 3;
            // One fetch per connection: a burst wants every connection the pool may open.
            s.pool.requests_per_connection = 1;
            s.upstream.request_timeout_ms = 60_000;
            // Idle connections hand their permits back at once, so every instance gets its turn.
            s.manager.idle_timeout_secs = 0;
        },
    )
    .await
    else {
        return;
    };
    let done = std::cell::Cell::new(false);
    let requests = apps.iter().enumerate().flat_map(|(i, app)| {
        (0..6).map(move |j| async move {
            let query = format!("symbol=NSE:S{i}X{j}&bars={}", 50 + j);
            chart(app, &query).await
        })
    });
    let burst = async {
        let answers = join_all(requests).await;
        done.set(true);
        answers
    };
    let (answers, most) = futures_util::join!(burst, common::app::most_connections(&sim, &done));
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    assert!(most >= 1, "the burst was fetched upstream");
    assert!(most <= 2, "at most the budget open at once: {most}");
    stop_all(apps).await;
}

#[actix_web::test]
async fn permits_of_an_instance_that_stopped_renewing_return_within_their_lease() {
    let Some((redis, sim, apps)) = cluster(
        1,
        |_| {},
        |s| {
            s.cluster.max_upstream_connections = 2;
            s.manager.stale_after_secs = 3;
            s.upstream.request_timeout_ms = 60_000;
        },
    )
    .await
    else {
        return;
    };
    // What an instance killed mid-work leaves behind: the whole budget in permits nobody renews,
    // each with the lease an instance gives them (`manager.stale_after_secs`).
    let mut conn = redis.connect().await;
    let lease = Duration::from_secs(3);
    for id in ["dead:1", "dead:2"] {
        let grant = budget::acquire(&mut conn, keys::PERMITS, id, 2, lease)
            .await
            .unwrap();
        assert!(matches!(grant, Grant::Granted { .. }), "{grant:?}");
    }
    wait_cluster(&apps[0], "the dead instance's permits are counted", |c| {
        c["upstreamConnections"] == 2
    })
    .await;
    // The request waits for a permit and gets one once the dead instance's lapse.
    let (status, body) = chart(&apps[0], "symbol=NSE:TCS").await;
    assert_eq!(status, 200, "{body}");
    assert!(sim.stats().connections_open <= 2);
    let live: Vec<String> = conn.zrange(keys::PERMITS, 0, -1).await.unwrap();
    assert!(
        live.iter().all(|id| id.starts_with("test-a:")),
        "only the live instance's permits remain: {live:?}"
    );
    // Stopping gives its permits back (at once, not after their lease).
    stop_all(apps).await;
    let deadline = Instant::now() + WITHIN;
    while budget::count(&mut conn, keys::PERMITS).await.unwrap() != 0 {
        assert!(
            Instant::now() < deadline,
            "the stopped instance gave its permits back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn with_redis_down_each_instance_keeps_to_its_share_of_the_budget() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let sim = start_simulator(|s| s.faults.latency_ms = 150).await;
    let apps = instances(2, &sim, &redis.url(), |s| {
        s.cluster.max_upstream_connections = 4;
        s.pool.max_connections = 3;
        // One fetch per connection: a burst wants every connection the pool may open.
        s.pool.requests_per_connection = 1;
        s.upstream.request_timeout_ms = 60_000;
    })
    .await;
    redis.stop();
    for app in &apps {
        wait_cluster(app, "stats say down", |c| c["redis"] == "down").await;
    }
    // A burst on one instance: its share is 4 / 2 instances, below its own pool's 3.
    let done = std::cell::Cell::new(false);
    let burst = async {
        let answers = join_all((0..8).map(|j| {
            let app = &apps[0];
            async move {
                let query = format!("symbol=NSE:DOWN{j}&bars={}", 40 + j);
                chart(app, &query).await
            }
        }))
        .await;
        done.set(true);
        answers
    };
    let (answers, most) = futures_util::join!(burst, common::app::most_connections(&sim, &done));
    for (status, body) in &answers {
        assert_eq!(*status, 200, "{body}");
    }
    assert!(most >= 1, "the burst was fetched upstream");
    assert!(most <= 2, "at most the local share open at once: {most}");
    stop_all(apps).await;
}

/// `live` of `app`'s stats: (series subscribed upstream here, series relayed from another
/// instance).
async fn live_sources(app: &TestApp) -> (u64, u64) {
    let token = app.settings.server.api_token.expose();
    let (status, stats) = app
        .get_json(&format!("/api/connections/stats?access_token={token}"))
        .await;
    assert_eq!(status, 200, "{stats}");
    let live = &stats["live"];
    (
        live["series"].as_u64().unwrap_or(u64::MAX),
        live["relayed"].as_u64().unwrap_or(u64::MAX),
    )
}

/// Live followers of the same chart on two instances: one upstream live series in the whole
/// cluster (the simulator serves one), owned by the first instance and relayed by the second;
/// both followers get new bars. The owner stops: the other instance takes the series over (its
/// stats say so, the simulator still serves one), and its follower, having never reconnected,
/// ends up with exactly the simulator's chart, no bar missing.
#[actix_web::test]
async fn live_followers_on_two_instances_share_one_upstream_series_and_outlive_its_owner() {
    use common::feed::sim_history;
    use common::live::{LIVE_WAIT, LiveStream, wait_until};
    // A new 1-minute bar every 100 ms (two 50 ms ticks of 30 simulated seconds).
    let Some((_redis, sim, mut apps)) = cluster(
        2,
        |s| {
            s.faults.tick_ms = 50;
            s.faults.time_scale = 600;
        },
        |s| s.manager.stale_after_secs = 3,
    )
    .await
    else {
        return;
    };
    let id = ("NSE:TCS".to_string(), "1".to_string());
    let token = apps[0].settings.server.api_token.expose().to_string();
    let path = format!(
        "/api/formula-results-with-charts?symbols=NSE:TCS&resolutions=1&bars=60&live=true&access_token={token}"
    );
    let mut owners = LiveStream::open(apps[0].get(&path)).await;
    owners.read_history().await;
    wait_until(LIVE_WAIT, "the first instance owns the series", || async {
        let s = live_sources(&apps[0]).await;
        (s == (1, 0), s)
    })
    .await;
    let mut relayed = LiveStream::open(apps[1].get(&path)).await;
    relayed.read_history().await;
    wait_until(LIVE_WAIT, "the second instance relays it", || async {
        let s = live_sources(&apps[1]).await;
        (s == (0, 1), s)
    })
    .await;
    let metrics = apps[1].metrics().await;
    for line in ["chartgate_live_series 0", "chartgate_live_relayed 1"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in:\n{metrics}");
    }
    let appended = |s: &LiveStream| s.view.appended.get(&id).copied().unwrap_or(0);
    let (a0, r0) = (appended(&owners), appended(&relayed));
    owners
        .read_until("new bars on the owner", |s| appended(s) >= a0 + 3)
        .await;
    relayed
        .read_until("new bars through the relay", |s| appended(s) >= r0 + 3)
        .await;
    assert_eq!(sim.stats().live_series, 1, "one upstream series for both");

    let owner = apps.remove(0);
    owner.stopper.stop().await;
    drop(owners);
    wait_until(
        LIVE_WAIT,
        "the second instance took the series over",
        || async {
            let s = live_sources(&apps[0]).await;
            (s == (1, 0), s)
        },
    )
    .await;
    let r1 = appended(&relayed);
    relayed
        .read_until("new bars after the takeover", |s| appended(s) >= r1 + 3)
        .await;
    // The stopped owner's connection closes with it: one series remains upstream.
    wait_until(LIVE_WAIT, "the series moved, not doubled", || async {
        let n = sim.stats().live_series;
        (n == 1, n)
    })
    .await;

    // Freeze the feed, then the follower's chart must become exactly the simulator's.
    sim.set_faults(chartgate_simulator::Faults {
        tick_ms: 3_600_000,
        time_scale: 600,
        ..Default::default()
    });
    let app = &apps[0];
    let deadline = Instant::now() + LIVE_WAIT;
    loop {
        relayed.read_while_busy(Duration::from_millis(300)).await;
        let feed = sim_history(
            &app.settings.upstream.url,
            &app.settings.upstream.origin,
            "NSE:TCS",
            "1",
            60,
        )
        .await;
        if relayed.view.newest(&id, 60) == feed.as_slice() {
            for w in feed.windows(2) {
                assert_eq!(w[1].time - w[0].time, 60, "no bar missing");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the follower's chart never became the feed's"
        );
    }
    assert!(
        relayed.view.out_of_order.is_empty(),
        "{:?}",
        relayed.view.out_of_order
    );
    stop_all(apps).await;
}

/// The live ownership scripts on their own, against the real server: the first claim wins, the
/// owner renews (the stream's expiry with it), nobody else can; a stranger's hand-off changes
/// nothing; the owner's frees the lock and leaves an `h` entry on the stream for the relays; a
/// lock whose owner stopped renewing is claimed by another once it expires.
#[actix_web::test]
async fn live_ownership_scripts_claim_renew_hand_off_and_expire() {
    use chartgate::cluster::live;
    use chartgate::live::SeriesKey;
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let mut conn = redis.connect().await;
    let key = SeriesKey {
        symbol: "NSE:TCS".parse().unwrap(),
        resolution: "1".parse().unwrap(),
    };
    let (owner_key, stream) = (keys::live_owner(&key), keys::live_stream(&key));
    let (a, b) = (lock::new_token("a"), lock::new_token("b"));
    let lease = Duration::from_secs(30);

    assert!(live::own(&mut conn, &key, &a, lease).await.unwrap());
    assert!(!live::own(&mut conn, &key, &b, lease).await.unwrap());
    let holder: String = conn.get(&owner_key).await.unwrap();
    assert_eq!(holder, a);
    // The owner's renewal also renews the stream's expiry (twice the lease).
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("k")
        .arg("u")
        .arg("d")
        .arg("[]")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(live::own(&mut conn, &key, &a, lease).await.unwrap());
    let stream_ttl: i64 = conn.pttl(&stream).await.unwrap();
    assert!(stream_ttl > 30_000 && stream_ttl <= 60_000, "{stream_ttl}");

    assert!(!live::hand_off(&mut conn, &key, &b, lease).await.unwrap());
    assert!(conn.exists::<_, bool>(&owner_key).await.unwrap());
    assert!(live::hand_off(&mut conn, &key, &a, lease).await.unwrap());
    assert!(!conn.exists::<_, bool>(&owner_key).await.unwrap());
    let last: redis::streams::StreamRangeReply =
        conn.xrevrange_count(&stream, "+", "-", 1).await.unwrap();
    let kind: String = redis::from_redis_value_ref(&last.ids[0].map["k"]).unwrap();
    assert_eq!(kind, "h", "the hand-off is on the stream");
    assert!(live::own(&mut conn, &key, &b, lease).await.unwrap());

    // An owner that stops renewing loses the series when its lease runs out.
    let short = Duration::from_millis(100);
    let c = lock::new_token("c");
    assert!(live::hand_off(&mut conn, &key, &b, lease).await.unwrap());
    assert!(live::own(&mut conn, &key, &a, short).await.unwrap());
    assert!(!live::own(&mut conn, &key, &c, lease).await.unwrap());
    // Redis's own expiry: paused time cannot move it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(live::own(&mut conn, &key, &c, lease).await.unwrap());
    assert!(
        !live::own(&mut conn, &key, &a, lease).await.unwrap(),
        "a lost it"
    );
}

/// Reads each stream until two more bars of `id` have begun on it.
async fn read_on(streams: &mut [common::live::LiveStream], id: &common::live::ChartId, what: &str) {
    let appended = |s: &common::live::LiveStream| s.view.appended.get(id).copied().unwrap_or(0);
    for stream in streams {
        let before = appended(stream);
        stream.read_until(what, |s| appended(s) >= before + 2).await;
    }
}

/// Live followers on two instances, then Redis stops: the instance that relayed the series
/// subscribes upstream itself (two series at the simulator) and both followers keep getting
/// bars; a second chart first followed while Redis is down is subscribed by each. Redis comes
/// back: the two agree on one owner per chart again (one series per chart at the simulator, the
/// other instance relaying) and every follower still gets bars.
#[actix_web::test]
async fn with_redis_down_live_series_are_subscribed_by_each_and_shared_again_when_it_is_back() {
    use common::live::{LIVE_WAIT, LiveStream, wait_until};
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let sim = start_simulator(|s| {
        s.faults.tick_ms = 50;
        s.faults.time_scale = 600;
    })
    .await;
    let apps = instances(2, &sim, &redis.url(), |s| s.manager.stale_after_secs = 3).await;
    let id = ("NSE:INFY".to_string(), "1".to_string());
    let token = apps[0].settings.server.api_token.expose().to_string();
    let path = format!(
        "/api/formula-results-with-charts?symbols=NSE:INFY&resolutions=1&bars=30&live=true&access_token={token}"
    );
    let mut streams = Vec::new();
    for app in &apps {
        let mut stream = LiveStream::open(app.get(&path)).await;
        stream.read_history().await;
        streams.push(stream);
    }
    let sources = || async {
        let mut both = Vec::new();
        for app in &apps {
            both.push(live_sources(app).await);
        }
        both
    };
    wait_until(LIVE_WAIT, "one owner, one relay", || async {
        let s = sources().await;
        (s.contains(&(1, 0)) && s.contains(&(0, 1)), s)
    })
    .await;
    read_on(&mut streams, &id, "bars while shared").await;

    redis.stop();
    wait_until(LIVE_WAIT, "each subscribed upstream itself", || async {
        let s = sources().await;
        (s == vec![(1, 0), (1, 0)], s)
    })
    .await;
    wait_until(LIVE_WAIT, "two upstream series", || async {
        let n = sim.stats().live_series;
        (n == 2, n)
    })
    .await;
    read_on(&mut streams, &id, "bars with Redis down").await;
    // A chart first followed while Redis is down, on both: each subscribes it alone, and claims
    // it once Redis is back (with a token of its own, so only one of them wins).
    let other = ("NSE:SBIN".to_string(), "1".to_string());
    let mut later = Vec::new();
    for app in &apps {
        let mut stream = LiveStream::open(app.get(&path.replace("NSE:INFY", "NSE:SBIN"))).await;
        stream.read_history().await;
        later.push(stream);
    }
    wait_until(LIVE_WAIT, "each subscribed the new chart alone", || async {
        let s = sources().await;
        (s == vec![(2, 0), (2, 0)], s)
    })
    .await;

    redis.restart();
    // One owner per chart: two series upstream in all, two relayed.
    wait_until(LIVE_WAIT, "one owner per chart again", || async {
        let s = sources().await;
        let total = s.iter().fold((0, 0), |t, x| (t.0 + x.0, t.1 + x.1));
        (total == (2, 2), s)
    })
    .await;
    wait_until(LIVE_WAIT, "one upstream series per chart again", || async {
        let n = sim.stats().live_series;
        (n == 2, n)
    })
    .await;
    read_on(&mut streams, &id, "bars once shared again").await;
    read_on(&mut later, &other, "bars of the later chart once shared").await;
    for stream in streams.iter().chain(&later) {
        assert!(
            stream.view.out_of_order.is_empty(),
            "{:?}",
            stream.view.out_of_order
        );
    }
    stop_all(apps).await;
}

/// A live series that ends on its owner leaves its last state in the shared tier: another
/// instance, which never followed it, serves that state (newer than the history first fetched)
/// without a fetch.
#[actix_web::test]
async fn a_live_series_that_ends_leaves_its_state_to_every_instance() {
    use common::live::{LiveStream, bars_of};
    let Some((_redis, sim, apps)) = cluster(
        2,
        |s| {
            s.faults.tick_ms = 50;
            s.faults.time_scale = 600;
        },
        |s| s.live.linger_secs = 0,
    )
    .await
    else {
        return;
    };
    let id = ("NSE:SBIN".to_string(), "1".to_string());
    let token = apps[0].settings.server.api_token.expose().to_string();
    let mut follower = LiveStream::open(apps[0].get(&format!(
        "/api/formula-results-with-charts?symbols=NSE:SBIN&resolutions=1&bars=30&live=true&access_token={token}"
    )))
    .await;
    follower.read_history().await;
    let first = follower.view.charts[&id].last().expect("a history").time;
    follower
        .read_until("new bars", |s| {
            s.view.appended.get(&id).copied().unwrap_or(0) >= 3
        })
        .await;
    drop(follower);
    common::live::wait_until(WITHIN, "the series ended", || async {
        let s = live_sources(&apps[0]).await;
        (s == (0, 0), s)
    })
    .await;
    let served = sim.stats().series_served;
    let (status, ended) = chart(&apps[0], "symbol=NSE:SBIN&resolution=1&bars=30").await;
    assert_eq!(status, 200, "{ended}");
    let (status, elsewhere) = chart(&apps[1], "symbol=NSE:SBIN&resolution=1&bars=30").await;
    assert_eq!(status, 200, "{elsewhere}");
    assert_eq!(sim.stats().series_served, served, "no fetch for either");
    let bars = bars_of(&elsewhere["bars"]);
    assert_eq!(bars, bars_of(&ended["bars"]), "the same state on both");
    assert!(
        bars.last().expect("bars").time >= first + 3 * 60,
        "newer than the history"
    );
    stop_all(apps).await;
}

/// `rediss://` with a password: the binary joins a TLS-only Redis whose CA it is given
/// (`SSL_CERT_FILE`, read by the system trust store loader), and its fetch lands in Redis;
/// without that CA it refuses the server's certificate, says Redis is down, and serves anyway.
/// The password shows in neither log.
#[actix_web::test]
async fn the_binary_joins_redis_over_tls_only_when_it_trusts_the_certificate() {
    const PASSWORD: &str = "tls-pw-for-the-test-3c1";
    let Some(redis) = RedisServer::start_tls(PASSWORD) else {
        return;
    };
    let env = |trust: Option<String>| {
        let mut env = vec![
            ("CHARTGATE__CLUSTER__REDIS_URL", redis.url()),
            ("CHARTGATE__MANAGER__RECONNECT_BACKOFF_MS", "50".to_string()),
        ];
        if let Some(ca) = trust {
            env.push(("SSL_CERT_FILE", ca));
        }
        env
    };
    let ca = redis.ca_file().display().to_string();
    let trusting = ServeProcess::start("proc-tls", env(Some(ca)));
    trusting.wait_redis_state("ok");
    let (status, body) = trusting.get("/api/chart-data?symbol=NSE:TCS&bars=20");
    assert!(status.contains("200"), "{status} {body}");
    let conn = redis.connect().await;
    common::live::wait_until(WITHIN, "the chart is in Redis", || {
        let mut conn = conn.clone();
        async move {
            let keys: Vec<String> = conn
                .keys("chartgate:chart:{NSE:TCS:1D:20}:*")
                .await
                .unwrap();
            (keys.len() == 2, keys)
        }
    })
    .await;

    let doubting = ServeProcess::start("proc-untrusting", env(None));
    let deadline = Instant::now() + WITHIN;
    while !doubting.log().contains("is down") {
        assert!(
            Instant::now() < deadline,
            "never said down:\n{}",
            doubting.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (_, stats) = doubting.get("/api/connections/stats");
    assert!(stats.contains("\"redis\":\"down\""), "{stats}");
    let (status, _) = doubting.get("/api/chart-data?symbol=NSE:INFY&bars=20");
    assert!(
        status.contains("200"),
        "served with Redis unreachable: {status}"
    );
    for log in [trusting.stop(), doubting.stop()] {
        assert!(!log.contains(PASSWORD), "the password was logged:\n{log}");
        assert!(log.contains("rediss://:***@127.0.0.1"), "{log}");
    }
}
