//! Integration-test harness: one shared local control plane (started by `hack/cluster.sh up` or
//! `.ci/run`), a fresh namespace per test (dumped on failure, deleted afterwards), the real
//! `hookline` binary as a child process, and polling with a deadline.

pub mod builder;
pub mod cel_cases;
pub mod receiver;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config};

/// Flags for a Hookline that delivers to receivers on loopback over plain HTTP, without the
/// ownership handshake and with fast status writes.
pub const LOCAL: &[&str] = &[
    "--ingest-auth=none",
    "--allow-http",
    "--allow-cidr=127.0.0.0/8",
    "--allow-unverified-endpoints",
    "--status-interval=1s",
];

/// Where the kubeconfig of the local control plane is.
fn kubeconfig_path() -> PathBuf {
    std::env::var_os("HOOKLINE_TEST_KUBECONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cluster/kubeconfig"))
}

/// The shared control plane's kubeconfig. Without one, a test that needs it fails, saying how to
/// start one: it never passes without having run.
fn require_control_plane(test: &str) -> PathBuf {
    let kubeconfig = kubeconfig_path();
    assert!(
        kubeconfig.exists(),
        "{test} needs a Kubernetes control plane and found none at {}.\n\
         Start one with `hack/cluster.sh up` (it writes .cluster/kubeconfig), or point \
         HOOKLINE_TEST_KUBECONFIG at another; or run every test with `hack/test.sh`, which starts \
         its own.",
        kubeconfig.display()
    );
    kubeconfig
}

/// A control plane of one test's own (`hack/cluster.sh` with its own state directory), for tests
/// that stop the API server, which would break every other test on the shared one. Torn down
/// when dropped.
pub struct PrivateControlPlane {
    dir: PathBuf,
}

impl PrivateControlPlane {
    /// Start one. Like every cluster test, it needs the shared control plane to be up (its binaries
    /// and caches are the ones `hack/cluster.sh up` prepared).
    pub fn start(name: &str) -> PrivateControlPlane {
        PrivateControlPlane::start_with(name, &[])
    }

    /// [`PrivateControlPlane::start`], with extra environment for `hack/cluster.sh up`.
    pub fn start_with(name: &str, vars: &[(&str, &str)]) -> PrivateControlPlane {
        require_control_plane(name);
        let plane =
            PrivateControlPlane { dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp").join(name) };
        let mut env = vec![("HOOKLINE_CLUSTER_DIR", plane.dir.as_os_str())];
        env.extend(vars.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))));
        hack("cluster.sh", &["up"], &env);
        plane
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// Stop only kube-apiserver (etcd keeps the data).
    pub fn stop_api_server(&self) {
        self.cluster(&["apiserver-stop"]);
    }

    /// Start kube-apiserver again on the same address; returns once it is ready.
    pub fn start_api_server(&self) {
        self.cluster(&["apiserver-start"]);
    }

    fn cluster(&self, args: &[&str]) {
        hack("cluster.sh", args, &[("HOOKLINE_CLUSTER_DIR", self.dir.as_os_str())]);
    }
}

impl Drop for PrivateControlPlane {
    fn drop(&mut self) {
        tear_down("cluster.sh", "HOOKLINE_CLUSTER_DIR", &self.dir);
    }
}

/// `hack/<script> down` for a private instance whose state is in `dir` (named by `dir_var`).
/// From `Drop`, so a failure is ignored rather than a panic.
fn tear_down(script: &str, dir_var: &str, dir: &Path) {
    let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("hack").join(script))
        .arg("down")
        .env(dir_var, dir)
        .output();
}

/// A PostgreSQL server of one test's own (`hack/postgres.sh` with its own state directory), for
/// tests that stop it, which would break every other test on the shared one. Removed when dropped.
pub struct PrivatePostgres {
    dir: PathBuf,
    /// The server's URL (its `postgres` database).
    pub url: String,
}

impl PrivatePostgres {
    pub fn start(name: &str) -> PrivatePostgres {
        PrivatePostgres::start_with(name, &[])
    }

    /// [`PrivatePostgres::start`], with extra environment for `hack/postgres.sh up` (e.g.
    /// `HOOKLINE_POSTGRES_LISTEN`).
    pub fn start_with(name: &str, vars: &[(&str, &str)]) -> PrivatePostgres {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp").join(format!("{name}-postgres"));
        let mut pg = PrivatePostgres { dir, url: String::new() };
        pg.url = pg
            .postgres_with(&["up"], vars)
            .lines()
            .last()
            .and_then(|l| l.strip_prefix("export HOOKLINE_DATABASE_URL=")?.split_whitespace().next())
            .expect("hack/postgres.sh up prints the URL last")
            .to_string();
        pg
    }

    /// Stop the server as a crash would (`pg_ctl stop -m immediate`); its data stays.
    pub fn crash(&self) {
        self.postgres(&["stop"]);
    }

    /// Start it again on the same port; returns once it takes connections.
    pub fn restart(&self) {
        self.postgres(&["start"]);
    }

    fn postgres(&self, args: &[&str]) -> String {
        self.postgres_with(args, &[])
    }

    fn postgres_with(&self, args: &[&str], vars: &[(&str, &str)]) -> String {
        let mut env = vec![("HOOKLINE_POSTGRES_DIR", self.dir.as_os_str())];
        env.extend(vars.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))));
        hack("postgres.sh", args, &env)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        tear_down("postgres.sh", "HOOKLINE_POSTGRES_DIR", &self.dir);
    }
}

/// Run a blocking call (a command, a file read) from a test without stalling the runtime: on the
/// multi-threaded runtime every cluster test uses, the worker hands its tasks (the receivers, the
/// test's own servers) to another worker meanwhile. Elsewhere it just runs.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// Run `hack/<script>` with `args` and extra environment variables; fails the test, showing the
/// script's output, unless it succeeds. Returns what it printed on stdout.
pub fn hack(script: &str, args: &[&str], vars: &[(&str, &std::ffi::OsStr)]) -> String {
    let out = blocking(|| {
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("hack").join(script))
            .args(args)
            .envs(vars.iter().copied())
            .output()
    })
    .unwrap_or_else(|e| panic!("running hack/{script}: {e}"));
    assert!(
        out.status.success(),
        "hack/{script} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The store the Hooklines of a test keep their events in. Suites that depend on the store run
/// each test against both (`#[values(SQLITE, POSTGRES)] store: Backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}
/// [`Backend::Sqlite`], short for rstest's `#[values]` (and its case names).
pub const SQLITE: Backend = Backend::Sqlite;
/// [`Backend::Postgres`], short for rstest's `#[values]`.
pub const POSTGRES: Backend = Backend::Postgres;

/// Where one Hookline keeps its store: another Hookline started on it (a restart, a replica)
/// finds what the first one stored.
#[derive(Clone, Debug)]
pub enum StoreAt {
    /// A data directory.
    Sqlite(PathBuf),
    /// A database URL.
    Postgres(String),
}

impl StoreAt {
    fn args(&self) -> Vec<String> {
        match self {
            StoreAt::Sqlite(dir) => vec!["--data-dir".into(), dir.display().to_string()],
            StoreAt::Postgres(url) => {
                vec!["--store=postgres".into(), "--database-url".into(), url.clone()]
            }
        }
    }
}

/// A fresh database on the test PostgreSQL server (`HOOKLINE_DATABASE_URL`, as `hack/postgres.sh
/// up` prints it); without one the test fails, saying how to start one.
pub async fn fresh_database() -> String {
    let admin = std::env::var("HOOKLINE_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "this test needs PostgreSQL: run `hack/postgres.sh up` and export the HOOKLINE_DATABASE_URL \
             it prints; or run every test with `hack/test.sh`, which starts its own"
        )
    });
    fresh_database_on(&admin).await
}

/// A fresh database on the PostgreSQL server `admin` points at.
pub async fn fresh_database_on(admin: &str) -> String {
    let (client, connection) =
        tokio_postgres::connect(admin, tokio_postgres::NoTls).await.expect("connect to PostgreSQL");
    tokio::spawn(connection);
    let name = format!("it_{:016x}", rand::random::<u64>());
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create database");
    let mut url = url::Url::parse(admin).expect("a PostgreSQL URL");
    url.set_path(&name);
    url.to_string()
}

/// One test's view of the cluster: a client and a namespace of its own.
pub struct TestEnv {
    pub client: Client,
    pub namespace: String,
    pub kubeconfig: PathBuf,
    /// The store its Hooklines use.
    pub backend: Backend,
    logs: Mutex<Vec<PathBuf>>,
    /// Whether dropping this value deletes the namespace.
    owner: bool,
}

impl TestEnv {
    /// Connect to the local control plane and create a fresh namespace for `test`; without a
    /// control plane the test fails, saying how to start one.
    pub async fn start(test: &str) -> TestEnv {
        TestEnv::start_on(test, require_control_plane(test)).await
    }

    /// Like [`TestEnv::start`], on the control plane `kubeconfig` points at.
    pub async fn start_on(test: &str, kubeconfig: PathBuf) -> TestEnv {
        let kc = Kubeconfig::read_from(&kubeconfig).expect("kubeconfig readable");
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .expect("kubeconfig valid");
        let client = Client::try_from(config).expect("client");
        let suffix: u32 = rand_suffix();
        let namespace =
            format!("t-{}-{suffix:08x}", test.replace('_', "-").chars().take(40).collect::<String>());
        let ns = Namespace {
            metadata: ObjectMeta { name: Some(namespace.clone()), ..Default::default() },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .expect("create test namespace");
        TestEnv { client, namespace, kubeconfig, backend: SQLITE, logs: Mutex::default(), owner: true }
    }

    /// The same namespace seen through another kubeconfig (Hooklines started from it use that
    /// identity). The copy does not delete the namespace when dropped.
    pub fn with_kubeconfig(&self, kubeconfig: PathBuf) -> TestEnv {
        TestEnv {
            client: self.client.clone(),
            namespace: self.namespace.clone(),
            kubeconfig,
            backend: self.backend,
            logs: Mutex::new(Vec::new()),
            owner: false,
        }
    }

    /// [`TestEnv::start`], with Hookline's CRDs installed.
    pub async fn with_crds(test: &str) -> TestEnv {
        let env = TestEnv::start(test).await;
        install_crds(&env.client).await;
        env
    }

    /// [`TestEnv::with_crds`], whose Hooklines keep their events in `backend`.
    pub async fn with_crds_on(test: &str, backend: Backend) -> TestEnv {
        let mut env = TestEnv::with_crds(test).await;
        env.backend = backend;
        env
    }

    /// Create `sub` (see [`builder::TestSubscription`]) and wait until its `Ready` condition has
    /// `ready` (status, reason).
    pub async fn create(
        &self,
        sub: hookline::api::WebhookSubscription,
        ready: (&str, &str),
    ) -> hookline::api::WebhookSubscription {
        use hookline::api::WebhookSubscription;
        let name = sub.metadata.name.clone().expect("a named subscription");
        let api: Api<WebhookSubscription> = self.api();
        api.create(&PostParams::default(), &sub).await.expect("create subscription");
        wait_until(&format!("{name}: Ready={}/{}", ready.0, ready.1), Duration::from_secs(40), || async {
            let sub = api.get(&name).await.ok()?;
            let c = sub.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready")?.clone();
            (c.status == ready.0 && c.reason == ready.1).then_some(sub)
        })
        .await
    }

    /// [`TestEnv::create`], waiting until the subscription is delivering (`Ready=True/Active`).
    pub async fn create_active(
        &self,
        sub: hookline::api::WebhookSubscription,
    ) -> hookline::api::WebhookSubscription {
        self.create(sub, ("True", "Active")).await
    }

    /// A namespaced API for this test's namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Run kubectl against the control plane in this test's namespace; returns stdout, panics with
    /// stderr on failure.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_output(args);
        assert!(out.status.success(), "kubectl {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply` a manifest (YAML or JSON) in this test's namespace.
    pub fn apply(&self, manifest: &str) {
        let path = self.data_dir().join("manifest.yaml");
        std::fs::write(&path, manifest).expect("write manifest");
        self.kubectl(&["apply", "-f", path.to_str().expect("a path")]);
    }

    /// Let ServiceAccount `account` of this namespace publish here (a Role and its binding).
    pub fn allow_publishing(&self, account: &str) {
        self.apply(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: publish}}\nrules:\n- apiGroups: [hookline.dev]\n  resources: [events]\n  verbs: [create]\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: publish}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: publish}}\nsubjects:\n- {{kind: ServiceAccount, name: {account}, namespace: {}}}\n",
            self.namespace
        ));
    }

    /// Run kubectl and return its raw output, whatever the exit code.
    pub fn kubectl_output(&self, args: &[&str]) -> std::process::Output {
        blocking(|| {
            Command::new("kubectl")
                .env("KUBECONFIG", &self.kubeconfig)
                .arg("--namespace")
                .arg(&self.namespace)
                .args(args)
                .output()
        })
        .expect("kubectl runs")
    }

    /// A fresh data directory for a Hookline of this test.
    pub fn data_dir(&self) -> PathBuf {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-data-{}", self.namespace, free_port()));
        std::fs::create_dir_all(&dir).expect("data dir");
        dir
    }

    /// A fresh store of this test's backend.
    pub async fn new_store(&self) -> StoreAt {
        match self.backend {
            Backend::Sqlite => StoreAt::Sqlite(self.data_dir()),
            Backend::Postgres => StoreAt::Postgres(fresh_database().await),
        }
    }

    /// Start the real `hookline run` for this namespace with a fresh store.
    pub async fn start_hookline(&self, extra: &[&str]) -> Hookline {
        let store = self.new_store().await;
        self.start_hookline_in(&store, extra).await
    }

    /// Start the real `hookline run` for this namespace on `store`, wait until it is ready.
    pub async fn start_hookline_in(&self, store: &StoreAt, extra: &[&str]) -> Hookline {
        let hookline = self.spawn_hookline_in(store, extra);
        let url = format!("{}/readyz", hookline.metrics);
        wait_until("hookline /readyz answers 200", Duration::from_secs(30), || async {
            http_get(&url).await.filter(|(status, _)| *status == 200)
        })
        .await;
        hookline
    }

    /// Start the real `hookline run` for this namespace on `store`, without waiting for it.
    pub fn spawn_hookline_in(&self, store: &StoreAt, extra: &[&str]) -> Hookline {
        let metrics_port = free_port();
        let ingest_port = free_port();
        let log = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{}-hookline-{metrics_port}.log", self.namespace));
        self.logs.lock().expect("logs").push(log.clone());
        let file = std::fs::File::create(&log).expect("log file");
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hookline"))
            .arg("run")
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--ingest-addr", &format!("127.0.0.1:{ingest_port}")])
            .args(store.args())
            .args(["--watch-namespace", &self.namespace])
            // `--public-url=auto` stands for this Hookline's own ingest URL.
            .args(extra.iter().map(|a| {
                if *a == "--public-url=auto" {
                    format!("--public-url=http://127.0.0.1:{ingest_port}")
                } else {
                    a.to_string()
                }
            }))
            .env("KUBECONFIG", &self.kubeconfig)
            // On PostgreSQL a Hookline killed with -9 is taken over once its lease runs out:
            // short leases keep restart tests short (a flag overrides it).
            .env("HOOKLINE_LEASE_DURATION", "6s")
            .env("RUST_LOG", "info,hookline=debug")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn hookline");
        Hookline {
            child,
            metrics: format!("http://127.0.0.1:{metrics_port}"),
            ingest: format!("http://127.0.0.1:{ingest_port}"),
            log,
        }
    }

    fn dump(&self) {
        eprintln!("===== namespace {} at failure =====", self.namespace);
        let out = self.kubectl_output(&[
            "get",
            "webhooksubscriptions,failedevents,eventtypes,secrets,configmaps",
            "-o",
            "yaml",
        ]);
        eprintln!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        let out = self.kubectl_output(&["get", "events", "--sort-by=.lastTimestamp"]);
        eprintln!("--- events ---\n{}", String::from_utf8_lossy(&out.stdout));
        for log in self.logs.lock().map(|l| l.clone()).unwrap_or_default() {
            eprintln!("--- {} ---\n{}", log.display(), std::fs::read_to_string(&log).unwrap_or_default());
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        if !self.owner {
            return;
        }
        let _ = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["delete", "namespace", &self.namespace, "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Publish `(id, type)` events from `source` as one batch to the Hookline whose ingest is at
/// `ingest`; the answer's status, or 0 when none came (refused, killed mid-request, timed out).
pub async fn publish_batch(
    client: &reqwest::Client,
    ingest: &str,
    namespace: &str,
    source: &str,
    events: &[(String, &str)],
) -> u16 {
    let batch: Vec<serde_json::Value> = events
        .iter()
        .map(|(id, type_)| serde_json::json!({"specversion": "1.0", "id": id, "source": source, "type": type_}))
        .collect();
    client
        .post(format!("{ingest}/v1/namespaces/{namespace}/events"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(serde_json::Value::Array(batch).to_string())
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// A running `hookline run` child process; killed when dropped.
pub struct Hookline {
    pub child: tokio::process::Child,
    /// Base URL of its operations server.
    pub metrics: String,
    /// Base URL of its ingest server.
    pub ingest: String,
    pub log: PathBuf,
}

impl Hookline {
    /// Kill it hard (SIGKILL) and wait until it is gone.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill hookline");
    }

    /// Ask it to stop (SIGTERM) and wait for it to exit; returns whether it exited cleanly.
    pub async fn terminate(mut self) -> bool {
        let pid = self.child.id().expect("pid");
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let status = tokio::time::timeout(Duration::from_secs(40), self.child.wait())
            .await
            .expect("hookline exits within 40s of SIGTERM")
            .expect("wait");
        status.success()
    }

    /// Publish to `namespace`: returns (status, JSON body).
    pub async fn publish(
        &self,
        namespace: &str,
        headers: &[(&str, &str)],
        body: impl Into<reqwest::Body>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let mut req =
            reqwest::Client::new().post(format!("{}/v1/namespaces/{namespace}/events", self.ingest));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.body(body).send().await.expect("publish request");
        let status = resp.status().as_u16();
        let json = resp.json().await.unwrap_or(serde_json::Value::Null);
        (status, json)
    }

    /// Publish one structured-mode event; panics unless it is accepted.
    pub async fn publish_json(&self, namespace: &str, event: serde_json::Value) -> serde_json::Value {
        let (status, body) = self
            .publish(namespace, &[("content-type", "application/cloudevents+json")], event.to_string(), None)
            .await;
        assert_eq!(status, 202, "publish refused: {body}");
        body
    }

    /// The sum of a metric over all its label values, e.g. `hookline_api_requests_total`.
    pub async fn metric_sum(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(&format!("{}/metrics", self.metrics)).await?;
        let labelled = format!("{name}{{");
        Some(
            body.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split_once(' '))
                .filter(|(n, _)| *n == name || n.starts_with(&labelled))
                .filter_map(|(_, v)| v.trim().parse::<f64>().ok())
                .sum(),
        )
    }

    /// The value of one Prometheus sample line, e.g. `hookline_status_writes_total`.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let (_, body) = http_get(&format!("{}/metrics", self.metrics)).await?;
        body.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    }
}

/// Install (or update) Hookline's CRDs, as `hookline crds` prints them, with server-side apply;
/// return once they are Established and the API server serves their group.
pub async fn install_crds(client: &Client) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in hookline::api::crds() {
        let name = crd.metadata.name.clone().expect("crd name");
        api.patch(&name, &PatchParams::apply("hookline-tests").force(), &Patch::Apply(&crd))
            .await
            .unwrap_or_else(|e| panic!("installing CRD {name}: {e}"));
        tokio::time::timeout(
            Duration::from_secs(30),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .unwrap_or_else(|_| panic!("CRD {name} not Established within 30s"))
        .expect("watch crd");
    }
    wait_until_served(
        client,
        "hookline.dev/v1alpha1",
        &["webhooksubscriptions", "failedevents", "eventtypes"],
    )
    .await;
}

/// Wait until discovery of `api_version` lists `resources` and the front sends the group to the
/// CRD server: on the local control plane the CRD server behind the front serves custom
/// resources, and `hack/cluster.sh` routes a new group to it moments after its CRD appears. Until
/// then the front may serve the group itself (its own CRD registration sees the CRDs too), without
/// CEL rules, so discovery alone is not enough.
pub async fn wait_until_served(client: &Client, api_version: &str, resources: &[&str]) {
    use k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService;
    let (group, version) = api_version.split_once('/').expect("group/version");
    let services: Api<APIService> = Api::all(client.clone());
    wait_until(&format!("{api_version} serves {resources:?}"), Duration::from_secs(30), || async {
        let routed = services.get(&format!("{version}.{group}")).await.ok()?.spec?.service.is_some();
        let list = client.list_api_group_resources(api_version).await.ok()?;
        (routed && resources.iter().all(|r| list.resources.iter().any(|have| have.name == *r))).then_some(())
    })
    .await
}

/// Poll `probe` every 100 ms until it yields a value or `timeout` passes (then panic naming `what`).
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A memory figure of a process from `/proc/<pid>/status`, in bytes: `VmRSS` (resident now) or
/// `VmHWM` (the peak resident size).
pub fn process_memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/<pid>/status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kb * 1024
}

/// A free loopback port (the OS picks it; the listener is closed before returning).
/// A port free to listen on, never handed out before in this process. Chosen below Linux's
/// ephemeral range (32768 up), where the kernel picks ports for outgoing connections and for
/// binds to port 0: two binds to port 0 in a row once returned the same port, and Hookline's
/// metrics and ingest servers then collided.
pub fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::{LazyLock, Mutex};
    static HANDED_OUT: LazyLock<Mutex<HashSet<u16>>> = LazyLock::new(Default::default);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = 20_000 + (rand_suffix() % 12_000) as u16;
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0),
    );
    h.finish() as u32
}

/// GET a loopback URL: (status, body), or `None` if nothing answered.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(url).await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}

/// Merge `over` into `base`, objects key by key.
pub fn merge(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (b, o) => *b = o,
    }
}
