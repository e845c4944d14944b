//! The deployment files under `deploy/` (Dockerfile, Compose file, Kubernetes manifests):
//! they parse, agree with each other, and set only variables the binary reads.
//!
//! Nothing here builds or runs an image; these tests read files only.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Marks every value of the committed Secret as one to replace.
const PLACEHOLDER_MARK: &str = "REPLACE_ME";
/// The seed's example `SECRET_KEY`, which the service refuses (see `config/values.rs`).
const SEED_PLACEHOLDER_SECRET_KEY: &str = "your_super_secret_key_here";
/// The port the service listens on by default and in every deployment.
const PORT: u64 = 3001;
/// How long the server lets in-flight requests finish after SIGTERM (`startup.rs`).
const SHUTDOWN_DRAIN_SECONDS: u64 = 10;

fn repository_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(relative)
}

fn read(relative: &str) -> String {
    fs::read_to_string(repository_path(relative)).unwrap_or_else(|error| panic!("reading {relative}: {error}"))
}

/// Parses one YAML document into JSON values (so that `value["a"]["b"]` is `Null` when absent).
fn yaml(relative: &str) -> Value {
    serde_yaml_ng::from_str(&read(relative))
        .unwrap_or_else(|error| panic!("{relative} is not one YAML document: {error}"))
}

fn manifest(file: &str) -> Value {
    yaml(&format!("deploy/k8s/{file}"))
}

fn compose() -> Value {
    yaml("deploy/docker-compose.yml")
}

fn compose_service() -> Value {
    compose()["services"]["user-service"].clone()
}

/// Every `.yml`/`.yaml` file under `deploy/`, relative to the repository.
fn yaml_files_under(relative: &str) -> Vec<String> {
    let mut files = Vec::new();
    for entry in fs::read_dir(repository_path(relative)).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        let path = format!("{relative}/{name}");
        if entry.file_type().unwrap().is_dir() {
            files.extend(yaml_files_under(&path));
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            files.push(path);
        }
    }
    files.sort();
    files
}

fn text<'a>(value: &'a Value, what: &str) -> &'a str {
    value.as_str().unwrap_or_else(|| panic!("{what} should be a string, found {value}"))
}

fn number(value: &Value, what: &str) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("{what} should be a non-negative integer, found {value}"))
}

fn items<'a>(value: &'a Value, what: &str) -> &'a Vec<Value> {
    value.as_array().unwrap_or_else(|| panic!("{what} should be a list, found {value}"))
}

fn entries<'a>(value: &'a Value, what: &str) -> &'a serde_json::Map<String, Value> {
    value.as_object().unwrap_or_else(|| panic!("{what} should be a mapping, found {value}"))
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn pod_labels(workload: &Value) -> &serde_json::Map<String, Value> {
    entries(&workload["spec"]["template"]["metadata"]["labels"], "the pod template's labels")
}

fn only_container(workload: &Value) -> &Value {
    let containers = items(&pod_spec(workload)["containers"], "containers");
    assert_eq!(containers.len(), 1, "one container per pod");
    &containers[0]
}

/// Whether every `matchLabels` entry of `selector` is among `labels`.
fn selects(selector: &Value, labels: &serde_json::Map<String, Value>) -> bool {
    let wanted = entries(selector, "a selector");
    !wanted.is_empty() && wanted.iter().all(|(key, value)| labels.get(key) == Some(value))
}

/// A security setting as it applies to the container: its own, else the pod's.
fn effective_security<'a>(workload: &'a Value, key: &str) -> &'a Value {
    let own = &only_container(workload)["securityContext"][key];
    if own.is_null() { &pod_spec(workload)["securityContext"][key] } else { own }
}

/// The variable names the binary reads: one per field of its settings, plus `RUST_LOG`
/// (`telemetry.rs`). A renamed variable drops out of this list.
fn variables_the_binary_reads() -> BTreeSet<String> {
    let mut names: BTreeSet<String> = http_actix::config::variable_names().into_iter().collect();
    names.insert("RUST_LOG".to_owned());
    for expected in ["PORT", "HOST", "DATABASE_URL", "SECRET_KEY", "SERVICE_API_KEYS", "LOG_FORMAT"] {
        assert!(names.contains(expected), "the settings should name {expected}; found {names:?}");
    }
    names
}

/// One Dockerfile instruction, continuation lines joined and comments dropped.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    arguments: String,
}

fn dockerfile() -> Vec<Instruction> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(continued) = line.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        current.push_str(line);
        let (keyword, arguments) = current.split_once(char::is_whitespace).unwrap_or((current.as_str(), ""));
        instructions
            .push(Instruction { keyword: keyword.to_ascii_uppercase(), arguments: arguments.trim().to_owned() });
        current.clear();
    }
    assert!(current.is_empty(), "the Dockerfile ends inside a continued line");
    instructions
}

/// The instructions of each stage, in order (each starts with its `FROM`).
fn stages(instructions: &[Instruction]) -> Vec<&[Instruction]> {
    let starts: Vec<usize> =
        instructions.iter().enumerate().filter(|(_, i)| i.keyword == "FROM").map(|(index, _)| index).collect();
    assert_eq!(starts.first(), Some(&0), "a Dockerfile starts with FROM");
    starts
        .iter()
        .enumerate()
        .map(|(n, &start)| &instructions[start..*starts.get(n + 1).unwrap_or(&instructions.len())])
        .collect()
}

fn arguments_of<'a>(stage: &'a [Instruction], keyword: &str) -> Vec<&'a str> {
    stage.iter().filter(|i| i.keyword == keyword).map(|i| i.arguments.as_str()).collect()
}

/// The image of a `FROM` line, without `--platform` and `AS name`.
fn base_image(from: &str) -> &str {
    from.split_whitespace().find(|word| !word.starts_with("--")).unwrap_or_default()
}

fn exec_form(arguments: &str, what: &str) -> Vec<String> {
    serde_json::from_str(arguments).unwrap_or_else(|error| panic!("{what} should be a JSON array: {error}"))
}

/// Names set by `ENV` (both `ENV A=1 B=2` and the legacy `ENV A 1`).
fn env_names(arguments: &str) -> Vec<String> {
    let words: Vec<&str> = arguments.split_whitespace().collect();
    match words.first() {
        Some(first) if !first.contains('=') => vec![(*first).to_owned()],
        _ => words.iter().filter_map(|word| word.split_once('=')).map(|(name, _)| name.to_owned()).collect(),
    }
}

fn dockerfile_env(stage: &[Instruction]) -> Vec<(String, String)> {
    arguments_of(stage, "ENV")
        .into_iter()
        .flat_map(|arguments| {
            arguments
                .split_whitespace()
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// The runtime user's numeric uid (`USER 10001` or `USER 10001:10001`).
fn dockerfile_uid() -> u64 {
    let instructions = dockerfile();
    let runtime = *stages(&instructions).last().unwrap();
    let user = *arguments_of(runtime, "USER").last().unwrap_or_else(|| panic!("the runtime stage sets USER"));
    let uid = user.split(':').next().unwrap_or_default();
    uid.parse().unwrap_or_else(|_| panic!("USER {user} should be numeric, so that runAsNonRoot can verify it"))
}

/// `(source, name)` for every variable a deployment file sets for the service.
fn variables_set_by_deployment_files() -> Vec<(String, String)> {
    let mut set = Vec::new();
    for (file, key) in [("configmap.yaml", "data"), ("secret.yaml", "stringData"), ("secret.yaml", "data")] {
        if let Some(values) = manifest(file)[key].as_object() {
            set.extend(values.keys().map(|name| (format!("k8s/{file}"), name.clone())));
        }
    }
    for file in ["deployment.yaml", "migration-job.yaml"] {
        let workload = manifest(file);
        for variable in only_container(&workload)["env"].as_array().into_iter().flatten() {
            set.push((format!("k8s/{file}"), text(&variable["name"], "an env name").to_owned()));
        }
    }
    match &compose_service()["environment"] {
        Value::Object(variables) => {
            set.extend(variables.keys().map(|name| ("docker-compose.yml".to_owned(), name.clone())))
        }
        Value::Array(variables) => set.extend(variables.iter().map(|variable| {
            let variable = text(variable, "an environment entry");
            ("docker-compose.yml".to_owned(), variable.split('=').next().unwrap_or_default().to_owned())
        })),
        _ => {}
    }
    let instructions = dockerfile();
    let runtime = *stages(&instructions).last().unwrap();
    for arguments in arguments_of(runtime, "ENV") {
        set.extend(env_names(arguments).into_iter().map(|name| ("Dockerfile".to_owned(), name)));
    }
    set
}

/// The host of a `scheme://user:password@host:port/path` URL.
fn url_host(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    host_port.split(':').next().unwrap_or_default()
}

/// Seconds in a Compose duration such as `15s` or `1m30s`.
fn compose_seconds(duration: &str) -> u64 {
    let (mut total, mut digits) = (0, String::new());
    for c in duration.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let amount: u64 = digits.parse().unwrap_or_else(|_| panic!("bad duration {duration}"));
        total += amount
            * match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => panic!("unsupported unit in duration {duration}"),
            };
        digits.clear();
    }
    assert!(digits.is_empty(), "duration {duration} should end with a unit");
    total
}

/// The seconds a `preStop` hook waits (`exec: sleep N` or `sleep: {seconds: N}`), 0 without one.
fn pre_stop_seconds(container: &Value) -> u64 {
    let pre_stop = &container["lifecycle"]["preStop"];
    if let Some(seconds) = pre_stop["sleep"]["seconds"].as_u64() {
        return seconds;
    }
    match pre_stop["exec"]["command"].as_array().map(Vec::as_slice) {
        Some([program, seconds]) if *program == "sleep" => text(seconds, "the sleep duration").parse().unwrap(),
        Some(other) => panic!("unrecognised preStop command {other:?}"),
        None => 0,
    }
}

#[test]
fn every_yaml_file_under_deploy_is_one_document_with_its_required_keys() {
    let files = yaml_files_under("deploy");
    assert!(files.contains(&"deploy/docker-compose.yml".to_owned()), "{files:?}");
    assert!(files.len() >= 8, "the Compose file and the Kubernetes manifests: {files:?}");
    for file in files {
        let document = yaml(&file);
        entries(&document, &file);
        if file.starts_with("deploy/k8s/") {
            for key in ["apiVersion", "kind"] {
                assert!(document[key].is_string(), "{file} needs {key}");
            }
            if document["kind"] != "Kustomization" {
                assert!(document["metadata"]["name"].is_string(), "{file} needs metadata.name");
                assert_eq!(document["metadata"]["labels"]["app.kubernetes.io/name"], "user-service", "{file}");
            }
        } else {
            assert!(document["services"].is_object(), "{file} needs services");
        }
    }
}

#[test]
fn the_kustomization_applies_every_manifest_but_never_the_placeholder_secret() {
    let kustomization = manifest("kustomization.yaml");
    assert_eq!(kustomization["kind"], "Kustomization");
    let listed: BTreeSet<String> = items(&kustomization["resources"], "resources")
        .iter()
        .map(|resource| text(resource, "a resource").to_owned())
        .collect();
    let expected: BTreeSet<String> = yaml_files_under("deploy/k8s")
        .into_iter()
        .map(|file| file.trim_start_matches("deploy/k8s/").to_owned())
        .filter(|file| file != "kustomization.yaml" && file != "secret.yaml")
        .collect();
    assert_eq!(listed, expected, "an apply would otherwise skip a manifest or overwrite the real Secret");
}

#[test]
fn every_variable_the_deployment_files_set_is_one_the_binary_reads() {
    let known = variables_the_binary_reads();
    let set = variables_set_by_deployment_files();
    assert!(set.len() > 10, "{set:?}");
    let unknown: Vec<&(String, String)> = set.iter().filter(|(_, name)| !known.contains(name)).collect();
    assert!(unknown.is_empty(), "variables the binary never reads: {unknown:?}; it reads {known:?}");
}

#[test]
fn the_config_map_holds_string_values_and_no_secrets() {
    let config_map = manifest("configmap.yaml");
    assert_eq!(config_map["apiVersion"], "v1");
    assert_eq!(config_map["kind"], "ConfigMap");
    let data = entries(&config_map["data"], "data");
    for (name, value) in data {
        assert!(value.is_string(), "{name} must be quoted: ConfigMap values are strings, found {value}");
    }
    for secret in ["DATABASE_URL", "SECRET_KEY", "SERVICE_API_KEYS"] {
        assert!(!data.contains_key(secret), "{secret} belongs in the Secret");
    }
    assert_eq!(data["PORT"], PORT.to_string());
    assert_eq!(data["HOST"], "0.0.0.0");
    assert_eq!(data["LOG_FORMAT"], "json");
    assert_eq!(data["TRUST_INTERNAL_NETWORK"], "false");
}

#[test]
fn the_committed_secret_holds_only_placeholders_the_service_would_refuse() {
    let secret = manifest("secret.yaml");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["type"], "Opaque");
    assert!(secret["data"].is_null(), "base64 `data` would hide what is committed; use stringData");
    let values = entries(&secret["stringData"], "stringData");
    for name in ["DATABASE_URL", "SECRET_KEY", "SERVICE_API_KEYS"] {
        assert!(values.contains_key(name), "the Secret names {name}");
    }
    for (name, value) in values {
        let value = text(value, name);
        assert!(value.contains(PLACEHOLDER_MARK), "{name} should be an obvious placeholder, found {value:?}");
    }
    let secret_key = text(&values["SECRET_KEY"], "SECRET_KEY").trim();
    let accepted = secret_key.len() >= 32 && secret_key != SEED_PLACEHOLDER_SECRET_KEY;
    assert!(!accepted, "the committed SECRET_KEY would pass validation: {secret_key:?}");
    let service_keys = text(&values["SERVICE_API_KEYS"], "SERVICE_API_KEYS");
    assert!(
        service_keys.split(',').map(str::trim).any(|key| !key.is_empty() && key.len() < 16),
        "the committed SERVICE_API_KEYS would pass validation: {service_keys:?}"
    );
}

#[test]
fn the_dockerfile_builds_the_locked_release_binary_in_a_rust_1_95_stage() {
    let instructions = dockerfile();
    let stages = stages(&instructions);
    assert!(stages.len() >= 2, "a build stage and a runtime stage");
    let builder = base_image(&stages[0][0].arguments);
    assert!(builder.starts_with("rust:1.95"), "the first stage builds with rust:1.95, found {builder}");
    let (build_stages, runtime) = stages.split_at(stages.len() - 1);
    let builds: Vec<&str> = build_stages
        .iter()
        .flat_map(|stage| arguments_of(stage, "RUN"))
        .filter(|run| run.contains("cargo build"))
        .collect();
    assert!(!builds.is_empty(), "a build stage runs cargo build");
    for build in builds {
        for flag in ["--locked", "--release", "--bin user-service"] {
            assert!(build.contains(flag), "`{build}` lacks {flag}");
        }
    }
    // The runtime's glibc must be the builder's: either the runtime is on the builder's Debian
    // release (or newer), or it is empty and gets the libraries the binary links from the
    // builder itself.
    let runtime_image = base_image(&runtime[0][0].arguments);
    let copies = arguments_of(runtime[0], "COPY");
    if runtime_image == "scratch" {
        let gathered = builds_gathering_libraries(build_stages);
        assert!(gathered, "a build stage copies the libraries `ldd` names for the binary");
        assert!(
            copies.iter().any(|copy| copy.starts_with("--from=")),
            "the runtime copies the binary and its libraries from a build stage: {copies:?}"
        );
    } else {
        let release = [("bookworm", "debian12"), ("trixie", "debian13")]
            .into_iter()
            .find(|(codename, _)| builder.contains(codename))
            .unwrap_or_else(|| panic!("the builder {builder} names its Debian release"));
        assert!(
            runtime_image.contains(release.0) || runtime_image.contains(release.1),
            "the runtime {runtime_image} should be on the builder's Debian release {release:?}"
        );
        assert!(
            copies.iter().any(|copy| copy.starts_with("--from=") && copy.contains("release/user-service")),
            "the runtime copies the release binary from a build stage: {copies:?}"
        );
    }
}

/// Whether a build stage puts the release binary and the shared libraries it links (as
/// `ldd` lists them) together for the runtime.
fn builds_gathering_libraries(build_stages: &[&[Instruction]]) -> bool {
    build_stages
        .iter()
        .flat_map(|stage| arguments_of(stage, "RUN"))
        .any(|run| run.contains("cargo build") && run.contains("release/user-service") && run.contains("ldd"))
}

#[test]
fn the_runtime_image_runs_user_service_as_a_non_root_user_on_port_3001() {
    let instructions = dockerfile();
    let runtime = *stages(&instructions).last().unwrap();
    assert_ne!(dockerfile_uid(), 0, "the runtime user is not root");
    let exposed: Vec<&str> = arguments_of(runtime, "EXPOSE").into_iter().flat_map(str::split_whitespace).collect();
    assert!(exposed.iter().any(|port| port.trim_end_matches("/tcp") == PORT.to_string()), "EXPOSE {PORT}: {exposed:?}");
    let env = dockerfile_env(runtime);
    for (name, value) in [("PORT", "3001"), ("HOST", "0.0.0.0"), ("LOG_FORMAT", "json")] {
        assert!(env.contains(&(name.to_owned(), value.to_owned())), "ENV {name}={value}: {env:?}");
    }
    let entrypoint = exec_form(arguments_of(runtime, "ENTRYPOINT").last().unwrap(), "ENTRYPOINT");
    assert_eq!(entrypoint.len(), 1, "{entrypoint:?}");
    assert!(entrypoint[0] == "user-service" || entrypoint[0].ends_with("/user-service"), "{entrypoint:?}");
    assert_eq!(exec_form(arguments_of(runtime, "CMD").last().unwrap(), "CMD"), ["serve"]);
    let healthcheck = *arguments_of(runtime, "HEALTHCHECK").last().unwrap_or_else(|| panic!("a HEALTHCHECK"));
    // Liveness: `/health/live` itself, or the binary's own probe of it (`operations::the_healthcheck_command…`).
    let probes_liveness = healthcheck.contains("/health/live")
        || exec_form(healthcheck.rsplit("CMD").next().unwrap_or_default().trim(), "HEALTHCHECK CMD")
            .ends_with(&["healthcheck".to_owned()]);
    assert!(probes_liveness, "the HEALTHCHECK probes liveness: {healthcheck}");
    if healthcheck.contains("curl") {
        assert!(arguments_of(runtime, "RUN").iter().any(|run| run.contains("curl")), "the runtime installs curl");
    }
}

#[test]
fn the_docker_build_context_leaves_out_build_output_and_secrets_but_keeps_the_sources() {
    let ignored: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| line.trim_start_matches('/').trim_end_matches('/').to_owned())
        .collect();
    for pattern in ["target", ".git", ".env"] {
        assert!(ignored.iter().any(|line| line == pattern), ".dockerignore leaves out {pattern}: {ignored:?}");
    }
    for needed in ["crates", "migrations", "tests", "Cargo.toml", "Cargo.lock", "*", "**"] {
        assert!(!ignored.iter().any(|line| line == needed), "the build needs {needed}: {ignored:?}");
    }
}

#[test]
fn compose_starts_the_service_after_healthy_postgres_redis_and_rabbitmq() {
    let compose = compose();
    let services = entries(&compose["services"], "services");
    let image_of = |name: &str| text(&services[name]["image"], "an image").to_owned();
    assert_eq!(image_of("postgres"), "postgres:15");
    assert_eq!(image_of("redis"), "redis:7");
    assert_eq!(image_of("rabbitmq"), "rabbitmq:3");
    for (name, service) in services {
        assert!(!service["healthcheck"]["test"].is_null(), "{name} has a healthcheck");
    }
    let service = &services["user-service"];
    for dependency in ["postgres", "redis", "rabbitmq"] {
        assert_eq!(service["depends_on"][dependency]["condition"], "service_healthy", "{dependency}");
    }
    let build = &service["build"];
    let dockerfile = repository_path("deploy")
        .join(text(&build["context"], "context"))
        .join(text(&build["dockerfile"], "dockerfile"));
    assert!(dockerfile.is_file(), "compose builds deploy/Dockerfile: {}", dockerfile.display());
    let ports: Vec<&str> = items(&service["ports"], "ports").iter().map(|port| text(port, "a port mapping")).collect();
    assert!(ports.iter().any(|port| port.rsplit(':').next() == Some("3001")), "compose publishes {PORT}: {ports:?}");
    let env_files = items(&service["env_file"], "env_file");
    assert!(
        env_files.iter().any(|file| file["path"] == "../.env" && file["required"] == false),
        "the root .env is honoured when present: {env_files:?}"
    );
    let environment = &service["environment"];
    let database_host = url_host(text(&environment["DATABASE_URL"], "DATABASE_URL"));
    assert_eq!(image_of(database_host), "postgres:15", "DATABASE_URL points at the postgres service");
    let redis_host = url_host(text(&environment["REDIS_URL"], "REDIS_URL"));
    assert_eq!(image_of(redis_host), "redis:7", "REDIS_URL points at the redis service");
    let broker_host = url_host(text(&environment["AMQP_URL"], "AMQP_URL"));
    assert_eq!(image_of(broker_host), "rabbitmq:3", "AMQP_URL points at the rabbitmq service");
    assert_eq!(environment["HOST"], "0.0.0.0", "reachable from outside the container whatever .env says");
    let volumes = items(&services["postgres"]["volumes"], "postgres volumes");
    let data_volume = volumes
        .iter()
        .map(|volume| text(volume, "a volume"))
        .find(|volume| volume.ends_with(":/var/lib/postgresql/data"))
        .unwrap_or_else(|| panic!("postgres keeps its data in a volume: {volumes:?}"));
    let volume_name = data_volume.split(':').next().unwrap();
    assert!(
        compose["volumes"].as_object().is_some_and(|named| named.contains_key(volume_name)),
        "{volume_name} is named"
    );
    let grace = compose_seconds(text(&service["stop_grace_period"], "stop_grace_period"));
    assert!(
        grace > SHUTDOWN_DRAIN_SECONDS,
        "Compose waits longer ({grace} s) than the drain ({SHUTDOWN_DRAIN_SECONDS} s)"
    );
}

#[test]
fn compose_takes_its_secrets_from_the_environment_and_refuses_to_start_without_a_secret_key() {
    let environment = &compose_service()["environment"];
    let secret_key = text(&environment["SECRET_KEY"], "SECRET_KEY");
    assert!(secret_key.starts_with("${SECRET_KEY:?") && secret_key.ends_with('}'), "{secret_key}");
    let service_keys = text(&environment["SERVICE_API_KEYS"], "SERVICE_API_KEYS");
    assert!(service_keys.starts_with("${SERVICE_API_KEYS") && service_keys.ends_with('}'), "{service_keys}");
}

#[test]
fn one_image_is_named_by_the_deployment_the_migration_job_and_compose() {
    let deployment = text(&only_container(&manifest("deployment.yaml"))["image"], "the Deployment's image").to_owned();
    let job = text(&only_container(&manifest("migration-job.yaml"))["image"], "the Job's image").to_owned();
    let compose = text(&compose_service()["image"], "compose's image").to_owned();
    assert!(deployment.contains("/user-service:"), "{deployment}");
    assert_eq!(job, deployment);
    assert_eq!(compose, deployment);
}

#[test]
fn the_deployment_probes_readiness_and_liveness_on_its_named_http_port() {
    let deployment = manifest("deployment.yaml");
    assert_eq!(deployment["apiVersion"], "apps/v1");
    assert_eq!(deployment["kind"], "Deployment");
    let container = only_container(&deployment);
    let ports = items(&container["ports"], "ports");
    assert!(ports.iter().any(|port| port["name"] == "http" && port["containerPort"] == PORT), "{ports:?}");
    for (probe, path) in [("readinessProbe", "/health/ready"), ("livenessProbe", "/health/live")] {
        let http = &container[probe]["httpGet"];
        assert_eq!(http["path"], path, "{probe}");
        assert_eq!(http["port"], "http", "{probe} uses the named port");
        // The service gives a dependency 1 s before answering; the probe waits longer.
        assert!(number(&container[probe]["timeoutSeconds"], probe) >= 2, "{probe} timeoutSeconds");
    }
    let args: Vec<&Value> = container["args"].as_array().into_iter().flatten().collect();
    assert!(args.is_empty() || args == [&Value::from("serve")], "the API serves: {args:?}");
}

#[test]
fn the_deployment_and_the_migration_job_run_unprivileged_with_a_read_only_root() {
    let uid = dockerfile_uid();
    for file in ["deployment.yaml", "migration-job.yaml"] {
        let workload = manifest(file);
        assert_eq!(effective_security(&workload, "runAsNonRoot"), true, "{file}");
        assert_eq!(
            number(effective_security(&workload, "runAsUser"), "runAsUser"),
            uid,
            "{file} runs as the image's user"
        );
        let container = &only_container(&workload)["securityContext"];
        assert_eq!(container["readOnlyRootFilesystem"], true, "{file}");
        assert_eq!(container["allowPrivilegeEscalation"], false, "{file}");
        assert_eq!(container["capabilities"]["drop"], serde_json::json!(["ALL"]), "{file}");
    }
}

#[test]
fn the_deployment_is_sized_configured_and_given_time_to_drain() {
    let deployment = manifest("deployment.yaml");
    let container = only_container(&deployment);
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(container["resources"][bound][resource].is_string(), "resources.{bound}.{resource}");
        }
    }
    let pre_stop = pre_stop_seconds(container);
    let grace = number(&pod_spec(&deployment)["terminationGracePeriodSeconds"], "terminationGracePeriodSeconds");
    assert!(grace >= 15 && grace > pre_stop + SHUTDOWN_DRAIN_SECONDS, "grace {grace} s, preStop {pre_stop} s");
    let config_map = manifest("configmap.yaml");
    let migrate = container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|variable| variable["name"] == "MIGRATE_ON_STARTUP")
        .map_or(&config_map["data"]["MIGRATE_ON_STARTUP"], |variable| &variable["value"]);
    assert_eq!(*migrate, "false", "pods leave migrations to the Job");
}

#[test]
fn the_workloads_take_their_environment_from_the_config_map_and_the_secret() {
    let config_map = manifest("configmap.yaml")["metadata"]["name"].clone();
    let secret = manifest("secret.yaml")["metadata"]["name"].clone();
    for file in ["deployment.yaml", "migration-job.yaml"] {
        let workload = manifest(file);
        let sources = items(&only_container(&workload)["envFrom"], "envFrom");
        assert!(sources.iter().any(|source| source["configMapRef"]["name"] == config_map), "{file}: {sources:?}");
        assert!(sources.iter().any(|source| source["secretRef"]["name"] == secret), "{file}: {sources:?}");
    }
}

#[test]
fn the_service_sends_port_80_to_the_named_port_of_the_api_pods_only() {
    let deployment = manifest("deployment.yaml");
    let service = manifest("service.yaml");
    assert_eq!(service["kind"], "Service");
    assert_eq!(service["spec"]["type"], "ClusterIP");
    let selector = &service["spec"]["selector"];
    assert!(selects(selector, pod_labels(&deployment)), "the Service selects the Deployment's pods");
    assert!(selects(&deployment["spec"]["selector"]["matchLabels"], pod_labels(&deployment)));
    assert!(!selects(selector, pod_labels(&manifest("migration-job.yaml"))), "nor the migration pods");
    let ports = items(&service["spec"]["ports"], "ports");
    assert!(ports.iter().any(|port| port["port"] == 80 && port["targetPort"] == "http"), "{ports:?}");
}

#[test]
fn the_autoscaler_scales_the_deployment_on_cpu_between_two_and_ten_pods() {
    let deployment = manifest("deployment.yaml");
    let autoscaler = manifest("hpa.yaml");
    assert_eq!(autoscaler["apiVersion"], "autoscaling/v2");
    assert_eq!(autoscaler["kind"], "HorizontalPodAutoscaler");
    let target = &autoscaler["spec"]["scaleTargetRef"];
    assert_eq!(target["apiVersion"], "apps/v1");
    assert_eq!(target["kind"], "Deployment");
    assert_eq!(target["name"], deployment["metadata"]["name"]);
    assert_eq!(autoscaler["spec"]["minReplicas"], 2);
    assert_eq!(autoscaler["spec"]["maxReplicas"], 10);
    let metrics = items(&autoscaler["spec"]["metrics"], "metrics");
    assert!(
        metrics.iter().any(|metric| metric["type"] == "Resource"
            && metric["resource"]["name"] == "cpu"
            && metric["resource"]["target"]["type"] == "Utilization"
            && (1..=100).contains(&metric["resource"]["target"]["averageUtilization"].as_u64().unwrap_or(0))),
        "{metrics:?}"
    );
    assert!(only_container(&deployment)["resources"]["requests"]["cpu"].is_string(), "utilization needs a CPU request");
    assert!(deployment["spec"]["replicas"].is_null(), "the autoscaler owns the replica count");
}

#[test]
fn the_disruption_budget_keeps_one_api_pod_and_lets_a_drain_proceed() {
    let deployment = manifest("deployment.yaml");
    let budget = manifest("pdb.yaml");
    assert_eq!(budget["apiVersion"], "policy/v1");
    assert_eq!(budget["kind"], "PodDisruptionBudget");
    assert_eq!(budget["spec"]["minAvailable"], 1);
    let selector = &budget["spec"]["selector"]["matchLabels"];
    assert!(selects(selector, pod_labels(&deployment)), "the budget covers the Deployment's pods");
    assert!(!selects(selector, pod_labels(&manifest("migration-job.yaml"))), "and not the migration pods");
    let minimum = number(&manifest("hpa.yaml")["spec"]["minReplicas"], "minReplicas");
    assert!(number(&budget["spec"]["minAvailable"], "minAvailable") < minimum);
}

#[test]
fn the_migration_job_runs_migrate_once_and_cleans_up_after_itself() {
    let job = manifest("migration-job.yaml");
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    let container = only_container(&job);
    let command: Vec<&str> = ["command", "args"]
        .iter()
        .flat_map(|key| container[*key].as_array().into_iter().flatten())
        .map(|word| text(word, "a command word"))
        .collect();
    assert_eq!(command, ["migrate"], "the image's entrypoint is user-service");
    assert!(number(&job["spec"]["backoffLimit"], "backoffLimit") >= 1);
    assert!(number(&job["spec"]["ttlSecondsAfterFinished"], "ttlSecondsAfterFinished") > 0);
    let restart = text(&pod_spec(&job)["restartPolicy"], "restartPolicy");
    assert!(restart == "Never" || restart == "OnFailure", "{restart}");
}
