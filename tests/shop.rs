//! The shop (`manifests/shop.toml`, contract in `docs/SHOP.md`) end to end, as its
//! users see it: the real host binary, a real nats-server (the saga runs over durable
//! JetStream subscriptions, the buckets are JetStream key-value) and the real shop
//! manifest. Each test starts its own nats-server and host so they run in parallel
//! without sharing anything.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use serde_json::{Value, json};
use wasmhive_e2e::{
    BusChoice, Host, HostOptions, NatsServer, Reply, Workspace, client, eventually, get, post_json,
    repo_root, send,
};

/// How long a saga may take to reach its final state. Generous: a debug host, cold
/// starts, and every test of this file running at once on a small machine.
const SAGA: Duration = Duration::from_secs(60);

/// After a host is killed, its unacknowledged messages come back only after the
/// consumer's ack wait (the component's `timeout` + 5 s), so a crash costs more.
const AFTER_CRASH: Duration = Duration::from_secs(150);

/// The real manifest.
fn shop_manifest() -> PathBuf {
    repo_root().join("manifests/shop.toml")
}

/// The real manifest as a TOML table.
fn shop_manifest_table() -> toml::Table {
    let text = std::fs::read_to_string(shop_manifest()).expect("read manifests/shop.toml");
    text.parse::<toml::Table>()
        .expect("manifests/shop.toml is TOML")
}

/// A copy of the real manifest in `ws` with every `source` made absolute and `edit`
/// applied (so a test can change one component and deploy the rest as they are).
fn shop_manifest_copy(ws: &Workspace, edit: impl FnOnce(&mut toml::Table)) -> PathBuf {
    let dir = shop_manifest().parent().unwrap().to_path_buf();
    let mut m = shop_manifest_table();
    let components = m
        .get_mut("components")
        .and_then(|c| c.as_table_mut())
        .expect("[components]");
    for (_, c) in components.iter_mut() {
        let c = c.as_table_mut().expect("component table");
        let source = c["source"].as_str().expect("source").to_string();
        let abs = dir.join(&source);
        let abs = abs.canonicalize().unwrap_or(abs);
        c.insert("source".into(), abs.display().to_string().into());
    }
    edit(&mut m);
    ws.write(
        "shop.toml",
        &toml::to_string(&m).expect("serialize manifest"),
    )
}

/// `components.<name>` of a manifest table.
fn component_table<'a>(m: &'a mut toml::Table, name: &str) -> &'a mut toml::Table {
    m.get_mut("components")
        .and_then(|c| c.as_table_mut())
        .and_then(|c| c.get_mut(name))
        .and_then(|c| c.as_table_mut())
        .unwrap_or_else(|| panic!("no component {name} in manifests/shop.toml"))
}

/// An answer from the shop, whose contract says every body is JSON (and marked so).
struct Resp(Reply);

impl std::ops::Deref for Resp {
    type Target = Reply;

    fn deref(&self) -> &Reply {
        &self.0
    }
}

impl Resp {
    /// The body, which the contract says is always JSON.
    fn json(&self) -> Value {
        assert!(
            self.header("content-type")
                .is_some_and(|t| t.starts_with("application/json")),
            "{self}: content-type {:?}",
            self.header("content-type")
        );
        self.0.json()
    }

    /// Asserts the status and returns the JSON body.
    fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "{self}");
        self.json()
    }
}

impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Points `data_dir`'s compile cache at one directory shared by the shop tests, so
/// the shop's components (the Python one is 18 MB) are compiled once per build of the
/// host, not once per test. Hosts share it safely: an artifact is written under a
/// name of its own and renamed into place. (Tests of the cache itself use their own.)
fn share_compile_cache(data_dir: &std::path::Path) {
    let shared = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("shop-compile-cache");
    std::fs::create_dir_all(&shared).expect("shared compile cache");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&shared, data_dir.join("cache")).expect("link the compile cache");
}

/// A shop: a nats-server and a host running the shop app, with a data dir that
/// survives a host restart.
struct Shop {
    // Fields drop in order: the host before the nats-server before the data dir.
    host: Option<Host>,
    nats: NatsServer,
    opts: HostOptions,
    _data: tempfile::TempDir,
}

impl Shop {
    /// The real manifest.
    fn start() -> Shop {
        Shop::start_manifest(shop_manifest())
    }

    fn start_manifest(manifest: PathBuf) -> Shop {
        let nats = NatsServer::start();
        let data = tempfile::tempdir().expect("tempdir");
        share_compile_cache(data.path());
        let opts = HostOptions {
            manifests: vec![manifest],
            data_dir: Some(data.path().to_path_buf()),
            bus: BusChoice::Nats(nats.url.clone()),
            ..Default::default()
        };
        let host = Host::start_with(opts.clone());
        Shop {
            host: Some(host),
            nats,
            opts,
            _data: data,
        }
    }

    fn host(&self) -> &Host {
        self.host.as_ref().expect("host running")
    }

    /// SIGKILL the host (no cleanup at all).
    fn kill(&mut self) {
        self.host.take().expect("host running").kill();
    }

    /// Starts a new host on the same data dir and NATS; it restores the shop from the
    /// data dir (no manifest on the command line).
    fn restart(&mut self) {
        assert!(self.host.is_none(), "kill the host first");
        self.host = Some(Host::start_with(HostOptions {
            manifests: vec![],
            ..self.opts.clone()
        }));
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = client().request(method, self.host().url(path));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        Resp(send(req).await)
    }

    async fn get(&self, path: &str) -> Resp {
        Resp(get(self.host().url(path)).await)
    }

    async fn post(&self, path: &str, body: &Value) -> Resp {
        Resp(post_json(self.host().url(path), body).await)
    }

    async fn put(&self, path: &str, body: &Value) -> Resp {
        self.call(reqwest::Method::PUT, path, Some(body), &[]).await
    }

    /// Creates a user and returns its id.
    async fn create_user(&self, name: &str) -> String {
        let email = format!("{}@example.com", name.to_lowercase());
        let r = self
            .post("/v1/users", &json!({"name": name, "email": email}))
            .await;
        let user = r.expect(201);
        assert_eq!(user["name"], name, "{r}");
        assert_eq!(user["email"], email.as_str(), "{r}");
        user["id"].as_str().expect("user id").to_string()
    }

    async fn create_product(&self, sku: &str, price_cents: u64) {
        let body = json!({"sku": sku, "name": format!("A {sku}"), "price_cents": price_cents});
        let r = self.post("/v1/products", &body).await;
        let p = r.expect(201);
        assert_eq!(p["sku"], sku, "{r}");
        assert_eq!(p["price_cents"], price_cents, "{r}");
    }

    /// Sets `on_hand` and returns the stock.
    async fn set_stock(&self, sku: &str, quantity: u64) -> Value {
        let r = self
            .put(&format!("/v1/stock/{sku}"), &json!({"quantity": quantity}))
            .await;
        let s = r.expect(200);
        assert_eq!(s["on_hand"], quantity, "{r}");
        s
    }

    async fn stock(&self, sku: &str) -> Value {
        self.get(&format!("/v1/stock/{sku}")).await.expect(200)
    }

    /// Waits until the stock of `sku` is `{on_hand, reserved, available}`.
    async fn stock_becomes(&self, sku: &str, on_hand: u64, reserved: u64) -> Value {
        let want = json!({
            "sku": sku,
            "on_hand": on_hand,
            "reserved": reserved,
            "available": on_hand - reserved,
        });
        eventually(&format!("stock {want}"), SAGA, async || {
            let s = self.stock(sku).await;
            if s == want { Ok(s) } else { Err(s.to_string()) }
        })
        .await
    }

    /// `POST /v1/orders`.
    async fn place_order(&self, user: &str, items: &[(&str, u64)], key: Option<&str>) -> Resp {
        let items: Vec<Value> = items
            .iter()
            .map(|(sku, q)| json!({"sku": sku, "quantity": q}))
            .collect();
        let body = json!({"user_id": user, "items": items});
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        self.call(reqwest::Method::POST, "/v1/orders", Some(&body), &headers)
            .await
    }

    /// Places an order that must be accepted (201, pending) and returns its id.
    async fn order_accepted(&self, user: &str, items: &[(&str, u64)]) -> String {
        let r = self.place_order(user, items, None).await;
        let o = r.expect(201);
        assert_eq!(o["status"], "pending", "{r}");
        o["id"].as_str().expect("order id").to_string()
    }

    async fn order(&self, id: &str) -> Value {
        self.get(&format!("/v1/orders/{id}")).await.expect(200)
    }

    /// Publishes `event` to `subject` through JetStream (as a service's durable
    /// event is) and waits until the stream has stored it.
    async fn publish_event(&self, subject: &str, event: &Value) {
        let c = async_nats::connect(&self.nats.url)
            .await
            .expect("connect to nats");
        async_nats::jetstream::new(c)
            .publish(subject.to_string(), event.to_string().into())
            .await
            .expect("publish")
            .await
            .expect("stored by JetStream");
    }

    /// Runs `wasmhive ARGS` against the host; it must succeed.
    fn cli_ok(&self, args: &[&str]) {
        let out = self.host().cli(args);
        assert!(
            out.status.success(),
            "wasmhive {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until an order known only from its `orders.created` is stored.
    async fn stored(&self, id: &str) {
        eventually(
            &format!("order {id} to be stored from its event"),
            SAGA,
            async || {
                let r = self.get(&format!("/v1/orders/{id}")).await;
                if r.status == 200 {
                    Ok(())
                } else {
                    Err(r.to_string())
                }
            },
        )
        .await;
    }

    /// Waits until the order leaves `pending` and returns it.
    async fn settled(&self, id: &str) -> Value {
        eventually(&format!("order {id} to leave pending"), SAGA, async || {
            let o = self.order(id).await;
            if o["status"] == "pending" {
                Err(o.to_string())
            } else {
                Ok(o)
            }
        })
        .await
    }

    async fn notifications(&self, order: &str) -> Vec<Value> {
        let r = self.get(&format!("/v1/notifications/{order}")).await;
        let n = r.expect(200);
        assert_eq!(n["order_id"], order, "{r}");
        n["notifications"]
            .as_array()
            .unwrap_or_else(|| panic!("{r}: no notifications list"))
            .clone()
    }

    /// Waits for the order's notification, lets the saga go quiet (so a duplicate
    /// would have arrived) and returns all of them.
    async fn notified(&self, order: &str) -> Vec<Value> {
        eventually(&format!("a notification for {order}"), SAGA, async || {
            let n = self.notifications(order).await;
            if n.is_empty() {
                Err("none".into())
            } else {
                Ok(())
            }
        })
        .await;
        self.quiescent().await;
        self.notifications(order).await
    }

    /// Waits until every durable subscriber of the shop has handled and acknowledged
    /// every event (nothing pending, nothing awaiting an ack), and stays so for 300 ms
    /// (a quiet window, to see that nothing else starts): the saga has nothing left to
    /// do, so "nothing else happened" can be asserted.
    async fn quiescent(&self) {
        let c = async_nats::connect(&self.nats.url)
            .await
            .expect("connect to nats");
        let js = async_nats::jetstream::new(c);
        let mut quiet_since: Option<Instant> = None;
        eventually("the saga to go quiet", AFTER_CRASH, async || {
            let stream = js
                .get_stream("WASMHIVE_EVENTS")
                .await
                .map_err(|e| format!("events stream: {e}"))?;
            let consumers: Vec<_> = stream
                .consumers()
                .try_collect()
                .await
                .map_err(|e| format!("consumers: {e}"))?;
            let busy: Vec<String> = consumers
                .iter()
                .filter(|i| i.num_pending > 0 || i.num_ack_pending > 0)
                .map(|i| {
                    format!(
                        "{}: {} pending, {} unacked",
                        i.name, i.num_pending, i.num_ack_pending
                    )
                })
                .collect();
            if !busy.is_empty() {
                quiet_since = None;
                return Err(busy.join("; "));
            }
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= Duration::from_millis(300) {
                Ok(())
            } else {
                Err("quiet only just now".into())
            }
        })
        .await
    }
}

/// The one notification of `order`, checked.
fn single_notification(notes: &[Value], order: &str, user: &str, kind: &str) {
    assert_eq!(
        notes.len(),
        1,
        "exactly one notification for {order}: {notes:#?}"
    );
    let n = &notes[0];
    assert_eq!(n["order_id"], order, "{n}");
    assert_eq!(n["user_id"], user, "{n}");
    assert_eq!(n["kind"], kind, "{n}");
    assert!(
        n["message"].as_str().is_some_and(|m| !m.is_empty()),
        "a message: {n}"
    );
}

fn id_number(id: &str) -> u64 {
    id.strip_prefix('o')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("order ids are o<n>, got {id:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_is_reserved_paid_confirmed_and_notified() {
    let shop = Shop::start();
    let ada = shop.create_user("Ada").await;
    assert_eq!(
        shop.get(&format!("/v1/users/{ada}")).await.expect(200)["name"],
        "Ada"
    );
    shop.create_product("book", 1250).await;
    shop.set_stock("book", 10).await;
    assert_eq!(
        shop.stock("book").await,
        json!({"sku": "book", "on_hand": 10, "reserved": 0, "available": 10})
    );

    let r = shop.place_order(&ada, &[("book", 2)], None).await;
    let order = r.expect(201);
    let id = order["id"].as_str().expect("id").to_string();
    assert_eq!(order["status"], "pending", "{r}");
    assert_eq!(order["user_id"], ada.as_str(), "{r}");
    assert_eq!(order["total_cents"], 2500, "{r}");
    assert_eq!(
        order["items"],
        json!([{"sku": "book", "quantity": 2, "price_cents": 1250}]),
        "{r}"
    );
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/orders/{id}").as_str()),
        "{r}"
    );

    let done = shop.settled(&id).await;
    assert_eq!(done["status"], "confirmed", "{done}");
    assert_eq!(done["total_cents"], 2500, "{done}");
    assert_eq!(done["items"], order["items"], "{done}");

    // Charged the order's total once.
    let r = shop.get(&format!("/v1/payments/{id}")).await;
    let payment = r.expect(200);
    assert_eq!(payment["order_id"], id.as_str(), "{r}");
    assert_eq!(payment["status"], "completed", "{r}");
    assert_eq!(payment["amount_cents"], 2500, "{r}");

    // The books left the shelf: reserved, then committed.
    shop.stock_becomes("book", 8, 0).await;
    let r = shop.get(&format!("/v1/reservations/{id}")).await;
    let reservation = r.expect(200);
    assert_eq!(reservation["status"], "committed", "{r}");
    assert_eq!(
        reservation["items"],
        json!([{"sku": "book", "quantity": 2}]),
        "{r}"
    );

    // Ada got one email saying so.
    let notes = shop.notified(&id).await;
    single_notification(&notes, &id, &ada, "confirmed");
    assert!(
        shop.host().log_contains("email to"),
        "notifications are logged: {}",
        shop.host().logs()
    );
    // And nothing moved after the saga went quiet.
    assert_eq!(shop.order(&id).await["status"], "confirmed");
    assert_eq!(shop.stock("book").await["on_hand"], 8);

    // The digest job counted the confirmed order (one run per message) and
    // summarises the day when run by hand.
    let digest = eventually("the digest to count the order", SAGA, async || {
        let out = shop
            .host()
            .cli_command_then(&["run", "shop", "digest"], &["--day", "today"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains("confirmed orders: 1") {
            Ok(text)
        } else {
            Err(format!("{text}{}", String::from_utf8_lossy(&out.stderr)))
        }
    })
    .await;
    assert!(digest.contains("revenue:          25.00"), "{digest}");
    assert!(digest.contains("book             2 sold"), "{digest}");
    assert!(digest.contains("published on reports.daily"), "{digest}");
    let jobs = shop.host().cli(&["jobs", "shop", "--json"]);
    let jobs: Value = serde_json::from_slice(&jobs.stdout).unwrap();
    let runs = jobs["jobs"][0]["runs"].as_array().unwrap();
    assert!(
        runs.iter()
            .any(|r| r["trigger"] == "message" && r["subject"] == "orders.confirmed"),
        "{jobs}"
    );
    assert_eq!(jobs["jobs"][0]["schedule"], "0 0 7 * * *");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_declined_payment_cancels_the_order_and_gives_the_stock_back() {
    let shop = Shop::start();
    let bob = shop.create_user("Bob").await;
    // 2 x 600.00 = 1,200.00: above the magic amount (1,000.00), so declined.
    shop.create_product("piano", 60_000).await;
    shop.set_stock("piano", 5).await;

    let r = shop.place_order(&bob, &[("piano", 2)], None).await;
    let order = r.expect(201);
    assert_eq!(order["total_cents"], 120_000, "{r}");
    let id = order["id"].as_str().unwrap().to_string();

    let done = shop.settled(&id).await;
    assert_eq!(done["status"], "cancelled", "{done}");

    let r = shop.get(&format!("/v1/payments/{id}")).await;
    let payment = r.expect(200);
    assert_eq!(payment["status"], "failed", "{r}");
    assert_eq!(payment["amount_cents"], 120_000, "{r}");

    // The compensation: the reservation is released, the pianos are back.
    shop.stock_becomes("piano", 5, 0).await;
    let r = shop.get(&format!("/v1/reservations/{id}")).await;
    assert_eq!(r.expect(200)["status"], "released", "{r}");

    let notes = shop.notified(&id).await;
    single_notification(&notes, &id, &bob, "cancelled");
    assert_eq!(shop.order(&id).await["status"], "cancelled");
    assert_eq!(
        shop.stock("piano").await,
        json!({"sku": "piano", "on_hand": 5, "reserved": 0, "available": 5})
    );

    // The stock that came back can be sold: a smaller order goes through.
    let small = shop.order_accepted(&bob, &[("piano", 1)]).await;
    assert_eq!(shop.settled(&small).await["status"], "confirmed");
    shop.stock_becomes("piano", 4, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_beyond_the_stock_is_rejected_and_nothing_is_charged() {
    let shop = Shop::start();
    let cy = shop.create_user("Cy").await;
    shop.create_product("lamp", 4000).await;
    shop.create_product("bulb", 300).await;
    shop.set_stock("lamp", 1).await;
    shop.set_stock("bulb", 50).await;

    // One item short.
    let short = shop.order_accepted(&cy, &[("lamp", 3)]).await;
    // Several items, the first available, the last short: the reservation of the
    // first must be released too.
    let partly = shop.order_accepted(&cy, &[("bulb", 4), ("lamp", 2)]).await;

    for id in [&short, &partly] {
        let done = shop.settled(id).await;
        assert_eq!(done["status"], "rejected", "{done}");
        let notes = shop.notified(id).await;
        single_notification(&notes, id, &cy, "rejected");
        // The saga is over (quiet) and payments never saw the order.
        let r = shop.get(&format!("/v1/payments/{id}")).await;
        assert_eq!(r.status, 404, "nothing charged for a rejected order: {r}");
        let r = shop.get(&format!("/v1/reservations/{id}")).await;
        assert_eq!(r.expect(200)["status"], "rejected", "{r}");
    }
    assert_eq!(
        shop.stock("lamp").await,
        json!({"sku": "lamp", "on_hand": 1, "reserved": 0, "available": 1})
    );
    assert_eq!(
        shop.stock("bulb").await,
        json!({"sku": "bulb", "on_hand": 50, "reserved": 0, "available": 50})
    );

    // What the order service refuses itself never starts a saga.
    let error = |r: &Resp, status: u16| -> String {
        r.expect(status)["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{{\"error\": ...}}: {r}"))
            .to_string()
    };
    let r = shop.place_order("u999", &[("lamp", 1)], None).await;
    assert!(error(&r, 422).contains("unknown user"), "{r}");
    let r = shop.place_order(&cy, &[("nope", 1)], None).await;
    assert!(error(&r, 422).contains("unknown product nope"), "{r}");
    let r = shop.place_order(&cy, &[], None).await;
    error(&r, 400);
    let r = shop.place_order(&cy, &[("lamp", 0)], None).await;
    error(&r, 400);
    assert_eq!(
        shop.stock("lamp").await["available"],
        1,
        "refused orders reserve nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_post_with_the_same_idempotency_key_places_one_order() {
    let shop = Shop::start();
    let dee = shop.create_user("Dee").await;
    shop.create_product("pen", 300).await;
    shop.set_stock("pen", 100).await;

    let first = shop
        .place_order(&dee, &[("pen", 1)], Some("checkout-1"))
        .await;
    let order = first.expect(201);
    assert_ne!(
        first.header("idempotent-replayed"),
        Some("true"),
        "the first answer is not a replay: {first}"
    );
    let id = order["id"].as_str().unwrap().to_string();

    // The client did not hear back and sends it again: the same answer, byte for
    // byte, marked as a replay.
    let again = shop
        .place_order(&dee, &[("pen", 1)], Some("checkout-1"))
        .await;
    assert_eq!(again.status, first.status, "{again}");
    assert_eq!(again.text, first.text, "the stored answer, byte for byte");
    assert_eq!(again.header("idempotent-replayed"), Some("true"), "{again}");

    assert_eq!(shop.settled(&id).await["status"], "confirmed");
    // Still the stored answer after the order moved on.
    let late = shop
        .place_order(&dee, &[("pen", 1)], Some("checkout-1"))
        .await;
    assert_eq!((late.status, &late.text), (first.status, &first.text));
    assert_eq!(late.header("idempotent-replayed"), Some("true"), "{late}");

    // Dee sees one order, and one pen left the shelf.
    shop.notified(&id).await;
    let summary = eventually("Dee's summary to show her order", SAGA, async || {
        let s = shop
            .get(&format!("/v1/order-summary/{dee}"))
            .await
            .expect(200);
        if s["counts"]["confirmed"] == 1 {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await;
    assert_eq!(
        summary["orders"],
        json!([{"id": id, "status": "confirmed", "total_cents": 300}]),
        "{summary}"
    );
    shop.stock_becomes("pen", 99, 0).await;

    // A different key is a different order, and the duplicates used no order id.
    let other = shop
        .place_order(&dee, &[("pen", 2)], Some("checkout-2"))
        .await;
    let second = other.expect(201);
    assert_ne!(other.header("idempotent-replayed"), Some("true"), "{other}");
    let id2 = second["id"].as_str().unwrap().to_string();
    assert_eq!(
        id_number(&id2),
        id_number(&id) + 1,
        "duplicates did not advance the order ids: {id} then {id2}"
    );

    // Several at once with one key: one claims it, the others get the stored answer
    // or 409 (claimed, not answered yet); one order either way.
    let posts = (0..4).map(|_| shop.place_order(&dee, &[("pen", 3)], Some("checkout-3")));
    let answers = futures::future::join_all(posts).await;
    let created: Vec<&Resp> = answers.iter().filter(|r| r.status == 201).collect();
    for r in &answers {
        assert!(r.status == 201 || r.status == 409, "{r}");
    }
    let originals: Vec<&&Resp> = created
        .iter()
        .filter(|r| r.header("idempotent-replayed") != Some("true"))
        .collect();
    assert_eq!(
        originals.len(),
        1,
        "one request created the order: {}",
        answers
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(created.iter().all(|r| r.text == originals[0].text));
    let id3 = originals[0].json()["id"].as_str().unwrap().to_string();
    assert_eq!(id_number(&id3), id_number(&id2) + 1);

    for id in [&id2, &id3] {
        assert_eq!(shop.settled(id).await["status"], "confirmed");
    }
    shop.quiescent().await;
    let s = shop
        .get(&format!("/v1/order-summary/{dee}"))
        .await
        .expect(200);
    assert_eq!(
        s["orders"],
        json!([
            {"id": id, "status": "confirmed", "total_cents": 300},
            {"id": id2, "status": "confirmed", "total_cents": 600},
            {"id": id3, "status": "confirmed", "total_cents": 900},
        ]),
        "{s}"
    );
    shop.stock_becomes("pen", 94, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sagas_cut_by_a_host_crash_complete_after_a_restart() {
    let mut shop = Shop::start();
    let eve = shop.create_user("Eve").await;
    shop.create_product("mug", 500).await;
    shop.set_stock("mug", 100).await;

    // Watch the outcome events on the bus, as another service would.
    let nats = async_nats::connect(&shop.nats.url).await.unwrap();
    let mut confirmed = nats.subscribe("orders.confirmed").await.unwrap();
    nats.flush().await.unwrap();

    // "Mid-saga", made real without test-only code in any component: payments is
    // stopped (`wasmhive stop` holds its messages back), so the first orders get
    // reserved and their `inventory.reserved` waits, delivered to the host but not
    // handled (checked: stock reserved, orders pending). A second batch is placed at
    // once and piles up somewhere between `orders.created` and payments. Then payments
    // is started and the host is SIGKILLed the moment the first `orders.confirmed`
    // shows up on the bus: payments and orders are then busy with the rest, so the
    // crash lands inside handlers at every step of the saga (stock reserved and not
    // paid, paid and not confirmed, confirmed and not committed or notified...). The
    // events seen before the crash prove it cut the batch (typically 1-3 of 16 done).
    let place = |from: u64, to: u64| {
        let shop = &shop;
        let eve = &eve;
        futures::future::join_all((from..=to).map(move |i| async move {
            let quantity = 1 + i % 3;
            let r = shop.place_order(eve, &[("mug", quantity)], None).await;
            let o = r.expect(201);
            (o["id"].as_str().unwrap().to_string(), quantity)
        }))
    };
    shop.cli_ok(&["stop", "shop", "payments"]);
    let held = place(1, 4).await;
    let held_quantity: u64 = held.iter().map(|(_, q)| q).sum();
    shop.stock_becomes("mug", 100, held_quantity).await;
    for (id, _) in &held {
        let r = shop.get(&format!("/v1/reservations/{id}")).await;
        assert_eq!(r.expect(200)["status"], "reserved", "{r}");
        assert_eq!(shop.order(id).await["status"], "pending");
    }
    const N: u64 = 16;
    let burst = place(5, N).await;
    shop.cli_ok(&["start", "shop", "payments"]);
    let first = tokio::time::timeout(SAGA, {
        use futures::StreamExt;
        confirmed.next()
    })
    .await
    .expect("a first order confirmed once payments runs")
    .expect("subscription open");
    shop.kill();
    let orders: Vec<(String, u64)> = held.into_iter().chain(burst).collect();

    // What finished before the crash (the last events may still be on their way: a
    // quiet window of 500 ms ends the list).
    let mut before = std::collections::BTreeSet::new();
    let o: Value = serde_json::from_slice(&first.payload).unwrap();
    before.insert(o["id"].as_str().unwrap_or_default().to_string());
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), {
        use futures::StreamExt;
        confirmed.next()
    })
    .await
    {
        let o: Value = serde_json::from_slice(&m.payload).unwrap();
        before.insert(o["id"].as_str().unwrap_or_default().to_string());
    }
    assert!(
        (before.len() as u64) < N,
        "the crash came before every saga finished ({} of {N} confirmed)",
        before.len()
    );

    // A new host on the same data dir and NATS picks the sagas up where they were.
    shop.restart();
    for (id, _) in &orders {
        let o = eventually(
            &format!("order {id} after the restart"),
            AFTER_CRASH,
            async || {
                let o = shop.order(id).await;
                if o["status"] == "pending" {
                    Err(o.to_string())
                } else {
                    Ok(o)
                }
            },
        )
        .await;
        assert_eq!(o["status"], "confirmed", "{o}");
    }
    let sold: u64 = orders.iter().map(|(_, q)| q).sum();
    shop.stock_becomes("mug", 100 - sold, 0).await;
    shop.quiescent().await;

    // Exactly once where it matters to Eve: each order charged once with its total,
    // the stock taken once, one email per order.
    for (id, quantity) in &orders {
        let r = shop.get(&format!("/v1/payments/{id}")).await;
        let p = r.expect(200);
        assert_eq!(p["status"], "completed", "{r}");
        assert_eq!(p["amount_cents"], 500 * quantity, "{r}");
        let r = shop.get(&format!("/v1/reservations/{id}")).await;
        assert_eq!(r.expect(200)["status"], "committed", "{r}");
        let notes = shop.notifications(id).await;
        single_notification(&notes, id, &eve, "confirmed");
    }
    assert_eq!(
        shop.stock("mug").await,
        json!({"sku": "mug", "on_hand": 100 - sold, "reserved": 0, "available": 100 - sold})
    );
    let s = eventually("Eve's summary", SAGA, async || {
        let s = shop
            .get(&format!("/v1/order-summary/{eve}"))
            .await
            .expect(200);
        if s["counts"]["confirmed"] == N {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await;
    assert_eq!(s["total_spent_cents"], 500 * sold, "{s}");
    assert_eq!(
        s["orders"].as_array().map(Vec::len),
        Some(N as usize),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_order_announced_but_never_stored_still_completes() {
    // orders publishes `orders.created` before it stores the order, so a host dying
    // between the two leaves only the event. That event must be enough: orders stores
    // the order from it, and the saga reserves, charges, confirms and notifies.
    let shop = Shop::start();
    let kim = shop.create_user("Kim").await;
    shop.create_product("lamp", 1500).await;
    shop.set_stock("lamp", 3).await;
    // Far above the ids this test's POSTs would get: nothing else stores it.
    let id = "o900001";
    let r = shop.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(r.status, 404, "{r}");

    let announced = json!({
        "id": id,
        "user_id": kim,
        "items": [{"sku": "lamp", "quantity": 2, "price_cents": 1500}],
        "total_cents": 3000,
        "status": "pending",
    });
    shop.publish_event("orders.created", &announced).await;

    shop.stored(id).await;
    let o = shop.settled(id).await;
    assert_eq!(
        (&o["status"], &o["user_id"]),
        (&json!("confirmed"), &json!(kim)),
        "{o}"
    );
    assert_eq!(o["total_cents"], 3000, "{o}");
    shop.stock_becomes("lamp", 1, 0).await;
    let r = shop.get(&format!("/v1/payments/{id}")).await;
    let p = r.expect(200);
    assert_eq!(
        (&p["status"], &p["amount_cents"]),
        (&json!("completed"), &json!(3000)),
        "{r}"
    );
    single_notification(&shop.notified(id).await, id, &kim, "confirmed");

    // An order placed the normal way is not stored twice or moved back to pending by
    // its own event arriving after the POST stored it.
    let placed = shop.order_accepted(&kim, &[("lamp", 1)]).await;
    assert_eq!(shop.settled(&placed).await["status"], "confirmed");
    shop.quiescent().await;
    assert_eq!(shop.order(&placed).await["status"], "confirmed");
    shop.stock_becomes("lamp", 0, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_outcome_before_its_order_waits_for_it() {
    // With the order announced before it is stored, a saga outcome can reach orders
    // before the order does. It must be retried, not dropped as unknown: here
    // `payments.failed` comes first, and the order ends `cancelled` once its
    // `orders.created` arrives. (Inventory is stopped so that the saga itself does
    // not move the order meanwhile.)
    let shop = Shop::start();
    let mo = shop.create_user("Mo").await;
    shop.cli_ok(&["stop", "shop", "inventory"]);
    let id = "o900020";
    let order = json!({
        "id": id, "user_id": mo, "status": "pending", "total_cents": 300,
        "items": [{"sku": "cup", "quantity": 1, "price_cents": 300}],
    });
    let mut failed = order.clone();
    failed["reason"] = json!("payment declined: test");
    shop.publish_event("payments.failed", &failed).await;
    // orders has seen the outcome and failed it (the order is unknown).
    eventually("orders to fail the early outcome", SAGA, async || {
        let failed = shop.host().component_status("shop", "orders")["failures"]
            .as_u64()
            .unwrap_or(0);
        if failed > 0 {
            Ok(())
        } else {
            Err("no failed invocation yet".into())
        }
    })
    .await;
    let r = shop.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(r.status, 404, "{r}");

    shop.publish_event("orders.created", &order).await;
    shop.stored(id).await;
    let o = shop.settled(id).await;
    assert_eq!(
        (&o["status"], &o["reason"]),
        (&json!("cancelled"), &json!("payment declined: test")),
        "{o}"
    );
}

/// The JetStream key-value bucket behind the shop's `idempotency` bucket (named
/// `WH_shop_orders_idempotency_<hash>`; it exists once a keyed POST has run).
async fn idempotency_bucket(shop: &Shop) -> async_nats::jetstream::kv::Store {
    let js = async_nats::jetstream::new(async_nats::connect(&shop.nats.url).await.unwrap());
    let names: Vec<String> = js.stream_names().try_collect().await.unwrap();
    let stream = names
        .iter()
        .find(|n| n.starts_with("KV_WH_shop_orders_idempotency_"))
        .unwrap_or_else(|| panic!("no idempotency bucket among {names:?}"));
    js.get_key_value(stream.trim_start_matches("KV_"))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_the_host_died_mid_post_places_no_second_order() {
    // A POST with an Idempotency-Key records the priced order in its claim before
    // announcing it. If the host dies before answering, the client's retry (after the
    // claim's lease) must end in that same order, never a second one: the order if
    // it was stored, else the recorded order announced as it was. The dead request's
    // claims are written here as it would have left them.
    let shop = Shop::start();
    let lu = shop.create_user("Lu").await;
    shop.create_product("pen", 200).await;
    shop.set_stock("pen", 10).await;
    let first = shop.place_order(&lu, &[("pen", 1)], Some("warm-up")).await;
    let first = first.expect(201)["id"].as_str().unwrap().to_string();
    assert_eq!(shop.settled(&first).await["status"], "confirmed");
    let claims = idempotency_bucket(&shop).await;
    // What a request records in its claim before announcing: the priced order.
    let priced = |id: &str| {
        json!({
            "id": id, "user_id": lu, "status": "pending", "total_cents": 400,
            "items": [{"sku": "pen", "quantity": 2, "price_cents": 200}],
        })
    };
    let dead_claim = |id: &str| {
        json!({"state": "pending", "claimed_at_ms": 0, "order": priced(id)})
            .to_string()
            .into()
    };

    // 1. The order was announced and stored; only the answer was lost.
    let stored = "o900010";
    shop.publish_event("orders.created", &priced(stored)).await;
    shop.stored(stored).await;
    assert_eq!(shop.settled(stored).await["status"], "confirmed");
    claims
        .put("key/answer-lost", dead_claim(stored))
        .await
        .unwrap();
    let r = shop
        .place_order(&lu, &[("pen", 2)], Some("answer-lost"))
        .await;
    let o = r.expect(201);
    assert_eq!(o["id"], stored, "{r}");
    assert_eq!(r.header("idempotent-replayed"), Some("true"), "{r}");
    assert_eq!(r.header("location"), Some("/v1/orders/o900010"), "{r}");
    // And from now on the key answers that, byte for byte.
    let again = shop
        .place_order(&lu, &[("pen", 2)], Some("answer-lost"))
        .await;
    assert_eq!((again.status, &again.text), (201, &r.text), "{again}");

    // 2. The order was priced and recorded but never stored (the host died around
    // the announcement): the retry announces it exactly as recorded, whatever the
    // retry's own body says.
    let picked = "o900011";
    claims
        .put("key/died-early", dead_claim(picked))
        .await
        .unwrap();
    let r = shop
        .place_order(&lu, &[("pen", 5)], Some("died-early"))
        .await;
    let o = r.expect(201);
    assert_eq!(o, priced(picked), "{r}");
    assert_eq!(shop.settled(picked).await["status"], "confirmed");

    // Neither retry took a new id, and the stock went once to each order.
    let next = shop.order_accepted(&lu, &[("pen", 1)]).await;
    assert_eq!(
        id_number(&next),
        id_number(&first) + 1,
        "{next} after {first}"
    );
    assert_eq!(shop.settled(&next).await["status"], "confirmed");
    shop.stock_becomes("pen", 10 - 1 - 2 - 2 - 1, 0).await;
    for id in [stored, picked] {
        let r = shop.get(&format!("/v1/payments/{id}")).await;
        assert_eq!(r.expect(200)["amount_cents"], 400, "{r}");
    }
}

/// A confirmed order with two items (so two review lookups), for order-details.
async fn order_for_details(shop: &Shop) -> (String, String) {
    let fay = shop.create_user("Fay").await;
    shop.create_product("kettle", 2500).await;
    shop.create_product("teapot", 1800).await;
    shop.set_stock("kettle", 5).await;
    shop.set_stock("teapot", 5).await;
    let id = shop
        .order_accepted(&fay, &[("kettle", 1), ("teapot", 2)])
        .await;
    assert_eq!(shop.settled(&id).await["status"], "confirmed");
    // Wait for the inventory commit so the page's inventory part is final.
    shop.stock_becomes("teapot", 3, 0).await;
    (fay, id)
}

/// Checks the parts of an order-details page that do not come from analytics.
async fn assert_page_intact(shop: &Shop, page: &Value, user: &str, id: &str) {
    assert_eq!(page["order"], shop.order(id).await, "{page:#}");
    assert_eq!(page["user"]["id"], user, "{page:#}");
    assert_eq!(page["user"]["name"], "Fay", "{page:#}");
    assert_eq!(page["payment"]["order_id"], id, "{page:#}");
    assert_eq!(page["payment"]["status"], "completed", "{page:#}");
    assert_eq!(page["payment"]["amount_cents"], 6100, "{page:#}");
    assert_eq!(page["inventory"]["order_id"], id, "{page:#}");
    assert_eq!(page["inventory"]["status"], "committed", "{page:#}");
}

/// The reviews part with analytics healthy: one real entry per item, and the same
/// numbers analytics itself answers.
async fn assert_real_reviews(shop: &Shop, page: &Value) {
    let reviews = page["reviews"].as_array().expect("reviews list");
    assert_eq!(reviews.len(), 2, "{page:#}");
    for (entry, sku) in reviews.iter().zip(["kettle", "teapot"]) {
        assert_eq!(entry["sku"], sku, "{page:#}");
        let direct = shop.get(&format!("/v1/reviews/{sku}")).await.expect(200);
        assert_eq!(entry, &direct, "the page shows what analytics says");
        assert!(entry["rating"].is_number(), "{entry}");
        assert!(entry["reviews"].is_number(), "{entry}");
    }
    assert_eq!(page["degraded"], json!([]), "{page:#}");
}

/// The fallback body the manifest gives order-details for analytics.
fn reviews_fallback() -> Value {
    let mut m = shop_manifest_table();
    let calls = component_table(&mut m, "order-details")
        .get("calls")
        .and_then(|c| c.get("analytics"))
        .cloned()
        .expect("order-details calls analytics");
    let body = calls
        .get("fallback")
        .and_then(|f| f.get("body"))
        .and_then(|b| b.as_str())
        .expect("a fallback body for analytics");
    serde_json::from_str(body).expect("the fallback body is JSON")
}

/// The reviews part when analytics does not answer: one entry per item, the
/// fallback's values with the item's sku, "reviews" in `degraded`.
fn assert_fallback_reviews(page: &Value) {
    let fallback = reviews_fallback();
    let reviews = page["reviews"].as_array().expect("reviews list");
    assert_eq!(reviews.len(), 2, "one entry per item: {page:#}");
    for (entry, sku) in reviews.iter().zip(["kettle", "teapot"]) {
        assert_eq!(
            entry["sku"], sku,
            "the fallback with its sku added: {page:#}"
        );
        match fallback.as_object() {
            Some(fields) => {
                for (k, v) in fields {
                    assert_eq!(&entry[k], v, "fallback field {k}: {page:#}");
                }
            }
            None => assert_eq!(entry, &fallback, "{page:#}"),
        }
    }
    let degraded = page["degraded"].as_array().expect("degraded list");
    assert!(degraded.contains(&json!("reviews")), "{page:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_details_survive_analytics_being_stopped() {
    let shop = Shop::start();
    let (fay, id) = order_for_details(&shop).await;
    let page_path = format!("/v1/order-details/{id}");

    let page = shop.get(&page_path).await.expect(200);
    assert_page_intact(&shop, &page, &fay, &id).await;
    assert_real_reviews(&shop, &page).await;
    assert_eq!(shop.get("/v1/order-details/o999").await.status, 404);

    shop.cli_ok(&["stop", "shop", "analytics"]);
    let r = shop.get("/v1/reviews/kettle").await;
    assert_eq!(r.status, 503, "a stopped component answers 503: {r}");

    // The page still works, with the fallback reviews, several times over (also once
    // the caller's circuit has opened).
    for _ in 0..3 {
        let page = shop.get(&page_path).await.expect(200);
        assert_page_intact(&shop, &page, &fay, &id).await;
        assert_fallback_reviews(&page);
    }

    // Started again, the real reviews come back (after the circuit's open period).
    shop.cli_ok(&["start", "shop", "analytics"]);
    let page = eventually("real reviews again", SAGA, async || {
        let page = shop.get(&page_path).await.expect(200);
        if page["degraded"] == json!([]) {
            Ok(page)
        } else {
            Err(page.to_string())
        }
    })
    .await;
    assert_real_reviews(&shop, &page).await;
    assert_page_intact(&shop, &page, &fay, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn order_details_do_not_wait_for_slow_analytics() {
    const DELAY_MS: u64 = 2000;
    let ws = Workspace::new();
    let manifest = shop_manifest_copy(&ws, |m| {
        let analytics = component_table(m, "analytics");
        let env = analytics
            .entry("env")
            .or_insert_with(|| toml::Value::Table(Default::default()))
            .as_table_mut()
            .expect("env is a table");
        env.insert("DELAY_MS".into(), DELAY_MS.to_string().into());
    });
    let shop = Shop::start_manifest(manifest);
    let (fay, id) = order_for_details(&shop).await;

    // Analytics itself answers, slowly (a lower bound on the documented DELAY_MS).
    let started = Instant::now();
    let direct = shop.get("/v1/reviews/kettle").await.expect(200);
    assert!(
        started.elapsed() >= Duration::from_millis(DELAY_MS),
        "DELAY_MS makes analytics slow: {:?}",
        started.elapsed()
    );
    assert_eq!(direct["sku"], "kettle");

    // The page does not wait for it: the mesh's timeout gives the fallback. Each page
    // answers while a direct request to analytics, started just before it, is still
    // running.
    let analytics = |shop: &Shop| {
        shop.host().component_status("shop", "analytics")["invocations"]
            .as_u64()
            .unwrap()
    };
    let mut directs = Vec::new();
    for _ in 0..3 {
        let before = analytics(&shop);
        let direct = tokio::spawn(get(shop.host().url("/v1/reviews/kettle")));
        eventually(
            "the direct request to start",
            SAGA,
            async || match analytics(&shop) {
                n if n > before => Ok(()),
                n => Err(format!("{n} invocations of analytics")),
            },
        )
        .await;
        let page = shop
            .get(&format!("/v1/order-details/{id}"))
            .await
            .expect(200);
        assert!(
            !direct.is_finished(),
            "the page came after analytics' own answer ({DELAY_MS} ms) to an earlier request"
        );
        assert_page_intact(&shop, &page, &fay, &id).await;
        assert_fallback_reviews(&page);
        directs.push(direct);
    }
    for direct in directs {
        let direct = Resp(direct.await.unwrap());
        assert_eq!(direct.expect(200)["sku"], "kettle", "{direct}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_read_model_catches_up_with_the_orders() {
    let shop = Shop::start();
    let gus = shop.create_user("Gus").await;
    let hal = shop.create_user("Hal").await;
    shop.create_product("sock", 450).await;
    shop.create_product("boot", 9000).await;
    shop.create_product("yacht", 5_000_000).await;
    shop.set_stock("sock", 100).await;
    shop.set_stock("boot", 1).await;
    shop.set_stock("yacht", 3).await;

    // Gus: two confirmed, one cancelled (declined payment), one rejected (no stock);
    // Hal: one confirmed. Placed back to back so the read side sees them interleaved.
    let plan = [
        (&gus, &[("sock", 2)][..], "confirmed"),
        (&gus, &[("yacht", 1)], "cancelled"),
        (&hal, &[("sock", 1), ("boot", 1)], "confirmed"),
        (&gus, &[("boot", 5)], "rejected"),
        (&gus, &[("sock", 3)], "confirmed"),
    ];
    let mut placed = Vec::new();
    for (user, items, _) in &plan {
        placed.push(shop.order_accepted(user, items).await);
    }

    // The write model decides...
    let mut orders: BTreeMap<String, Value> = BTreeMap::new();
    for (id, (_, _, outcome)) in placed.iter().zip(&plan) {
        let o = shop.settled(id).await;
        assert_eq!(o["status"], *outcome, "{o}");
        orders.insert(id.clone(), o);
    }

    // ... and the read model, built only from events, ends up agreeing.
    for (id, o) in &orders {
        let want = json!({
            "id": id,
            "user_id": o["user_id"],
            "total_cents": o["total_cents"],
            "status": o["status"],
        });
        eventually(&format!("order-view of {id} = {want}"), SAGA, async || {
            let r = shop.get(&format!("/v1/order-view/{id}")).await;
            if r.status == 200 && r.json() == want {
                Ok(())
            } else {
                Err(r.to_string())
            }
        })
        .await;
    }
    for user in [&gus, &hal] {
        let mine: Vec<(&String, &Value)> = orders
            .iter()
            .filter(|(_, o)| o["user_id"] == **user)
            .collect();
        let mut ids: Vec<&String> = mine.iter().map(|(id, _)| *id).collect();
        ids.sort_by_key(|id| id_number(id));
        let count = |s: &str| mine.iter().filter(|(_, o)| o["status"] == s).count();
        let want = json!({
            "user_id": user,
            "orders": ids
                .iter()
                .map(|id| json!({
                    "id": id,
                    "status": orders[*id]["status"],
                    "total_cents": orders[*id]["total_cents"],
                }))
                .collect::<Vec<_>>(),
            "counts": {
                "pending": 0,
                "confirmed": count("confirmed"),
                "rejected": count("rejected"),
                "cancelled": count("cancelled"),
            },
            "total_spent_cents": mine
                .iter()
                .filter(|(_, o)| o["status"] == "confirmed")
                .map(|(_, o)| o["total_cents"].as_u64().unwrap())
                .sum::<u64>(),
        });
        eventually(
            &format!("order-summary of {user} = {want}"),
            SAGA,
            async || {
                let r = shop.get(&format!("/v1/order-summary/{user}")).await;
                if r.status == 200 && r.json() == want {
                    Ok(())
                } else {
                    Err(r.to_string())
                }
            },
        )
        .await;
    }
    // Gus: 900 + 1350 confirmed.
    let s = shop
        .get(&format!("/v1/order-summary/{gus}"))
        .await
        .expect(200);
    assert_eq!(s["total_spent_cents"], 2250, "{s}");
    assert_eq!(
        s["counts"],
        json!({"pending": 0, "confirmed": 2, "rejected": 1, "cancelled": 1})
    );

    // Someone who never ordered has an empty summary; an unknown order is 404.
    let r = shop.get("/v1/order-summary/u999").await;
    let empty = r.expect(200);
    assert_eq!(empty["orders"], json!([]), "{r}");
    assert_eq!(
        empty["counts"],
        json!({"pending": 0, "confirmed": 0, "rejected": 0, "cancelled": 0}),
        "{r}"
    );
    assert_eq!(empty["total_spent_cents"], 0, "{r}");
    assert_eq!(shop.get("/v1/order-view/o999").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_event_changes_nothing() {
    // Delivery is at least once: an `orders.created` can arrive again after its saga
    // finished. Every service must recognise it and nothing the user sees may change:
    // no second charge, no second email, no stock taken twice, no status going back.
    let shop = Shop::start();
    let ivy = shop.create_user("Ivy").await;
    shop.create_product("cup", 700).await;
    shop.set_stock("cup", 4).await;
    let r = shop.place_order(&ivy, &[("cup", 3)], None).await;
    let ok_created = r.expect(201);
    let ok = ok_created["id"].as_str().unwrap().to_string();
    assert_eq!(shop.settled(&ok).await["status"], "confirmed");
    let r = shop.place_order(&ivy, &[("cup", 2)], None).await;
    let short_created = r.expect(201);
    let short = short_created["id"].as_str().unwrap().to_string();
    assert_eq!(shop.settled(&short).await["status"], "rejected");
    shop.notified(&ok).await;
    shop.notified(&short).await;
    shop.stock_becomes("cup", 1, 0).await;
    let summary_path = format!("/v1/order-summary/{ivy}");
    let summary = async || shop.get(&summary_path).await.expect(200);
    let before = eventually("the summary to settle", SAGA, async || {
        let s = summary().await;
        if s["counts"]["pending"] == 0 && s["orders"].as_array().map(Vec::len) == Some(2) {
            Ok(s)
        } else {
            Err(s.to_string())
        }
    })
    .await;

    // The same events again, stored in JetStream like the originals.
    let handled = |shop: &Shop| {
        ["inventory", "order-view"].map(|c| {
            shop.host().component_status("shop", c)["invocations"]
                .as_u64()
                .unwrap()
        })
    };
    let handled_before = handled(&shop);
    for created in [&ok_created, &short_created] {
        shop.publish_event("orders.created", created).await;
    }
    shop.quiescent().await;
    let handled_after = handled(&shop);
    for (before, after) in handled_before.iter().zip(&handled_after) {
        assert!(
            after >= &(before + 2),
            "inventory and order-view got both events again: {handled_before:?} -> {handled_after:?}"
        );
    }

    assert_eq!(shop.order(&ok).await["status"], "confirmed");
    assert_eq!(shop.order(&short).await["status"], "rejected");
    let r = shop.get(&format!("/v1/payments/{ok}")).await;
    let p = r.expect(200);
    assert_eq!(
        (&p["status"], &p["amount_cents"]),
        (&json!("completed"), &json!(2100)),
        "{r}"
    );
    let r = shop.get(&format!("/v1/payments/{short}")).await;
    assert_eq!(r.status, 404, "{r}");
    assert_eq!(
        shop.stock("cup").await,
        json!({"sku": "cup", "on_hand": 1, "reserved": 0, "available": 1})
    );
    single_notification(&shop.notifications(&ok).await, &ok, &ivy, "confirmed");
    single_notification(&shop.notifications(&short).await, &short, &ivy, "rejected");
    assert_eq!(summary().await, before);
    assert_eq!(
        shop.get(&format!("/v1/order-view/{ok}")).await.expect(200)["status"],
        "confirmed"
    );
}

/// Runs `scripts/mint_token.py ARGS` (which makes `manifests/keys/` on first use) and
/// returns what it printed.
fn mint_token(args: &[&str]) -> String {
    let out = std::process::Command::new("python3")
        .arg(repo_root().join("scripts/mint_token.py"))
        .args(args)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The README's "Securing a deployment" tour: `manifests/shop-secure.toml` is the shop
/// plus its marked auth blocks, and deployed over the running shop it wants a JWT or
/// an API key on the orders routes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_secure_shop_locks_the_orders_routes() {
    let secure_path = repo_root().join("manifests/shop-secure.toml");
    let secure = std::fs::read_to_string(&secure_path).unwrap();
    let mut kept = Vec::new();
    let mut in_block = false;
    for line in secure.lines().skip(2) {
        match line {
            "# --- auth: only in shop-secure.toml ---" => in_block = true,
            "# --- end auth ---" => in_block = false,
            _ if !in_block => kept.push(line.replace("0.1.0-secure", "0.1.0")),
            _ => {}
        }
    }
    let plain = std::fs::read_to_string(shop_manifest()).unwrap();
    let stripped = kept.join("\n") + "\n";
    assert!(
        stripped.replace("\n\n\n", "\n\n") == plain,
        "manifests/shop-secure.toml must be manifests/shop.toml plus its auth blocks"
    );

    let token = mint_token(&["alice", "customer"]);
    let api_keys =
        std::fs::read_to_string(repo_root().join("manifests/keys/api-keys.txt")).unwrap();
    let api_key = api_keys
        .lines()
        .find(|l| !l.starts_with('#'))
        .and_then(|l| l.split_once(':'))
        .map(|(_, k)| k.to_string())
        .unwrap();
    let shop = Shop::start();
    let out = shop.host().cli(&["deploy", secure_path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let before = shop.host().component_status("shop", "orders")["invocations"]
        .as_u64()
        .unwrap();
    let r = shop.get("/v1/orders/no-such-order").await;
    assert_eq!(r.status, 401, "{r}");
    let r = shop
        .call(
            reqwest::Method::POST,
            "/v1/orders",
            Some(&serde_json::json!({})),
            &[("x-api-key", &api_key)],
        )
        .await;
    assert_eq!(r.status, 403, "an API key carries no customer role: {r}");
    assert_eq!(
        shop.host().component_status("shop", "orders")["invocations"]
            .as_u64()
            .unwrap(),
        before,
        "refused requests reached orders"
    );
    // Past the gate, the shop answers for itself.
    let r = shop
        .call(
            reqwest::Method::GET,
            "/v1/orders/no-such-order",
            None,
            &[("x-api-key", &api_key)],
        )
        .await;
    assert_eq!(r.status, 404, "{r}");
    let auth = format!("Bearer {token}");
    let r = shop
        .call(
            reqwest::Method::POST,
            "/v1/orders",
            Some(&serde_json::json!({})),
            &[("authorization", &auth)],
        )
        .await;
    assert!(r.status != 401 && r.status != 403, "{r}");
    assert!(r.header("ratelimit-limit").is_some(), "{:?}", r.0);
    // Other services stay public.
    assert_eq!(shop.get("/v1/products").await.status, 200);
}
