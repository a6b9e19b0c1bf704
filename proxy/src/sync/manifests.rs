//! Standalone mode: YAML files in a directory -> `api::compile` -> Runtime, reloaded
//! when the files change.
//!
//! Every `*.yaml`/`*.yml` file directly in the directory is read (hidden files are
//! skipped, symlinks followed, so a mounted ConfigMap works). Files may hold several
//! documents; Switchboard kinds and Secrets (`data` or `stringData`) are used, other
//! kinds are ignored.
//!
//! A reload is refused, and the serving config kept, when a file does not parse or when
//! it would reject an object the serving config accepts. Objects that were never
//! accepted are left out with a logged error, as the operator does with statuses.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use notify::{EventKind, RecursiveMode, Watcher};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use switchboard_api::compile::{Inputs, Object, ObjectKey};
use switchboard_api::v1alpha1::{AIConsumer, AIProvider, AIQuota, AIRoute, GROUP, VERSION};
use switchboard_api::{Compiled, compile};
use tokio::sync::mpsc;

use crate::gateway::Gateway;
use crate::runtime::Runtime;

/// A problem in one document of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub file: PathBuf,
    /// 1-based document number within the file.
    pub document: usize,
    /// `Kind namespace/name`, when known.
    pub object: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (document {})", self.file.display(), self.document)?;
        if let Some(object) = &self.object {
            write!(f, ", {object}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Reads every manifest in `dir`. All problems are reported, not just the first.
/// Namespaces' labels come from `v1` Namespace documents, if any.
pub fn load(dir: &Path) -> Result<Inputs, Vec<ManifestError>> {
    let files = manifest_files(dir).map_err(|message| {
        vec![ManifestError {
            file: dir.to_path_buf(),
            document: 0,
            object: None,
            message,
        }]
    })?;
    let mut loader = Loader::default();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => loader.add(&file, &text),
            Err(e) => loader.errors.push(ManifestError {
                file,
                document: 0,
                object: None,
                message: format!("cannot read: {e}"),
            }),
        }
    }
    loader.finish()
}

/// Reads manifests from one YAML stream (one or more documents), as `load` reads each
/// file; errors name the file `file`.
pub fn load_str(file: &Path, text: &str) -> Result<Inputs, Vec<ManifestError>> {
    let mut loader = Loader::default();
    loader.add(file, text);
    loader.finish()
}

/// Objects and problems gathered so far, across files.
#[derive(Default)]
struct Loader {
    inputs: Inputs,
    errors: Vec<ManifestError>,
    /// Where each object was first defined, to refuse a second definition.
    origins: BTreeMap<ObjectKey, (PathBuf, usize)>,
}

impl Loader {
    /// Adds every document of one file.
    fn add(&mut self, file: &Path, text: &str) {
        if text.trim().is_empty() {
            // Usually a file caught half-written (truncated, then written in place).
            self.errors.push(ManifestError {
                file: file.to_path_buf(),
                document: 0,
                object: None,
                message: "the file is empty (caught while being written?); write manifests \
                          to a temporary file and rename it into place, and delete a file to \
                          remove its objects"
                    .to_string(),
            });
            return;
        }
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let number = index + 1;
            let error = |object: Option<String>, message: String| ManifestError {
                file: file.to_path_buf(),
                document: number,
                object,
                message,
            };
            let value = match Value::deserialize(document) {
                Ok(Value::Null) => continue,
                Ok(value) => value,
                Err(e) => {
                    // After a syntax error the document stream cannot resume.
                    self.errors
                        .push(error(None, format!("not valid YAML: {e}")));
                    break;
                }
            };
            if let Some((name, labels)) = namespace_labels(&value) {
                self.inputs.namespaces.insert(name, labels);
                continue;
            }
            match parse_object(value) {
                Ok(None) => {}
                Ok(Some(object)) => {
                    let key = object.key();
                    if let Some((first_file, first_doc)) = self.origins.get(&key) {
                        self.errors.push(error(
                            Some(key.to_string()),
                            format!(
                                "defined twice; first in {} (document {first_doc})",
                                first_file.display()
                            ),
                        ));
                        continue;
                    }
                    self.origins.insert(key, (file.to_path_buf(), number));
                    self.inputs.insert(object);
                }
                Err((object, message)) => self.errors.push(error(object, message)),
            }
        }
    }

    fn finish(mut self) -> Result<Inputs, Vec<ManifestError>> {
        if self.errors.is_empty() {
            self.inputs.standalone = true;
            Ok(self.inputs)
        } else {
            Err(self.errors)
        }
    }
}

/// The manifest files in `dir`, sorted by name.
fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read directory: {e}"))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            !name.starts_with('.')
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && path.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// A `v1` Namespace document's name and labels: what routes' namespace selectors match.
fn namespace_labels(value: &Value) -> Option<(String, BTreeMap<String, String>)> {
    if value.get("apiVersion")? != "v1" || value.get("kind")? != "Namespace" {
        return None;
    }
    let name = value.pointer("/metadata/name")?.as_str()?.to_string();
    let labels = value
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Some((name, labels))
}

/// One document as an object compile reads; `Ok(None)` for kinds it does not read.
fn parse_object(value: Value) -> Result<Option<Object>, (Option<String>, String)> {
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let name = value
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let namespace = value
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or(switchboard_api::compile::DEFAULT_NAMESPACE)
        .to_string();
    let label = Some(format!("{kind} {namespace}/{name}"));
    if api_version.is_empty() || kind.is_empty() {
        return Err((None, "missing apiVersion or kind".to_string()));
    }
    if name.is_empty() {
        return Err((label, "metadata.name: required".to_string()));
    }

    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    if group == GROUP {
        if version != VERSION {
            return Err((label, format!("apiVersion: use {GROUP}/{VERSION}")));
        }
        let unknown = switchboard_api::crds::unknown_fields(kind, &value);
        if !unknown.is_empty() {
            return Err((label, format!("unknown field(s): {}", unknown.join(", "))));
        }
        let object = match kind {
            "AIProvider" => typed::<AIProvider>(value).map(Object::Provider),
            "AIRoute" => typed::<AIRoute>(value).map(Object::Route),
            "AIConsumer" => typed::<AIConsumer>(value).map(Object::Consumer),
            "AIQuota" => typed::<AIQuota>(value).map(Object::Quota),
            _ => Err(format!(
                "kind: unknown kind {kind:?}; use AIProvider, AIRoute, AIConsumer or AIQuota"
            )),
        };
        return object.map(Some).map_err(|message| (label, message));
    }
    if api_version == "v1" && kind == "Secret" {
        // Never echo Secret values: the error names the field only.
        return typed::<Secret>(value)
            .map(|secret| Some(Object::Secret(secret)))
            .map_err(|message| (label, message));
    }
    Ok(None)
}

/// Deserializes with the failing field's path in the error.
fn typed<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        // serde's messages quote the offending value; drop it so a Secret's content or a
        // pasted key never reaches the logs.
        let message = inner.to_string();
        let message = message
            .split(", expected")
            .nth(1)
            .map_or(message.clone(), |expected| {
                format!("wrong type or value, expected{expected}")
            });
        if path == "." {
            message
        } else {
            format!("{path}: {message}")
        }
    })
}

/// Loads and serves `dir`, then watches it. Fails if the manifests cannot be read or
/// parsed; objects that do not compile are logged and left out.
pub fn start(dir: PathBuf, gateway: Arc<Gateway>) -> anyhow::Result<WatchGuard> {
    let options = LoadOptions::from_settings(&gateway.settings);
    let compiled = load_and_compile(&dir, &options).map_err(|errors| {
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("cannot load manifests:\n  {}", lines.join("\n  "))
    })?;
    log_problems(&compiled);
    let serving = accepted(&compiled);
    let runtime = Runtime::build(compiled.snapshot, None, gateway.metrics.as_ref())?;
    tracing::info!(
        version = %runtime.version(),
        providers = runtime.snapshot.providers.len(),
        routes = runtime.snapshot.routes.len(),
        consumers = runtime.snapshot.consumers.len(),
        "config loaded from {}",
        dir.display()
    );
    gateway.install(runtime);
    watch(dir, gateway, serving)
}

/// How a manifests directory is read beyond its files: settings of the proxy.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// The platform namespace (`--platform-namespace`).
    pub platform_namespace: Option<String>,
    /// Serve a directory without a single Switchboard object (`--allow-empty-config`).
    pub allow_empty: bool,
}

/// Reads and compiles `dir`. A directory without a single Switchboard object is
/// refused unless `options.allow_empty`: it is far more often a config caught while
/// being replaced than one meant to refuse every request.
pub fn load_and_compile(dir: &Path, options: &LoadOptions) -> Result<Compiled, Vec<ManifestError>> {
    let mut inputs = load(dir)?;
    let objects =
        inputs.providers.len() + inputs.routes.len() + inputs.consumers.len() + inputs.quotas.len();
    if objects == 0 && !options.allow_empty {
        return Err(vec![ManifestError {
            file: dir.to_path_buf(),
            document: 0,
            object: None,
            message: "no AIProvider, AIRoute, AIConsumer or AIQuota found; start with \
                      --allow-empty-config to serve an empty config on purpose"
                .to_string(),
        }]);
    }
    inputs.platform_namespace = options.platform_namespace.clone();
    Ok(compile(&inputs))
}

impl LoadOptions {
    pub fn from_settings(settings: &crate::Settings) -> Self {
        Self {
            platform_namespace: settings.platform_namespace.clone(),
            allow_empty: settings.allow_empty_config,
        }
    }
}

/// Logs every object that is not fully healthy.
pub fn log_problems(compiled: &Compiled) {
    for (key, status) in compiled.problems() {
        for condition in status.problems() {
            tracing::error!(
                object = %key,
                condition = %condition.type_,
                reason = %condition.reason,
                "{key}: {}: {}",
                condition.reason,
                condition.message
            );
        }
    }
}

/// Keys of the objects a compile accepted.
pub fn accepted(compiled: &Compiled) -> BTreeSet<ObjectKey> {
    compiled
        .statuses
        .iter()
        .filter(|(_, status)| status.is_accepted())
        .map(|(key, _)| key.clone())
        .collect()
}

/// Changes arriving within this window are applied as one reload.
const DEBOUNCE: Duration = Duration::from_millis(200);

/// Watches `dir` and applies changes until the returned guard is dropped.
pub fn watch(
    dir: PathBuf,
    gateway: Arc<Gateway>,
    mut serving: BTreeSet<ObjectKey>,
) -> anyhow::Result<WatchGuard> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Reading the files ourselves raises access events; only changes count.
        if let Ok(event) = event
            && !matches!(event.kind, EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let task = tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Editors and ConfigMap updates write in bursts: wait for the burst to end.
            tokio::time::sleep(DEBOUNCE).await;
            while rx.try_recv().is_ok() {}
            let load_dir = dir.clone();
            let options = LoadOptions::from_settings(&gateway.settings);
            let result =
                tokio::task::spawn_blocking(move || load_and_compile(&load_dir, &options)).await;
            match result {
                Ok(result) => reload(&gateway, result, &mut serving),
                Err(e) => tracing::error!(error = %e, "manifest reload task failed"),
            }
        }
    });
    Ok(WatchGuard {
        _watcher: Box::new(watcher),
        task,
    })
}

/// Stops watching when dropped.
pub struct WatchGuard {
    _watcher: Box<dyn std::any::Any + Send>,
    task: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for WatchGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WatchGuard")
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Applies a reload result, or keeps the serving config and says why.
fn reload(
    gateway: &Gateway,
    result: Result<Compiled, Vec<ManifestError>>,
    serving: &mut BTreeSet<ObjectKey>,
) {
    let current = gateway.runtime.current();
    let current_version = current
        .as_ref()
        .map(|r| r.version().to_string())
        .unwrap_or_default();
    let compiled = match result {
        Ok(compiled) => compiled,
        Err(errors) => {
            for error in &errors {
                tracing::error!(%error, "reload refused; still serving config {current_version}");
            }
            gateway.refused();
            return;
        }
    };
    log_problems(&compiled);
    let regressions: Vec<&ObjectKey> = serving
        .iter()
        .filter(|key| {
            compiled
                .statuses
                .get(*key)
                .is_some_and(|s| !s.is_accepted())
        })
        .collect();
    if !regressions.is_empty() {
        for key in regressions {
            tracing::error!(
                object = %key,
                "reload refused: {key} is accepted now but would be rejected (see the error above); \
                 still serving config {current_version}"
            );
        }
        gateway.refused();
        return;
    }
    if compiled.snapshot.version == current_version {
        tracing::debug!("manifests changed but the compiled config did not");
        *serving = accepted(&compiled);
        return;
    }
    let accepted_now = accepted(&compiled);
    match Runtime::build(
        compiled.snapshot,
        current.as_deref(),
        gateway.metrics.as_ref(),
    ) {
        Ok(runtime) => {
            let version = runtime.version().to_string();
            gateway.install(runtime);
            *serving = accepted_now;
            tracing::info!(%version, previous = %current_version, "config reloaded");
        }
        Err(error) => {
            tracing::error!(%error, "reload refused; still serving config {current_version}");
            gateway.refused();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Dir(PathBuf);

    impl Dir {
        fn with(files: &[(&str, &str)]) -> Self {
            static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("sb-manifests-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (name, text) in files {
                std::fs::write(dir.join(name), text).unwrap();
            }
            Self(dir)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn errors(files: &[(&str, &str)]) -> Vec<String> {
        let dir = Dir::with(files);
        match load(&dir.0) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    const PROVIDER: &str = "apiVersion: switchboard.dev/v1alpha1\nkind: AIProvider\nmetadata: {name: e}\nspec: {type: echo, models: [{name: m}]}\n";

    #[test]
    fn reads_multi_document_files_and_ignores_other_kinds() {
        let text = format!(
            "{PROVIDER}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\n---\n---\napiVersion: v1\nkind: Secret\nmetadata: {{name: s, namespace: team-a}}\ndata: {{k: c2VjcmV0}}\n"
        );
        let dir = Dir::with(&[
            ("all.yaml", &text),
            ("notes.txt", "not yaml"),
            (".hidden.yaml", "{"),
        ]);
        let inputs = load(&dir.0).unwrap();
        assert_eq!(inputs.providers.len(), 1);
        assert_eq!(inputs.secrets.len(), 1);
        let secret = inputs.secrets.keys().next().unwrap();
        assert_eq!(
            (secret.namespace.as_str(), secret.name.as_str()),
            ("team-a", "s")
        );
    }

    #[test]
    fn errors_name_the_file_document_object_and_field() {
        let bad = "apiVersion: switchboard.dev/v1alpha1\nkind: AIRoute\nmetadata: {name: r}\nspec:\n  models: [m]\n  backends: [{provider: e, model: m, weight: heavy}]\n";
        let text = format!("{PROVIDER}---\n{bad}");
        let errors = errors(&[("routes.yaml", &text)]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        let error = &errors[0];
        for needle in [
            "routes.yaml",
            "document 2",
            "AIRoute default/r",
            "spec.backends[0].weight",
        ] {
            assert!(error.contains(needle), "{error:?} lacks {needle:?}");
        }
        assert!(!error.contains("heavy"), "values are not echoed: {error:?}");
    }

    #[test]
    fn refuses_unknown_fields_versions_kinds_and_missing_names() {
        let cases = [
            (PROVIDER.replace("models:", "modles:"), "spec.modles"),
            (PROVIDER.replace("v1alpha1", "v2"), "apiVersion"),
            (PROVIDER.replace("AIProvider", "AIThing"), "unknown kind"),
            (PROVIDER.replace("{name: e}", "{}"), "metadata.name"),
            ("just: a map\n".to_string(), "apiVersion or kind"),
        ];
        for (text, needle) in cases {
            let errors = errors(&[("x.yaml", &text)]);
            assert!(
                errors.iter().any(|e| e.contains(needle)),
                "{needle}: {errors:?}"
            );
        }
    }

    #[test]
    fn refuses_an_object_defined_twice() {
        let errors = errors(&[("a.yaml", PROVIDER), ("b.yaml", PROVIDER)]);
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].contains("b.yaml")
                && errors[0].contains("first in")
                && errors[0].contains("a.yaml")
        );
    }

    #[test]
    fn secret_values_never_appear_in_errors() {
        let text = "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ndata: {apiKey: 'sk-live-not-base64!!'}\nstringData: {other: [sk-live-in-a-list]}\n";
        let errors = errors(&[("secret.yaml", text)]);
        assert!(!errors.is_empty());
        for error in errors {
            assert!(!error.contains("sk-live"), "{error}");
        }
    }

    #[test]
    fn load_str_reads_a_stream_as_load_reads_a_file() {
        let text = format!("{PROVIDER}---\n{PROVIDER}");
        let errors = load_str(Path::new("in.yaml"), &text).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].to_string().contains("in.yaml (document 2)"));
        let inputs = load_str(Path::new("in.yaml"), PROVIDER).unwrap();
        assert_eq!(inputs.providers.len(), 1);
    }

    /// Garbage ends in errors, each naming the file and the document it is in, and,
    /// where the document is an object, the object; where a field is at fault, the
    /// message starts with the field.
    #[test]
    fn garbage_ends_in_errors_not_hangs_or_panics() {
        /// Per input, the errors expected: (document, object, what the message says).
        type Expected = &'static [(usize, Option<&'static str>, &'static str)];
        let garbage: [(&str, Expected); 8] = [
            ("{not: yaml: at all", &[(1, None, "not valid YAML")]),
            (":\n  - ]\n", &[(1, None, "not valid YAML")]),
            ("- a\n- b\n", &[(1, None, "missing apiVersion or kind")]),
            ("\u{0}\u{1}binary", &[(1, None, "not valid YAML")]),
            (
                "apiVersion: switchboard.dev/v1alpha1\nkind: AIRoute\nmetadata: {name: r}\nspec: 5\n",
                &[(1, Some("AIRoute default/r"), "spec: ")],
            ),
            (
                "apiVersion: switchboard.dev/v1alpha1\nkind: AIProvider\nmetadata: {name: [a]}\nspec: {}\n",
                &[(1, Some("AIProvider default/"), "metadata.name: ")],
            ),
            ("&a [*a, *a]", &[(1, None, "not valid YAML")]),
            (
                "key: !!binary AAAA\n---\n{[",
                &[
                    (1, None, "missing apiVersion or kind"),
                    (2, None, "not valid YAML"),
                ],
            ),
        ];
        for (text, expected) in garbage {
            let dir = Dir::with(&[("g.yaml", text)]);
            let file = dir.0.join("g.yaml");
            let errors = load(&dir.0).expect_err(text);
            assert_eq!(errors.len(), expected.len(), "{text:?}: {errors:#?}");
            for (error, (document, object, says)) in errors.iter().zip(expected) {
                assert_eq!(error.file, file, "{text:?}: {error:#?}");
                assert_eq!(error.document, *document, "{text:?}: {error:#?}");
                assert_eq!(error.object.as_deref(), *object, "{text:?}: {error:#?}");
                assert!(
                    error.message.starts_with(says),
                    "{text:?}: {error:#?} does not start with {says:?}"
                );
                let shown = error.to_string();
                let named = format!("{} (document {document})", file.display());
                assert!(shown.starts_with(&named), "{shown:?} lacks {named:?}");
            }
            // A stream read alone ends in the same errors, naming the path given.
            let alone = load_str(Path::new("g.yaml"), text).expect_err(text);
            let renamed: Vec<ManifestError> = errors
                .into_iter()
                .map(|error| ManifestError {
                    file: PathBuf::from("g.yaml"),
                    ..error
                })
                .collect();
            assert_eq!(alone, renamed, "{text:?}");
        }
    }
}
