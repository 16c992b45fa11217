//! Hookline as users run it: the image built from the Dockerfile (`hack/image.sh`), installed with
//! the Helm chart onto the test cluster's real node (`hack/cluster.sh up --node`), with a producer
//! and a receiver as pods. A producer publishes through the ingest Service with its own
//! ServiceAccount token; the receiver checks every signature with the `standardwebhooks` library.
//!
//! Each install watches only its test's namespace (`watchNamespace`), so it leaves the other
//! suites' Hooklines, running beside it on the same cluster, alone; it delivers over plain HTTP to
//! the pod network (`delivery.allowHttp`, `delivery.allowedCidrs`), as an in-cluster receiver needs.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::{PrivatePostgres, TestEnv, wait_until};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, ServiceAccount};
use kube::api::ListParams;
use kube::runtime::watcher;
use kube::{Api, ResourceExt};
use serde::Deserialize;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/hookline");
const TOOLS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools");
/// The test node's pod network (hack/node.sh).
const POD_NETWORK: &str = "10.244.0.0/24";
/// The node's own address on that network: where pods reach a database outside the cluster.
const NODE_IP: &str = "10.244.0.1";
/// The receiver's signing secret (Standard Webhooks' documentation example).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw3Wv1bHmSEsk=";

/// What the receiver pod saw (tests/tools/node_receiver.py).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Received {
    ids: Vec<String>,
    completed: Vec<String>,
    bad_signatures: u64,
    max_in_flight: u64,
    in_flight: u64,
}

/// What the producer pod did (tests/tools/node_producer.py).
#[derive(Debug, Deserialize)]
struct Produced {
    accepted: Vec<String>,
    failing: Vec<String>,
    /// Publishes refused or cut off (each retried until accepted), by status (0: no answer).
    refusals: std::collections::BTreeMap<String, u64>,
    done: bool,
}

/// One test's namespace on the node, with the images `hack/test.sh` built.
struct NodeTest {
    env: TestEnv,
    image: String,
    tools_image: String,
    http: reqwest::Client,
    /// Releases installed, uninstalled when the test ends (their ClusterRoles outlive the
    /// namespace).
    releases: std::sync::Mutex<BTreeSet<String>>,
}

impl Drop for NodeTest {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Beside TestEnv's dump: the pods, and what Hookline's pods logged.
            for args in [
                &["get", "pods,pvc,pdb,endpoints", "-o", "wide"][..],
                &["logs", "-l", "app.kubernetes.io/name=hookline", "--prefix", "--tail=40"][..],
            ] {
                let out = self.env.kubectl_output(args);
                eprintln!("--- kubectl {args:?} ---\n{}", String::from_utf8_lossy(&out.stdout));
            }
        }
        for release in self.releases.lock().map(|r| r.clone()).unwrap_or_default() {
            let _ = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/hack/helm.sh"))
                .args(["uninstall", &release, "--namespace", self.ns(), "--wait=false"])
                .env("KUBECONFIG", &self.env.kubeconfig)
                .output();
        }
    }
}

impl NodeTest {
    async fn start(name: &str) -> NodeTest {
        let image = std::env::var("HOOKLINE_TEST_IMAGE").unwrap_or_else(|_| {
            panic!(
                "{name} needs Hookline's image on the test node: `hack/cluster.sh up --node`, then \
                 export HOOKLINE_TEST_IMAGE=$(hack/image.sh | tail -n 1) and \
                 HOOKLINE_TEST_TOOLS_IMAGE=$(hack/image.sh tools | tail -n 1); `hack/test.sh` does all that"
            )
        });
        let tools_image =
            std::env::var("HOOKLINE_TEST_TOOLS_IMAGE").expect("HOOKLINE_TEST_TOOLS_IMAGE (see above)");
        let env = TestEnv::with_crds(name).await;
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(env.client.clone());
        let ready = nodes.list(&ListParams::default()).await.expect("list nodes").items.iter().any(|n| {
            n.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        assert!(ready, "{name} needs a Ready node: start the control plane with `hack/cluster.sh up --node`");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client");
        let test = NodeTest { env, image, tools_image, http, releases: Default::default() };
        // Pods need their ServiceAccount's token Secret, which the token controller makes.
        test.service_account("default").await;
        test
    }

    fn ns(&self) -> &str {
        &self.env.namespace
    }

    /// A release name of this test's own: the chart's cluster-wide objects (ClusterRoles) are
    /// named after it, and tests run side by side.
    fn release(&self, name: &str) -> String {
        format!("{name}{}", &self.ns()[self.ns().len() - 8..])
    }

    fn helm(&self, args: &[&str]) -> String {
        crate::support::hack("helm.sh", args, &[("KUBECONFIG", self.env.kubeconfig.as_os_str())])
    }

    /// `helm upgrade --install` of the chart with the test's image and `sets`; waits until the
    /// release's pods are Ready (through the chart's own probes).
    fn install(&self, release: &str, sets: &[&str]) {
        self.releases.lock().expect("releases").insert(release.to_string());
        let (repository, tag) = self.image.rsplit_once(':').expect("repository:tag");
        let mut args = vec![
            "upgrade".to_string(),
            "--install".into(),
            release.into(),
            CHART.into(),
            "--namespace".into(),
            self.ns().into(),
            "--wait".into(),
            "--timeout=4m".into(),
        ];
        let image_sets = [
            format!("image.repository={repository}"),
            format!("image.tag={tag}"),
            "image.pullPolicy=Never".into(),
            format!("watchNamespace={}", self.ns()),
            "delivery.allowHttp=true".into(),
            format!("delivery.allowedCidrs={{{POD_NETWORK}}}"),
        ];
        for set in image_sets.iter().map(String::as_str).chain(sets.iter().copied()) {
            args.extend(["--set".into(), set.to_string()]);
        }
        self.helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
    }

    /// Wait until ServiceAccount `name` has its token Secret (pods using it are refused before).
    async fn service_account(&self, name: &str) {
        let api: Api<ServiceAccount> = self.env.api();
        wait_until(&format!("ServiceAccount {name} has a token"), Duration::from_secs(60), || async {
            api.get(name).await.ok()?.secrets.filter(|s| !s.is_empty()).map(|_| ())
        })
        .await;
    }

    /// A pod of the test-tools image running `script` from tests/tools (with the reference
    /// Python libraries of `hack/test.sh`'s virtualenv on its path); returns its IP once Ready.
    async fn tools_pod(
        &self,
        name: &str,
        script: &str,
        port: u16,
        account: &str,
        vars: &[(&str, &str)],
    ) -> String {
        let python =
            std::env::var("HOOKLINE_TEST_PYTHON").expect("HOOKLINE_TEST_PYTHON (hack/test.sh sets it)");
        let site = std::process::Command::new(&python)
            .args(["-c", "import site; print(site.getsitepackages()[0])"])
            .output()
            .expect("python runs");
        let site = String::from_utf8_lossy(&site.stdout).trim().to_string();
        let probe = if script.contains("receiver") { "/received" } else { "/status" };
        let vars: String =
            vars.iter().map(|(k, v)| format!("    - {{name: {k}, value: \"{v}\"}}\n")).collect();
        self.env.apply(&format!(
            r#"apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {name}}}}}
spec:
  serviceAccountName: {account}
  containers:
  - name: {name}
    image: {image}
    imagePullPolicy: Never
    command: [python3, /tools/{script}]
    env:
    - {{name: PYTHONPATH, value: /pylib}}
    - {{name: NAMESPACE, value: {ns}}}
    - name: WEBHOOK_SECRET
      valueFrom: {{secretKeyRef: {{name: receiver-signing, key: current}}}}
{vars}    readinessProbe: {{httpGet: {{path: {probe}, port: {port}}}, periodSeconds: 1}}
    volumeMounts:
    - {{name: tools, mountPath: /tools, readOnly: true}}
    - {{name: pylib, mountPath: /pylib, readOnly: true}}
  volumes:
  - {{name: tools, hostPath: {{path: {TOOLS}, type: Directory}}}}
  - {{name: pylib, hostPath: {{path: {site}, type: Directory}}}}
"#,
            image = self.tools_image,
            ns = self.ns(),
        ));
        self.ready_pod_ip(name).await
    }

    async fn ready_pod_ip(&self, name: &str) -> String {
        let pods: Api<Pod> = self.env.api();
        wait_until(&format!("pod {name} Ready"), Duration::from_secs(120), || async {
            let pod = pods.get(name).await.ok()?;
            let status = pod.status?;
            let ready = status.conditions?.iter().any(|c| c.type_ == "Ready" && c.status == "True");
            ready.then_some(status.pod_ip?)
        })
        .await
    }

    /// The receiver pod and the Secret it shares with the subscription; returns its IP.
    async fn receiver(&self) -> String {
        self.env.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: receiver-signing}}\nstringData: {{current: \"{SECRET}\"}}\n"
        ));
        self.tools_pod("receiver", "node_receiver.py", 8000, "default", &[]).await
    }

    /// A producer pod publishing as ServiceAccount `producer` through `release`'s ingest Service.
    async fn producer(&self, release: &str, vars: &[(&str, &str)]) -> String {
        self.env.kubectl(&["create", "serviceaccount", "producer"]);
        self.env.allow_publishing("producer");
        self.service_account("producer").await;
        let service = format!("{release}-hookline-ingest");
        let mut vars = vars.to_vec();
        vars.push(("INGEST_SERVICE", &service));
        self.tools_pod("producer", "node_producer.py", 8001, "producer", &vars).await
    }

    /// Subscribe the receiver at `ip` to `node.test.*`; waits until it is Ready.
    async fn subscribe(&self, ip: &str, max_concurrency: u32) {
        self.env.apply(&format!(
            r#"apiVersion: hookline.dev/v1alpha1
kind: WebhookSubscription
metadata: {{name: receiver}}
spec:
  eventTypes: ["node.test.*"]
  endpoint: {{url: "http://{ip}:8000/"}}
  signing: {{secretRef: {{name: receiver-signing}}}}
  delivery: {{maxConcurrency: {max_concurrency}}}
  retryPolicy: {{initialBackoff: 1s, maxBackoff: 5s}}
"#
        ));
        let api: Api<hookline::api::WebhookSubscription> = self.env.api();
        wait_until("the subscription is Ready", Duration::from_secs(90), || async {
            let sub = api.get("receiver").await.ok()?;
            let ready = sub.status?.conditions.into_iter().find(|c| c.type_ == "Ready")?;
            (ready.status == "True").then_some(())
        })
        .await;
    }

    async fn get<T: for<'de> Deserialize<'de>>(&self, url: &str) -> Option<T> {
        self.http.get(url).send().await.ok()?.json().await.ok()
    }

    async fn received(&self, receiver: &str) -> Received {
        let url = format!("http://{receiver}:8000/received");
        wait_until("the receiver answers", Duration::from_secs(10), || self.get(&url)).await
    }

    async fn produced(&self, producer: &str) -> Produced {
        let url = format!("http://{producer}:8001/status");
        wait_until("the producer answers", Duration::from_secs(10), || self.get(&url)).await
    }

    /// Wait until the producer has had `n` events accepted.
    async fn accepted_at_least(&self, producer: &str, n: usize) {
        wait_until(&format!("{n} events accepted"), Duration::from_secs(180), || async {
            (self.produced(producer).await.accepted.len() >= n).then_some(())
        })
        .await;
    }

    /// Stop the producer; returns what it had accepted.
    async fn stop_producer(&self, producer: &str) -> Produced {
        self.http.post(format!("http://{producer}:8001/stop")).send().await.expect("stop the producer");
        wait_until("the producer stops", Duration::from_secs(60), || async {
            let p = self.produced(producer).await;
            p.done.then_some(p)
        })
        .await
    }

    /// The release's Ready pods, by name.
    async fn ready_hookline_pods(&self, release: &str) -> BTreeSet<String> {
        let pods: Api<Pod> = self.env.api();
        let lp = ListParams::default()
            .labels(&format!("app.kubernetes.io/instance={release},app.kubernetes.io/name=hookline"));
        let list = pods.list(&lp).await.expect("list pods");
        list.items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .map(|p| p.name_any())
            .collect()
    }

    /// Wait until `n` pods of the release are Ready and none of them is in `gone`.
    async fn wait_pods_replaced(&self, release: &str, n: usize, gone: &BTreeSet<String>) -> BTreeSet<String> {
        wait_until(&format!("{n} Ready pods, none of {gone:?}"), Duration::from_secs(180), || async {
            let pods = self.ready_hookline_pods(release).await;
            (pods.len() == n && pods.is_disjoint(gone)).then_some(pods)
        })
        .await
    }

    /// Every accepted event that should succeed reached the receiver with a valid signature, and
    /// every one that should fail became exactly one FailedEvent.
    async fn assert_nothing_lost(&self, receiver: &str, produced: &Produced) {
        let failing: BTreeSet<&String> = produced.failing.iter().collect();
        let wanted: BTreeSet<&String> = produced.accepted.iter().filter(|id| !failing.contains(id)).collect();
        wait_until(
            &format!("all {} accepted events delivered", wanted.len()),
            Duration::from_secs(180),
            || async {
                let got = self.received(receiver).await;
                let ids: BTreeSet<&String> = got.ids.iter().collect();
                wanted.iter().all(|id| ids.contains(id)).then_some(())
            },
        )
        .await;
        assert_eq!(self.received(receiver).await.bad_signatures, 0, "every signature verifies");
        let fevs: Api<hookline::api::FailedEvent> = self.env.api();
        let dead =
            wait_until(&format!("{} FailedEvents", failing.len()), Duration::from_secs(120), || async {
                let items = fevs.list(&ListParams::default()).await.ok()?.items;
                (items.len() >= failing.len()).then_some(items)
            })
            .await;
        let ids: Vec<String> = dead.iter().map(|f| f.spec.event.id.clone()).collect();
        let distinct: BTreeSet<&String> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len(), "one FailedEvent per dead letter: {ids:?}");
        assert_eq!(distinct, failing, "the FailedEvents are exactly the events answered 400");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_default_install_keeps_every_event_through_a_force_deleted_pod() {
    let t = NodeTest::start("node-default").await;
    let receiver = t.receiver().await;
    let hl = t.release("hl");
    t.install(&hl, &[]);

    // SQLite on a PersistentVolume of the node's default StorageClass.
    let pvcs: Api<PersistentVolumeClaim> = t.env.api();
    let pvc = pvcs.get(&format!("{hl}-hookline-data")).await.expect("the chart's PVC");
    let spec = pvc.spec.expect("spec");
    assert_eq!(spec.storage_class_name.as_deref(), Some("local"), "the default StorageClass");
    assert_eq!(pvc.status.and_then(|s| s.phase).as_deref(), Some("Bound"));

    t.subscribe(&receiver, 8).await;
    let producer = t.producer(&hl, &[("FAIL_EVERY", "25")]).await;
    t.accepted_at_least(&producer, 100).await;
    let before = t.ready_hookline_pods(&hl).await;
    assert_eq!(before.len(), 1, "one pod: {before:?}");
    let old = before.iter().next().expect("a pod").clone();
    t.env.kubectl(&["delete", "pod", &old, "--grace-period=0", "--force"]);
    t.wait_pods_replaced(&hl, 1, &before).await;
    let at_restart = t.produced(&producer).await.accepted.len();
    t.accepted_at_least(&producer, at_restart + 100).await;
    let produced = t.stop_producer(&producer).await;
    t.assert_nothing_lost(&receiver, &produced).await;

    // What `kubectl` shows: the subscription's status, and Hookline's own log.
    // (Counters restart from the last status write before a force delete, RELIABILITY.md "Not
    // yet covered"; the queue, the dead-letter count and `lastDelivery` are recomputed.)
    let dead = produced.failing.len().to_string();
    wait_until("the subscription's status shows an empty queue and the dead letters", Duration::from_secs(60), || async {
        let shown = t.env.kubectl(&[
            "get",
            "whsub",
            "receiver",
            "-o",
            "jsonpath={.status.deliveryStats.pending} {.status.deadLetters.count} {.status.lastDelivery.eventId}",
        ]);
        shown.starts_with(&format!("0 {dead} ev-")).then_some(())
    })
    .await;
    let listed = t.env.kubectl(&["get", "fev", "-l", "hookline.dev/subscription=receiver", "-o", "name"]);
    assert_eq!(listed.lines().count(), produced.failing.len(), "kubectl lists the FailedEvents: {listed}");
    let log = t.env.kubectl(&["logs", &format!("deployment/{hl}-hookline")]);
    assert!(log.contains("starting controller"), "kubectl logs shows Hookline's log: {log}");
    // The chart's own test publishes through the Service.
    t.helm(&["test", &hl, "--namespace", t.ns(), "--timeout=2m"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_deleted_normally_finishes_its_attempts_and_exits_in_time() {
    let t = NodeTest::start("node-sigterm").await;
    let receiver = t.receiver().await;
    let hl = t.release("hl");
    t.install(&hl, &[]);
    t.subscribe(&receiver, 8).await;
    // Few, slow events: attempts stay in flight for seconds.
    t.producer(&hl, &[("RATE", "2"), ("DELAY_MS", "4000")]).await;
    let pods = t.ready_hookline_pods(&hl).await;
    let name = pods.iter().next().expect("a pod").clone();
    wait_until("an attempt in flight", Duration::from_secs(60), || async {
        (t.received(&receiver).await.in_flight > 0).then_some(())
    })
    .await;
    let in_flight: BTreeSet<String> = {
        let r = t.received(&receiver).await;
        let done: BTreeSet<&String> = r.completed.iter().collect();
        r.ids.iter().filter(|id| !done.contains(id)).cloned().collect()
    };
    assert!(!in_flight.is_empty(), "an attempt is in flight when the pod is deleted");

    // Watch the pod from before the delete, to see its container's last state.
    let pods_api: Api<Pod> = t.env.api();
    let watch =
        watcher(pods_api.clone(), watcher::Config::default().fields(&format!("metadata.name={name}")));
    let watched = tokio::spawn(async move {
        let mut stream = std::pin::pin!(watch);
        while let Some(event) = stream.next().await {
            // After a watch restarts the pod comes again as `InitApply`; its deletion (its
            // last status, the container's end included) as `Delete`.
            let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) | watcher::Event::Delete(pod)) =
                event
            else {
                continue;
            };
            let terminated = pod
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|c| c.into_iter().find(|c| c.name == "hookline"))
                .and_then(|c| c.state)
                .and_then(|s| s.terminated);
            if let Some(t) = terminated {
                return t;
            }
        }
        panic!("the watch ended before the container terminated");
    });
    let grace = pods_api.get(&name).await.expect("pod").spec.and_then(|s| s.termination_grace_period_seconds);
    let deleted = Instant::now();
    t.env.kubectl(&["delete", "pod", &name, "--wait=false"]);
    let terminated = tokio::time::timeout(Duration::from_secs(120), watched)
        .await
        .expect("the container terminates")
        .expect("watch task");
    let took = deleted.elapsed();
    eprintln!("SIGTERM to exit: {took:?}, {terminated:?}");
    assert_eq!(
        terminated.exit_code, 0,
        "exited by itself, not killed at the grace period's end: {terminated:?}"
    );
    let grace = Duration::from_secs(grace.expect("a grace period") as u64);
    assert!(took < grace, "exited within terminationGracePeriodSeconds ({grace:?}): took {took:?}");
    let completed: BTreeSet<String> = t.received(&receiver).await.completed.into_iter().collect();
    assert!(
        in_flight.is_subset(&completed),
        "the attempts in flight at SIGTERM were answered, not cut off: {in_flight:?} vs {completed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_ha_install_delivers_everything_through_deletes_evictions_and_an_upgrade() {
    let t = NodeTest::start("node-ha").await;
    // The database outside the cluster, as a managed one would be, on the node's address.
    let pg = PrivatePostgres::start_with("node-ha", &[("HOOKLINE_POSTGRES_LISTEN", "10.244.0.1/24")]);
    let url = crate::support::fresh_database_on(&pg.url).await.replace("127.0.0.1", NODE_IP);
    t.env.kubectl(&["create", "secret", "generic", "hookline-db", &format!("--from-literal=uri={url}")]);
    let receiver = t.receiver().await;
    let ha = t.release("ha");
    let sets = [
        "store.type=postgres",
        "store.postgres.existingSecret=hookline-db",
        "replicaCount=3",
        "store.postgres.leaseDuration=10s",
    ];
    t.install(&ha, &sets);
    let max_concurrency = 4;
    t.subscribe(&receiver, max_concurrency).await;
    let producer = t.producer(&ha, &[("FAIL_EVERY", "20"), ("RATE", "25"), ("DELAY_MS", "200")]).await;
    t.accepted_at_least(&producer, 100).await;

    // A pod lost at once.
    let pods = t.ready_hookline_pods(&ha).await;
    let victim = pods.iter().next().expect("a pod").clone();
    t.env.kubectl(&["delete", "pod", &victim, "--grace-period=0", "--force"]);
    let mut pods = t.wait_pods_replaced(&ha, 3, &BTreeSet::from([victim])).await;
    // Publishing goes on through the Service; from here on every stop is graceful.
    let resumed = t.produced(&producer).await.accepted.len();
    t.accepted_at_least(&producer, resumed + 25).await;
    let refused_before = t.produced(&producer).await.refusals;

    // A drain, one pod at a time through the Eviction API: the budget holds the second back.
    for _ in 0..3 {
        let mut names = pods.iter();
        let first = names.next().expect("a pod").clone();
        let second = names.next().expect("a second pod").clone();
        assert_eq!(evict(&t, &first), 201, "the first eviction is allowed");
        assert_eq!(evict(&t, &second), 429, "the PodDisruptionBudget holds the second back");
        pods = t.wait_pods_replaced(&ha, 3, &BTreeSet::from([first])).await;
    }

    // A rolling update: a changed value replaces every pod.
    let before = pods.clone();
    let mut upgrade = sets.to_vec();
    upgrade.push("delivery.statusInterval=3s");
    t.install(&ha, &upgrade);
    t.wait_pods_replaced(&ha, 3, &before).await;

    t.accepted_at_least(&producer, t.produced(&producer).await.accepted.len() + 50).await;
    let produced = t.stop_producer(&producer).await;
    // A pod stopped by an eviction or an upgrade leaves the Service before it stops taking
    // events (the chart's shutdownDelay), and closes keep-alive connections as it goes.
    assert_eq!(
        produced.refusals, refused_before,
        "no publish was refused or cut off through evictions and a rolling upgrade"
    );
    t.assert_nothing_lost(&receiver, &produced).await;
    let got = t.received(&receiver).await;
    eprintln!("most attempts in flight at once: {}", got.max_in_flight);
    assert!(
        got.max_in_flight <= u64::from(max_concurrency),
        "at most maxConcurrency in flight across replicas: {}",
        got.max_in_flight
    );
    drop(pg);
}

/// POST an Eviction of pod `name` (policy/v1beta1, as Kubernetes 1.20 serves it) with kubectl,
/// which, unlike kube's client, does not retry a `429`: 201 when allowed, 429 when the budget
/// refuses.
fn evict(t: &NodeTest, name: &str) -> u16 {
    let body = serde_json::json!({
        "apiVersion": "policy/v1beta1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": t.ns()},
    });
    let file = t.env.data_dir().join("eviction.json");
    std::fs::write(&file, body.to_string()).expect("write the eviction");
    let path = format!("/api/v1/namespaces/{}/pods/{name}/eviction", t.ns());
    let out = t.env.kubectl_output(&["create", "--raw", &path, "-f", file.to_str().expect("a path")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() {
        201
    } else if stderr.contains("TooManyRequests") {
        429
    } else {
        panic!("eviction of {name}: {stderr}")
    }
}
